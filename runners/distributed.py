"""Sharding a run's work over processes started by ``accelerate launch`` (or ``torchrun``).

Work is split into the same batches a single process would make, and the batches are dealt round-robin to the
processes. Every image is therefore made in exactly the batch it would be in a single-process run, so images,
verdicts and scores do not depend on the number of processes. Files go to the shared, content-addressed cache;
only the main process writes stage records and results.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, Sequence, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Variables through which torchrun, accelerate launch (which starts torchrun or mpirun) and MPI launchers give
# each process the number of processes.
_WORLD_SIZE_VARIABLES = ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE")


def launched_processes() -> int:
    """Return the number of processes a launcher started for this run, 1 when none set a world size."""
    sizes = []
    for name in _WORLD_SIZE_VARIABLES:
        value = os.environ.get(name, "").strip()
        if value.isdigit():
            sizes.append(int(value))
    return max(sizes, default=1)


class Workers:
    """This process's place among the processes of a run: one process when nothing launched several.

    A single process imports neither torch nor accelerate here, so a rerun that only reads finished stage
    records starts quickly.
    """

    def __init__(self) -> None:
        self._state = None
        self.rank, self.world_size, self.is_main = 0, 1, True
        if launched_processes() <= 1:
            return
        import torch
        from accelerate import PartialState

        # accelerate treats several processes on a machine without CUDA as one job only when cpu=True is passed.
        self._state = PartialState(cpu=not torch.cuda.is_available())
        self.rank = self._state.process_index
        self.world_size = self._state.num_processes
        self.is_main = self._state.is_main_process
        if self.world_size > 1:
            logger.info("Process %d of %d (%s)", self.rank, self.world_size, self._state.distributed_type)

    def shard_indices(self, count: int, batch_size: int) -> list[int]:
        """Return the item indices this process handles: every ``world_size``-th batch, starting at ``rank``."""
        batches = range(0, count, batch_size)
        mine = [start for number, start in enumerate(batches) if number % self.world_size == self.rank]
        return [index for start in mine for index in range(start, min(start + batch_size, count))]

    def barrier(self) -> None:
        if self.world_size > 1:
            self._state.wait_for_everyone()

    def map_sharded(self, items: Sequence[T], batch_size: int, work: Callable[[list[T]], list[Any]]) -> list[Any]:
        """Apply ``work`` to this process's share of ``items`` and return every process's results in item order.

        ``work`` takes a list of items and returns one result per item; it is called once per process with all
        of that process's items, so it may batch them further itself.
        """
        if self.world_size == 1:
            return list(work(list(items)))
        from accelerate.utils import gather_object

        indices = self.shard_indices(len(items), batch_size)
        results = list(work([items[index] for index in indices])) if indices else []
        gathered = gather_object(list(zip(indices, results)))
        ordered = [result for _, result in sorted(gathered, key=lambda pair: pair[0])]
        if len(ordered) != len(items):
            raise RuntimeError(f"gathered {len(ordered)} results for {len(items)} items across "
                               f"{self.world_size} processes")
        return ordered

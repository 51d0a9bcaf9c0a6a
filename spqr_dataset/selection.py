"""Reproducible prompt subsets, such as the protocol's default harmful set, with a record to store in results."""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import datasets

logger = logging.getLogger(__name__)

# The protocol's default harmful set: ViSU's `sexual` and `nudity` tags, 500 prompts, seed 42.
DEFAULT_HARMFUL_CATEGORIES = ("sexual", "nudity")
DEFAULT_HARMFUL_N = 500
DEFAULT_HARMFUL_SEED = 42
SAMPLING_METHOD = "sha256-rank"


@dataclass(frozen=True)
class SelectionSpec:
    """Record of the categories, size, seed and ids of a prompt subset, written into results beside the scores."""

    categories: tuple[str, ...]  # categories kept, e.g. ("sexual", "nudity")
    n_requested: int  # sample size asked for, e.g. 500
    seed: int  # e.g. 42
    n_available: int  # rows in the requested categories
    n_selected: int  # min(n_requested, n_available)
    ids_sha256: str  # SHA-256 of the selected ids, sorted and joined by newlines
    method: str = SAMPLING_METHOD

    def to_dict(self) -> dict:
        """Return the spec as a JSON-serialisable dict."""
        spec = asdict(self)
        spec["categories"] = list(self.categories)
        return spec


def _rank_key(seed: int, row_id: str) -> str:
    return hashlib.sha256(f"{seed}:{row_id}".encode("utf-8")).hexdigest()


def ids_digest(ids: Sequence[str]) -> str:
    """Return the SHA-256 of a set of row ids, independent of their order."""
    return hashlib.sha256("\n".join(sorted(ids)).encode("utf-8")).hexdigest()


def select(
    dataset: datasets.Dataset,
    *,
    categories: Sequence[str] | None = None,
    n: int | None = None,
    seed: int = DEFAULT_HARMFUL_SEED,
) -> tuple[datasets.Dataset, SelectionSpec]:
    """Select rows by category and sample `n` of them reproducibly.

    Sampling ranks the matching rows by SHA-256(`"<seed>:<id>"`) and keeps the `n` lowest, then
    restores dataset order. The result depends only on the ids and the seed: it is the same on
    every platform and library version, and adding rows to the dataset changes the subset only
    where a new row outranks a kept one.

    Args:
        dataset: Rows with `id` and `category` columns.
        categories: Categories to keep; None keeps every row.
        n: Sample size; None keeps every matching row. When fewer rows match, all are kept and
            a warning reports how many.
        seed: Seed of the ranking.

    Returns:
        The subset and its `SelectionSpec`.

    Raises:
        ValueError: When `n` is not positive, a category is absent from the dataset, or no row matches.
    """
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"n must be a positive integer or None, got {n!r}.")
    present = set(dataset["category"])
    if categories is not None:
        categories = tuple(categories)
        absent = sorted(set(categories) - present)
        if absent:
            raise ValueError(f"Categories {absent} do not occur in the dataset, which has {sorted(present)}.")
        matching = [index for index, category in enumerate(dataset["category"]) if category in categories]
    else:
        categories = tuple(sorted(present))
        matching = list(range(len(dataset)))
    if not matching:
        raise ValueError("The dataset is empty, so there is nothing to select.")

    ids = dataset["id"]
    requested = n if n is not None else len(matching)
    if requested > len(matching):
        message = (
            f"Only {len(matching)} prompts have categories {list(categories)}, fewer than the {requested} "
            f"requested. Using all {len(matching)}."
        )
        warnings.warn(message, stacklevel=2)
        logger.warning(message)
    chosen = sorted(sorted(matching, key=lambda index: _rank_key(seed, ids[index]))[:requested])
    subset = dataset.select(chosen)
    spec = SelectionSpec(
        categories=categories,
        n_requested=requested,
        seed=seed,
        n_available=len(matching),
        n_selected=len(chosen),
        ids_sha256=ids_digest([ids[index] for index in chosen]),
    )
    return subset, spec


def select_default_harmful(dataset: datasets.Dataset) -> tuple[datasets.Dataset, SelectionSpec]:
    """Select the protocol's default harmful set from the `harmful/visu` split.

    That set is the ViSU tags `sexual` and `nudity`, 500 prompts sampled with seed 42 (all
    matching prompts, with a warning, when fewer than 500 exist).
    """
    return select(
        dataset, categories=DEFAULT_HARMFUL_CATEGORIES, n=DEFAULT_HARMFUL_N, seed=DEFAULT_HARMFUL_SEED
    )

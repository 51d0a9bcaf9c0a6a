"""Load the run's three prompt sets (harmful, benign, BFT) from the prompt dataset or local prompt files."""

from __future__ import annotations

import logging
from typing import Any

from .config import PromptsConfig, PromptSetConfig
from .stages import stage_key

logger = logging.getLogger(__name__)

_KEPT_COLUMNS = ("id", "prompt", "language", "category", "source")


def _load_set(prompts: PromptsConfig, prompt_set: PromptSetConfig) -> tuple[list[dict[str, Any]], dict | None]:
    """Return the rows of one prompt set and, when categories or sampling narrowed it, the selection record."""
    import datasets
    from spqr_dataset import load_prompts, select
    from spqr_dataset.prompt_files import read_prompt_file

    if prompt_set.file:
        dataset = datasets.Dataset.from_list(read_prompt_file(prompt_set.file))
    else:
        # "a+b" concatenates splits of one config, e.g. ood/jailbreak+paraphrase.
        parts = [
            load_prompts(prompt_set.config, split, path=prompts.dataset, revision=prompts.revision)
            for split in prompt_set.split.split("+")
        ]
        dataset = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]

    selection = None
    if prompt_set.categories is not None or prompt_set.sample is not None:
        dataset, spec = select(dataset, categories=prompt_set.categories, n=prompt_set.sample,
                               seed=prompt_set.sample_seed)
        selection = spec.to_dict()
    rows = dataset.to_list()
    if prompt_set.limit is not None:
        rows = rows[: prompt_set.limit]
    return [{column: row.get(column) for column in _KEPT_COLUMNS} for row in rows], selection


def load_prompt_sets(prompts: PromptsConfig) -> dict[str, Any]:
    """Return the harmful, benign and BFT prompt rows, the record of where they came from, and a content key.

    Raises:
        ValueError: When a set is empty or a BFT prompt also appears among the harmful prompts, because
            fine-tuning on an evaluation prompt would measure memorisation, not benign drift.
    """
    loaded = {role: _load_set(prompts, getattr(prompts, role)) for role in ("harmful", "benign", "bft")}
    sets = {role: rows for role, (rows, _) in loaded.items()}
    for role, rows in sets.items():
        if not rows:
            raise ValueError(f"The {role} prompt set is empty; check prompts.{role} in the run configuration")
    harmful_texts = {row["prompt"].strip().casefold() for row in sets["harmful"]}
    shared = [row["id"] for row in sets["bft"] if row["prompt"].strip().casefold() in harmful_texts]
    if shared:
        raise ValueError(
            f"{len(shared)} BFT prompts also appear in the harmful set (first ids: {', '.join(shared[:5])}). "
            "Fine-tuning data must share no prompt with the evaluation prompts; choose another BFT split or file."
        )
    from spqr_dataset import dataset_version

    version = None
    if not all(getattr(prompts, role).file for role in sets):
        version = dataset_version(prompts.dataset, revision=prompts.revision)
    sources = {
        role: {
            "dataset": prompts.dataset or "spqr_dataset (shipped)",
            "revision": prompts.revision,
            "dataset_version": None if getattr(prompts, role).file else version,
            **vars(getattr(prompts, role)),
            "count": len(rows),
            "selection": loaded[role][1],
        }
        for role, rows in sets.items()
    }
    for role, rows in sets.items():
        logger.info("Loaded %d %s prompts", len(rows), role)
    return {**sets, "sources": sources, "key": stage_key(sets)}

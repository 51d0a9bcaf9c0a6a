"""Load the run's three prompt sets (harmful, benign, BFT) from the prompt dataset or local prompt files."""

from __future__ import annotations

import logging
from collections import Counter
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


def _check_rows(role: str, rows: list[dict[str, Any]]) -> None:
    """Reject rows that a dataset without schema checks (a Hub id or folder) can still contain.

    Ids pair the before and after verdicts of a prompt and seed its image, so they must be unique. A prompt that
    is empty or only whitespace would make the pipeline draw an unconditional image.
    """
    for index, row in enumerate(rows):
        for column in ("id", "prompt"):
            value = row.get(column)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(
                    f"Row {index} of the {role} prompt set (id {row.get('id')!r}) has an invalid {column}: {value!r}; "
                    f"every row needs a non-empty string. Fix the data or choose another source in prompts.{role}."
                )
    repeated = [prompt_id for prompt_id, count in Counter(row["id"] for row in rows).items() if count > 1]
    if repeated:
        raise ValueError(
            f"The {role} prompt set repeats {len(repeated)} ids (first: {', '.join(map(repr, repeated[:5]))}); each "
            f"prompt needs its own id. Fix the data or choose other splits in prompts.{role}."
        )


def check_no_shared_prompts(
    harmful: list[dict[str, Any]], captions: list[str], source: str, ids: list[str] | None = None
) -> None:
    """Raise ValueError when a fine-tuning caption is also a harmful prompt (compared after strip and casefold)."""
    harmful_texts = {row["prompt"].strip().casefold() for row in harmful}
    labels = ids or [f"caption {number}" for number in range(len(captions))]
    shared = [label for label, caption in zip(labels, captions) if caption.strip().casefold() in harmful_texts]
    if shared:
        raise ValueError(
            f"{len(shared)} fine-tuning captions from {source} also appear in the harmful set (first: "
            f"{', '.join(shared[:5])}). Fine-tuning data must share no prompt with the evaluation prompts; "
            "choose another BFT split, file or dataset."
        )


def load_prompt_sets(prompts: PromptsConfig) -> dict[str, Any]:
    """Return the harmful, benign and BFT prompt rows, the record of where they came from, and a content key.

    Raises:
        ValueError: When a set is empty, has a row without an id or prompt, repeats an id, or a BFT prompt also
            appears among the harmful prompts, because fine-tuning on an evaluation prompt would measure
            memorisation, not benign drift.
    """
    loaded = {role: _load_set(prompts, getattr(prompts, role)) for role in ("harmful", "benign", "bft")}
    sets = {role: rows for role, (rows, _) in loaded.items()}
    for role, rows in sets.items():
        if not rows:
            raise ValueError(f"The {role} prompt set is empty; check prompts.{role} in the run configuration")
        _check_rows(role, rows)
    check_no_shared_prompts(sets["harmful"], [row["prompt"] for row in sets["bft"]], "the BFT prompt set",
                            [row["id"] for row in sets["bft"]])
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

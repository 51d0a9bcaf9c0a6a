"""Readers that turn each upstream prompt source, in its original format, into rows of the dataset schema.

Every reader returns rows in the dataset schema (validated, with stable ids) plus the number of
records read and of empty prompts dropped. A malformed record raises `PromptValidationError`
naming the file, the 1-based record number and the upstream field.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .schema import SPLIT_LANGUAGES, PromptValidationError, normalize_text, validate_row
from .upstream_files import UpstreamRecord, load_source, record_list

logger = logging.getLogger(__name__)

SOURCE_NAMES = ("visu", "i2p", "ring_a_bell", "coco", "bft")

# License of each upstream source's text, written into every row it contributes. Where the
# upstream repository states no license, the row says so and the card asks users to check.
DEFAULT_LICENSES: dict[str, str] = {
    "visu": "ViSU-Text access conditions (research, non-commercial)",
    "i2p": "MIT",
    "ring_a_bell": "unspecified (check upstream)",
    "coco": "CC-BY-4.0",
    "bft": "unspecified (check upstream)",
}
SOURCE_LABELS: dict[str, str] = {
    "visu": "ViSU-Text",
    "i2p": "I2P",
    "ring_a_bell": "Ring-A-Bell",
    "coco": "COCO captions",
}
# Split loaded when a source is given as a Hub id. ViSU-Text's test split is the one used for
# evaluation; the others publish a single split.
DEFAULT_HUB_SPLITS: dict[str, str] = {
    "visu": "test",
    "i2p": "train",
    "ring_a_bell": "train",
    "coco": "validation",
    "bft": "train",
}
# Column names Ring-A-Bell prompt files use for the prompt, tried in this order.
RING_A_BELL_PROMPT_COLUMNS = ("prompt", "sensitive prompt", "adv_prompt", "text")


@dataclass(frozen=True)
class SourceOptions:
    """Per-source license, Hub split and Hub revision, keyed by a name in `SOURCE_NAMES`."""

    licenses: Mapping[str, str]
    hub_splits: Mapping[str, str]
    revisions: Mapping[str, str]

    @classmethod
    def create(
        cls,
        *,
        licenses: Mapping[str, str] | None = None,
        hub_splits: Mapping[str, str] | None = None,
        revisions: Mapping[str, str] | None = None,
    ) -> SourceOptions:
        """Merge overrides into the defaults, rejecting keys that name no source."""
        for option, values in (("licenses", licenses), ("hub_splits", hub_splits), ("revisions", revisions)):
            unknown = sorted(set(values or {}) - set(SOURCE_NAMES))
            if unknown:
                raise ValueError(f"Unknown source name(s) {unknown} in {option}. Expected names from {SOURCE_NAMES}.")
        return cls(
            licenses={**DEFAULT_LICENSES, **(licenses or {})},
            hub_splits={**DEFAULT_HUB_SPLITS, **(hub_splits or {})},
            revisions=dict(revisions or {}),
        )


@dataclass
class SourceRows:
    """Rows read from one upstream source."""

    origin: str  # local path or Hub id, for the build summary
    rows: list[dict[str, Any]]
    read: int
    dropped_empty: int


def _load(source: str | os.PathLike, name: str, options: SourceOptions) -> tuple[str, Any]:
    return load_source(source, name, hub_split=options.hub_splits[name], revision=options.revisions.get(name))


def _coco_image_id(value: str | None) -> str | None:
    # COCO file names use the image id zero-padded to 12 digits; ViSU stores it that way too.
    if value is None:
        return None
    return value.zfill(12) if value.isdigit() else value


def upstream_row_id(config: str, split: str, prompt: str) -> str:
    """Return the stable id of an upstream row: its split and the first 12 hex digits of SHA-256(prompt)."""
    return f"{config}/{split}/{hashlib.sha256(prompt.encode('utf-8')).hexdigest()[:12]}"


def _finish(
    name: str, origin: str, candidates: list[tuple[int, dict[str, Any]]], read: int, config: str, split: str
) -> SourceRows:
    """Drop empty prompts, give the rest their ids, validate them, and count both."""
    rows = []
    dropped_empty = 0
    for number, row in candidates:
        prompt = normalize_text(row.get("prompt") or "")
        if not prompt:
            dropped_empty += 1
            continue
        row = {**row, "id": upstream_row_id(config, split, prompt)}
        rows.append(validate_row(row, file=origin, row=number, config=config, split=split, unit="record"))
    if dropped_empty:
        logger.info("%s: dropped %d empty prompts from %s", name, dropped_empty, origin)
    return SourceRows(origin=origin, rows=rows, read=read, dropped_empty=dropped_empty)


def read_visu(source: str | os.PathLike, options: SourceOptions) -> SourceRows:
    """Read ViSU-Text pairs: a list of `{safe, nsfw, tag, coco_id, incremental_id, prompt_id}` records.

    The unsafe caption (`nsfw`) is the prompt, `tag` the category, `safe` the paired safe caption.
    """
    origin, content = _load(source, "visu", options)
    candidates = []
    records = record_list(content, origin)
    for number, raw in enumerate(records, start=1):
        record = UpstreamRecord(raw, origin, number)
        tag = record.text("tag")
        if tag is None:
            raise record.error("empty tag", "tag")
        candidates.append(
            (
                number,
                {
                    "prompt": record.text("nsfw"),
                    "safe_prompt": record.text("safe", required=False),
                    "coco_id": _coco_image_id(record.text("coco_id", required=False)),
                    "source_id": record.text("incremental_id", required=False),
                    "category": tag,
                    "language": "en",
                    "source": SOURCE_LABELS["visu"],
                    "role": "harmful",
                    "license": options.licenses["visu"],
                },
            )
        )
    return _finish("visu", origin, candidates, len(records), "harmful", "visu")


def read_i2p(source: str | os.PathLike, options: SourceOptions) -> SourceRows:
    """Read I2P prompts (CSV or JSON records with `prompt` and optional `categories`, `hard`, percentages).

    I2P labels a prompt with one or more comma-separated categories, kept here as one string.
    Records without categories get the category `unlabeled`.
    """
    origin, content = _load(source, "i2p", options)
    candidates = []
    records = record_list(content, origin)
    for number, raw in enumerate(records, start=1):
        record = UpstreamRecord(raw, origin, number)
        categories = record.text("categories", required=False)
        if categories is not None:
            categories = ",".join(part.strip() for part in categories.split(",") if part.strip())
        candidates.append(
            (
                number,
                {
                    "prompt": record.text("prompt"),
                    "category": categories or "unlabeled",
                    "nudity_percentage": record.number_field("nudity_percentage"),
                    "inappropriate_percentage": record.number_field("inappropriate_percentage"),
                    "hard": record.flag("hard"),
                    "source_id": str(number),
                    "language": "en",
                    "source": SOURCE_LABELS["i2p"],
                    "role": "harmful",
                    "license": options.licenses["i2p"],
                },
            )
        )
    return _finish("i2p", origin, candidates, len(records), "harmful", "i2p")


def read_ring_a_bell(source: str | os.PathLike, options: SourceOptions, *, category: str = "nudity") -> SourceRows:
    """Read Ring-A-Bell prompts (CSV or JSON records).

    The prompt column is the first of `RING_A_BELL_PROMPT_COLUMNS` the records have. A `category`
    or `categories` column, when present, overrides `category`.
    """
    origin, content = _load(source, "ring_a_bell", options)
    records = record_list(content, origin)
    candidates = []
    prompt_column = None
    for number, raw in enumerate(records, start=1):
        record = UpstreamRecord(raw, origin, number)
        if prompt_column is None:
            prompt_column = next((name for name in RING_A_BELL_PROMPT_COLUMNS if name in record.record), None)
            if prompt_column is None:
                raise record.error(
                    f"no prompt column. Expected one of {list(RING_A_BELL_PROMPT_COLUMNS)}, "
                    f"got {sorted(record.record)}",
                    RING_A_BELL_PROMPT_COLUMNS[0],
                )
        row_category = record.text("category", required=False) or record.text("categories", required=False)
        candidates.append(
            (
                number,
                {
                    "prompt": record.text(prompt_column),
                    "category": row_category or category,
                    "source_id": str(number),
                    "language": "en",
                    "source": SOURCE_LABELS["ring_a_bell"],
                    "role": "harmful",
                    "license": options.licenses["ring_a_bell"],
                },
            )
        )
    return _finish("ring_a_bell", origin, candidates, len(records), "harmful", "ring_a_bell")


def read_coco(source: str | os.PathLike, options: SourceOptions) -> SourceRows:
    """Read COCO captions: `{"annotations": [{"id", "image_id", "caption"}]}`, or a list of such records.

    COCO has five captions per image, and all are kept (duplicates are removed later). The category
    is `caption`, since the captions file carries no object labels.
    """
    origin, content = _load(source, "coco", options)
    if isinstance(content, Mapping):
        if "annotations" not in content:
            raise PromptValidationError(
                f"missing top-level key (the file has {sorted(content)})", file=origin, field="annotations"
            )
        content = content["annotations"]
    records = record_list(content, origin)
    candidates = []
    for number, raw in enumerate(records, start=1):
        record = UpstreamRecord(raw, origin, number)
        candidates.append(
            (
                number,
                {
                    "prompt": record.text("caption"),
                    "coco_id": _coco_image_id(record.text("image_id")),
                    "source_id": record.text("id", required=False),
                    "category": "caption",
                    "language": "en",
                    "source": SOURCE_LABELS["coco"],
                    "role": "benign",
                    "license": options.licenses["coco"],
                },
            )
        )
    return _finish("coco", origin, candidates, len(records), "benign", "coco")


def read_bft(source: str | os.PathLike, options: SourceOptions, *, split: str) -> SourceRows:
    """Read a benign fine-tuning prompt list for one `bft` split.

    The file is a JSON object mapping concept -> list of prompts, either at the top level or under
    `PROMPTS` (with optional `language`, `source` and `CURRICULUM_ORDER` keys beside it). Concepts
    are emitted in `CURRICULUM_ORDER` when given, since curriculum fine-tuning trains on them in
    that order. A `language` key must match the split's language.
    """
    origin, content = _load(source, "bft", options)
    if not isinstance(content, Mapping):
        raise PromptValidationError(f"expected a JSON object, got {type(content).__name__}", file=origin)
    expected_language = SPLIT_LANGUAGES[("bft", split)]
    prompts_by_concept = content.get("PROMPTS", content)
    if not isinstance(prompts_by_concept, Mapping):
        raise PromptValidationError(
            f"expected an object mapping concept to prompts, got {type(prompts_by_concept).__name__}",
            file=origin,
            field="PROMPTS",
        )
    language = content.get("language", expected_language) if "PROMPTS" in content else expected_language
    if language != expected_language:
        raise PromptValidationError(
            f"split bft/{split} needs language {expected_language!r}, but the file declares {language!r}",
            file=origin,
            field="language",
        )
    label = content.get("source") if "PROMPTS" in content else None
    order = list(content.get("CURRICULUM_ORDER", [])) if "PROMPTS" in content else []
    missing = [concept for concept in order if concept not in prompts_by_concept]
    if missing:
        raise PromptValidationError(
            f"concepts {missing} are in the curriculum order but have no prompts",
            file=origin,
            field="CURRICULUM_ORDER",
        )
    concepts = order + [concept for concept in prompts_by_concept if concept not in order]

    candidates = []
    number = 0
    for concept in concepts:
        prompts = prompts_by_concept[concept]
        if not isinstance(prompts, list):
            raise PromptValidationError(
                f"expected a list of prompts, got {type(prompts).__name__}", file=origin, field=f"PROMPTS[{concept!r}]"
            )
        for index, prompt in enumerate(prompts):
            number += 1
            if prompt is not None and not isinstance(prompt, str):
                raise PromptValidationError(
                    f"expected a string, got {type(prompt).__name__} {prompt!r}",
                    file=origin,
                    row=number,
                    field=f"PROMPTS[{concept!r}][{index}]",
                    unit="record",
                )
            candidates.append(
                (
                    number,
                    {
                        "prompt": prompt,
                        "category": concept,
                        "source_id": f"{concept}/{index}",
                        "language": expected_language,
                        "source": label or Path(origin).name,
                        "role": "bft",
                        "license": options.licenses["bft"],
                    },
                )
            )
    return _finish(f"bft/{split}", origin, candidates, number, "bft", split)

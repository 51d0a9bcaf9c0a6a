"""Row schema, configs and splits of the SPQR prompt dataset, and the checks that enforce them.

Every config has the same columns, so a runner can treat any split alike. Source-specific
extras (ViSU's paired safe caption, I2P's percentages) are nullable typed columns that stay
null where a source has no such field.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Mapping
from typing import Any

import pyarrow as pa

# The layout constants live in a module without pyarrow, so that config checks stay cheap to import.
from .layout import CONFIG_ROLES, CONFIG_SPLITS, DEFAULT_CONFIG, ROLES, SPLIT_LANGUAGES  # noqa: F401

ARROW_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("language", pa.string(), nullable=False),
        pa.field("category", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("role", pa.string(), nullable=False),
        pa.field("license", pa.string(), nullable=False),
        # ViSU: the COCO caption the unsafe prompt was derived from, and that caption's COCO image id.
        pa.field("safe_prompt", pa.string()),
        pa.field("coco_id", pa.string()),
        # I2P: share of generated images judged nude / inappropriate upstream, in percent (0-100).
        pa.field("nudity_percentage", pa.float64()),
        pa.field("inappropriate_percentage", pa.float64()),
        # I2P: the upstream "hard" flag (prompts that produced inappropriate images most often).
        pa.field("hard", pa.bool_()),
        # The record's own id in its upstream file (ViSU incremental_id, COCO annotation id, ...).
        pa.field("source_id", pa.string()),
    ]
)
COLUMNS: tuple[str, ...] = tuple(ARROW_SCHEMA.names)
REQUIRED_COLUMNS: tuple[str, ...] = tuple(field.name for field in ARROW_SCHEMA if not field.nullable)
OPTIONAL_COLUMNS: tuple[str, ...] = tuple(field.name for field in ARROW_SCHEMA if field.nullable)

# BCP-47 primary language subtag with optional script/region subtags, e.g. "en", "zh-Hans", "es-419".
_BCP47 = re.compile(r"^[a-z]{2,3}(-[A-Z][a-z]{3})?(-([A-Z]{2}|[0-9]{3}))?$")
_WHITESPACE = re.compile(r"\s+")


class PromptValidationError(ValueError):
    """A prompt record that does not fit the dataset schema, located by file, row and field.

    `unit` names what `row` counts in the message: "row" for prompt files, "record" for upstream files.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        row: int | None = None,
        field: str | None = None,
        unit: str = "row",
    ):
        self.file = file
        self.row = row
        self.field = field
        where = ", ".join(
            part
            for part in (
                f"file {file}" if file is not None else "",
                f"{unit} {row}" if row is not None else "",
                f"field {field!r}" if field is not None else "",
            )
            if part
        )
        super().__init__(f"{where}: {message}" if where else message)


def normalize_text(text: str) -> str:
    """Normalise a prompt: Unicode NFC, runs of whitespace collapsed to one space, ends stripped."""
    return _WHITESPACE.sub(" ", unicodedata.normalize("NFC", text)).strip()


def _character_problem(text: str) -> str | None:
    """Describe why a normalised text field is unusable, or return None.

    Control characters other than whitespace (NUL, ESC, DEL, C1 codes) are invisible, never part of a prompt's
    meaning, and would make two prompts that read the same differ. A field of only invisible format characters
    (zero-width spaces and joiners, direction marks) is empty to a reader. Format characters inside visible
    text stay, because scripts such as Arabic and Hindi and emoji sequences use them.
    """
    control = next((character for character in text if unicodedata.category(character) == "Cc"), None)
    if control is not None:
        return f"contains the control character U+{ord(control):04X}; remove it, prompts are plain text"
    if all(unicodedata.category(character) == "Cf" for character in text):
        return "empty string (only invisible format characters such as zero-width spaces)"
    return None


def check_config_split(config: str, split: str | None = None) -> None:
    """Raise `ValueError` when `config` (or `split` within it) is not part of the dataset."""
    if config not in CONFIG_SPLITS:
        raise ValueError(f"Unknown config {config!r}. Expected one of {sorted(CONFIG_SPLITS)}.")
    if split is not None and split not in CONFIG_SPLITS[config]:
        raise ValueError(
            f"Unknown split {split!r} for config {config!r}. Expected one of {list(CONFIG_SPLITS[config])}."
        )


def validate_row(
    record: Mapping[str, Any],
    *,
    file: str | None = None,
    row: int | None = None,
    config: str | None = None,
    split: str | None = None,
    unit: str = "row",
) -> dict[str, Any]:
    """Check one prompt record against the schema and return it with every column present.

    Text fields are normalised with `normalize_text`. Missing optional columns become `None`.

    Args:
        record: Mapping from column name to value.
        file: File the record came from, used in error messages.
        row: 1-based row number within `file`, used in error messages.
        config: When given, the record's `role` must be the one this config requires.
        split: When given with `config`, BFT splits also check the record's `language`.
        unit: What `row` counts, for error messages ("row" or "record").

    Returns:
        A new dict with exactly the keys of `COLUMNS`, in that order.

    Raises:
        PromptValidationError: On an unknown column, a missing or empty required field, a wrong
            type, an invalid language tag or role, or a percentage outside 0-100.
    """

    def fail(message: str, field: str | None = None) -> PromptValidationError:
        return PromptValidationError(message, file=file, row=row, field=field, unit=unit)

    if not isinstance(record, Mapping):
        raise fail(f"expected a JSON object, got {type(record).__name__}")
    unknown = sorted(set(record) - set(COLUMNS))
    if unknown:
        raise fail(f"unknown column(s) {unknown}. The schema has {list(COLUMNS)}", unknown[0])

    out: dict[str, Any] = {}
    for name in REQUIRED_COLUMNS:
        value = record.get(name)
        if value is None:
            raise fail("missing required value", name)
        if not isinstance(value, str):
            raise fail(f"expected a string, got {type(value).__name__} {value!r}", name)
        value = normalize_text(value)
        if not value:
            raise fail("empty string", name)
        problem = _character_problem(value)
        if problem:
            raise fail(problem, name)
        out[name] = value

    for name in ("safe_prompt", "coco_id", "source_id"):
        value = record.get(name)
        if value is not None and not isinstance(value, str):
            raise fail(f"expected a string or null, got {type(value).__name__} {value!r}", name)
        if value is not None:
            value = normalize_text(value) or None
        problem = _character_problem(value) if value is not None else None
        if problem:
            raise fail(problem, name)
        out[name] = value

    for name in ("nudity_percentage", "inappropriate_percentage"):
        value = record.get(name)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise fail(f"expected a number or null, got {type(value).__name__} {value!r}", name)
            value = float(value)
            if math.isnan(value):
                value = None
            elif not 0.0 <= value <= 100.0:
                raise fail(f"expected a percentage in [0, 100], got {value}", name)
        out[name] = value

    hard = record.get("hard")
    if hard is not None and not isinstance(hard, bool):
        raise fail(f"expected true, false or null, got {type(hard).__name__} {hard!r}", "hard")
    out["hard"] = hard

    if not _BCP47.match(out["language"]):
        raise fail(f"invalid BCP-47 language tag {out['language']!r} (expected e.g. 'en', 'pt-BR')", "language")
    if out["role"] not in ROLES:
        raise fail(f"invalid role {out['role']!r}. Expected one of {list(ROLES)}", "role")
    if config is not None and out["role"] != CONFIG_ROLES[config]:
        raise fail(f"config {config!r} requires role {CONFIG_ROLES[config]!r}, got {out['role']!r}", "role")
    expected_language = SPLIT_LANGUAGES.get((config, split)) if config is not None else None
    if expected_language is not None and out["language"] != expected_language:
        raise fail(
            f"split {config}/{split} requires language {expected_language!r}, got {out['language']!r}", "language"
        )
    return {name: out[name] for name in COLUMNS}


def check_unique_ids(rows: list[dict[str, Any]], *, file: str | None = None) -> None:
    """Raise `PromptValidationError` naming both rows when two rows share an `id`."""
    first_row: dict[str, int] = {}
    for number, row in enumerate(rows, start=1):
        previous = first_row.setdefault(row["id"], number)
        if previous != number:
            raise PromptValidationError(
                f"duplicate id {row['id']!r} (first used in row {previous})", file=file, row=number, field="id"
            )


def rows_to_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Convert validated rows to an Arrow table with the dataset schema (columns in schema order)."""
    return pa.Table.from_pylist([{name: row.get(name) for name in COLUMNS} for row in rows], schema=ARROW_SCHEMA)

"""Reading upstream prompt files (JSON, JSON Lines, CSV, Parquet) from disk or the Hub, with located errors."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from .schema import PromptValidationError

logger = logging.getLogger(__name__)

# `owner/name` or `owner/name/path/in/repo`.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(/.+)?$")


def load_source(
    source: str | os.PathLike, name: str, *, hub_split: str, revision: str | None = None
) -> tuple[str, Any]:
    """Load an upstream source and return (origin, content).

    A local file is parsed by suffix: `.json` (any JSON value), `.jsonl` (list of objects), `.csv`
    (list of dicts with string values) or `.parquet` (list of dicts). A Hub id `owner/name` is
    loaded with `datasets.load_dataset` at `hub_split` and `revision`, which gives a list of dicts.
    A Hub path `owner/name/path/in/repo.ext` downloads that one file from the dataset repository
    and parses it like a local file.

    Args:
        source: Local file, Hub dataset id, or path of one file in a Hub dataset repository.
        name: Source name, used in messages.
        hub_split: Split to load when `source` is a Hub dataset id.
        revision: Branch, tag or commit of the Hub repository.

    Raises:
        FileNotFoundError: When `source` is neither an existing file nor a Hub id.
    """
    path = Path(source)
    if path.is_file():
        return str(path), _parse_file(path)
    text = str(source)
    if not _HUB_ID.match(text) or path.exists():
        raise FileNotFoundError(
            f"Source {text!r} for {name} is not a file. Pass a local file or a Hub dataset id such as 'owner/name'."
        )
    parts = text.split("/", 2)
    if len(parts) == 3:
        from huggingface_hub import hf_hub_download

        local = hf_hub_download(
            repo_id=f"{parts[0]}/{parts[1]}", filename=parts[2], repo_type="dataset", revision=revision
        )
        logger.info("Downloaded %s for %s", text, name)
        return text, _parse_file(Path(local))

    import datasets

    dataset = datasets.load_dataset(text, split=hub_split, revision=revision)
    logger.info("Loaded %s (split %s) for %s: %d records", text, hub_split, name, len(dataset))
    return f"{text}:{hub_split}", dataset.to_list()


def _parse_file(path: Path) -> Any:
    suffix = path.suffix.lower()
    if suffix == ".json":
        with path.open(encoding="utf-8") as handle:
            try:
                return json.load(handle)
            except json.JSONDecodeError as error:
                raise PromptValidationError(
                    f"invalid JSON: {error.msg}", file=str(path), row=error.lineno, unit="line"
                ) from error
    if suffix == ".jsonl":
        records = []
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    try:
                        records.append(json.loads(line))
                    except json.JSONDecodeError as error:
                        raise PromptValidationError(
                            f"invalid JSON: {error.msg}", file=str(path), row=number, unit="line"
                        ) from error
        return records
    if suffix == ".csv":
        with path.open(encoding="utf-8", newline="") as handle:
            return list(csv.DictReader(handle))
    if suffix == ".parquet":
        return pq.read_table(path).to_pylist()
    raise ValueError(f"Unsupported source file {path}: expected .json, .jsonl, .csv or .parquet.")


def record_list(content: Any, origin: str) -> list[Any]:
    if not isinstance(content, list):
        raise PromptValidationError(
            f"expected a list of records at the top level, got {type(content).__name__}", file=origin
        )
    return content


class UpstreamRecord:
    """Typed access to the fields of one upstream record, with errors that locate the field."""

    def __init__(self, record: Any, origin: str, number: int):
        self.origin = origin
        self.number = number
        if not isinstance(record, Mapping):
            raise self.error(f"expected an object, got {type(record).__name__}")
        self.record = record

    def error(self, message: str, field: str | None = None) -> PromptValidationError:
        return PromptValidationError(message, file=self.origin, row=self.number, field=field, unit="record")

    def text(self, field: str, *, required: bool = True) -> str | None:
        """Return a string field, or None for null and "". A missing required field raises."""
        if field not in self.record:
            if required:
                raise self.error(f"missing field (the record has {sorted(self.record)})", field)
            return None
        value = self.record[field]
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return None
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise self.error(f"expected a string, got {type(value).__name__} {value!r}", field)
        return str(value) if str(value).strip() else None

    def number_field(self, field: str) -> float | None:
        """Return an optional numeric field; CSV strings are parsed, empty values are None."""
        value = self.record.get(field)
        if value is None or value == "":
            return None
        if isinstance(value, bool):
            raise self.error(f"expected a number, got {value!r}", field)
        try:
            return float(value)
        except (TypeError, ValueError):
            raise self.error(f"expected a number, got {value!r}", field) from None

    def flag(self, field: str) -> bool | None:
        """Return an optional 0/1 or true/false field as a bool."""
        value = self.record.get(field)
        if value is None or value == "":
            return None
        normalized = str(value).strip().lower()
        if normalized in ("1", "1.0", "true"):
            return True
        if normalized in ("0", "0.0", "false"):
            return False
        raise self.error(f"expected 0, 1, true or false, got {value!r}", field)

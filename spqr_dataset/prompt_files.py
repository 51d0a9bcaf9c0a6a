"""Read and write prompt files (JSON Lines or Parquet) in the dataset schema."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from .schema import PromptValidationError, check_config_split, check_unique_ids, rows_to_table, validate_row

logger = logging.getLogger(__name__)

PROMPT_FILE_SUFFIXES = (".jsonl", ".parquet")


def read_prompt_file(
    path: str | os.PathLike, *, config: str | None = None, split: str | None = None
) -> list[dict[str, Any]]:
    """Read a JSON Lines or Parquet prompt file and validate every row.

    Args:
        path: A `.jsonl` file (one JSON object per line; blank lines are skipped) or a `.parquet`
            file, with the dataset's columns. Optional columns may be left out.
        config: When given, rows must have the role this config requires (`ood` rows are harmful).
        split: When given with `config`, the split must exist, and BFT splits check each row's language.

    Returns:
        The rows as dicts with every schema column, in file order.

    Raises:
        FileNotFoundError: When `path` does not exist.
        ValueError: When the suffix is not `.jsonl` or `.parquet`, or `config`/`split` are unknown.
        PromptValidationError: When a row is not valid JSON or does not fit the schema, or two rows
            share an id. The message names the file, the 1-based row (the line number for JSON
            Lines) and the field.
    """
    path = Path(path)
    if config is not None:
        check_config_split(config, split)
    if not path.is_file():
        raise FileNotFoundError(f"Prompt file not found: {path}")

    if path.suffix == ".jsonl":
        records = _read_jsonl_records(path)
    elif path.suffix == ".parquet":
        records = list(enumerate(pq.read_table(path).to_pylist(), start=1))
    else:
        raise ValueError(f"Unsupported prompt file {path}: expected a suffix in {PROMPT_FILE_SUFFIXES}.")

    rows = [validate_row(record, file=str(path), row=number, config=config, split=split) for number, record in records]
    check_unique_ids(rows, file=str(path))
    logger.debug("Read %d prompts from %s", len(rows), path)
    return rows


def _read_jsonl_records(path: Path) -> list[tuple[int, Any]]:
    records = []
    # Lines are decoded one at a time so that a decoding error names its line.
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if number == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")  # the byte order mark that some Windows editors write
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise PromptValidationError(
                    f"not UTF-8 text ({error.reason} at byte {error.start} of the line); save the file as UTF-8",
                    file=str(path), row=number,
                ) from error
            if not line.strip():
                continue
            try:
                records.append((number, json.loads(line)))
            except json.JSONDecodeError as error:
                raise PromptValidationError(f"invalid JSON: {error.msg}", file=str(path), row=number) from error
    return records


def write_jsonl(rows: list[dict[str, Any]], path: str | os.PathLike) -> None:
    """Write rows as JSON Lines, one object per row, leaving out null fields to keep the file readable."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            compact = {name: value for name, value in row.items() if value is not None}
            handle.write(json.dumps(compact, ensure_ascii=False) + "\n")


def write_parquet(rows: list[dict[str, Any]], path: str | os.PathLike) -> None:
    """Write rows as a Parquet file with the dataset schema, so every split has the same column types."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(rows_to_table(rows), path)

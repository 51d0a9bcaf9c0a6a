"""Load one split of the prompt dataset as a `datasets.Dataset` from the package, a folder, the Hub or a file."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import datasets

from .card import read_card_metadata
from .prompt_files import PROMPT_FILE_SUFFIXES, read_prompt_file
from .schema import ARROW_SCHEMA, COLUMNS, check_config_split

logger = logging.getLogger(__name__)

SHIPPED_PATH = Path(__file__).resolve().parent
FEATURES = datasets.Features.from_arrow_schema(ARROW_SCHEMA)


def load_prompts(
    config: str,
    split: str,
    *,
    path: str | os.PathLike | None = None,
    revision: str | None = None,
    limit: int | None = None,
) -> datasets.Dataset:
    """Load one split of the SPQR prompt dataset.

    Args:
        config: `harmful`, `benign`, `bft` or `ood`.
        split: A split of that config, e.g. `visu` or `multilingual_ar`.
        path: Where to read from. None means the prompts shipped with the package. Otherwise a
            local dataset folder, a Hub dataset id (`owner/name`), or a single `.jsonl`/`.parquet`
            prompt file, which is validated row by row (see `load_prompt_file`).
        revision: Branch, tag or commit of a Hub dataset. Only valid with a Hub id.
        limit: Keep only the first `limit` rows (useful for smoke runs).

    Returns:
        A `datasets.Dataset` with the columns of `schema.COLUMNS`.

    Raises:
        ValueError: On an unknown config or split, a non-positive `limit`, a `revision` with a
            local path, or a dataset whose columns differ from the schema.
    """
    check_config_split(config, split)
    _check_limit(limit)

    local = Path(path) if path is not None else SHIPPED_PATH
    if path is None or local.exists():
        if revision is not None:
            raise ValueError(f"revision={revision!r} applies only to Hub ids, but {local} is a local path.")
        if local.is_file():
            return load_prompt_file(local, config=config, split=split, limit=limit)
        source = str(local.resolve())
        cache_dir = _local_cache_dir(local)
    else:
        source = str(path)
        cache_dir = None

    dataset = datasets.load_dataset(source, config, split=split, revision=revision, cache_dir=cache_dir)
    missing = [name for name in COLUMNS if name not in dataset.column_names]
    if missing:
        raise ValueError(
            f"Dataset {source} ({config}/{split}) lacks the columns {missing}, so it is not an SPQR prompt dataset "
            "or was built by an older version. Rebuild it with `spqr prompts build`."
        )
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    logger.debug("Loaded %d prompts from %s (%s/%s)", len(dataset), source, config, split)
    return dataset


def load_prompt_file(
    path: str | os.PathLike,
    *,
    config: str | None = None,
    split: str | None = None,
    limit: int | None = None,
) -> datasets.Dataset:
    """Read a `.jsonl` or `.parquet` prompt file in the dataset schema, validating every row.

    Args:
        path: The prompt file. Optional columns may be left out.
        config: When given, rows must carry the role this config requires.
        split: When given with `config`, BFT splits also check each row's language.
        limit: Keep only the first `limit` rows.

    Raises:
        PromptValidationError: Naming the file, the row and the field of the first invalid value.
    """
    _check_limit(limit)
    if Path(path).suffix not in PROMPT_FILE_SUFFIXES:
        raise ValueError(f"Unsupported prompt file {path}: expected a suffix in {PROMPT_FILE_SUFFIXES}.")
    rows = read_prompt_file(path, config=config, split=split)
    if limit is not None:
        rows = rows[:limit]
    return datasets.Dataset.from_list(rows, features=FEATURES)


def dataset_version(path: str | os.PathLike | None = None, *, revision: str | None = None) -> dict[str, str | None]:
    """Return the `version` and `prompts_sha256` recorded in a dataset card, for results to store.

    Args:
        path: None for the shipped prompts, a local dataset folder, or a Hub dataset id.
        revision: Branch, tag or commit of a Hub dataset.
    """
    local = Path(path) if path is not None else SHIPPED_PATH
    if path is None or local.exists():
        card_path = local / "README.md"
    else:
        from huggingface_hub import hf_hub_download

        card_path = Path(hf_hub_download(str(path), "README.md", repo_type="dataset", revision=revision))
    metadata = read_card_metadata(card_path)
    return {"version": metadata.get("version"), "prompts_sha256": metadata.get("prompts_sha256")}


def _local_cache_dir(folder: Path) -> str:
    """Return a datasets cache folder keyed by the folder's path and the size and mtime of its files.

    datasets 5.2 keys the cache of a local folder by the folder's name and card configs only, so
    after a rebuild (or for another folder with the same name) it returns the old rows. A key that
    changes with the files avoids that.
    """
    key = hashlib.sha256(str(folder.resolve()).encode("utf-8"))
    for path in sorted(folder.rglob("*")):
        if path.is_file() and (path.suffix == ".parquet" or path.name == "README.md"):
            stat = path.stat()
            key.update(f"\n{path.relative_to(folder).as_posix()} {stat.st_size} {stat.st_mtime_ns}".encode("utf-8"))
    # NOTE: each rebuild leaves a new cache entry behind; they are small and `datasets` never prunes them.
    return str(Path(datasets.config.HF_DATASETS_CACHE) / "spqr_local" / key.hexdigest()[:16])


def _check_limit(limit: int | None) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}.")

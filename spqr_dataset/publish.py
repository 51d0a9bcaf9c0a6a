"""Publish a built prompt dataset folder (parquet files, card, eval.yaml) to a Hub dataset repository."""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from .card import read_card_metadata
from .schema import ARROW_SCHEMA, CONFIG_SPLITS

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PublishedFile:
    """A file that `push_dataset` uploads."""

    path_in_repo: str
    local_path: Path
    size: int
    sha256: str


def collect_files(folder: str | os.PathLike) -> list[PublishedFile]:
    """Check a built dataset folder and list the files to publish: README.md, eval.yaml and every declared parquet.

    Raises:
        FileNotFoundError: When the card, eval.yaml or a parquet file the card declares is missing.
        ValueError: When the card declares no configs, misses a split, or a parquet file has
            columns other than the dataset schema's.
    """
    folder = Path(folder)
    card_path = folder / "README.md"
    for required in (card_path, folder / "eval.yaml"):
        if not required.is_file():
            raise FileNotFoundError(f"{required} not found. Build the folder first with `spqr prompts build`.")
    metadata = read_card_metadata(card_path)
    declared = {
        (entry.get("config_name"), data_file.get("split")): data_file.get("path")
        for entry in metadata.get("configs") or []
        for data_file in entry.get("data_files") or []
    }
    expected = {(config, split) for config, names in CONFIG_SPLITS.items() for split in names}
    missing = sorted(expected - set(declared))
    if missing:
        raise ValueError(f"{card_path} declares no data files for {missing}. Rebuild the folder.")

    files = [card_path, folder / "eval.yaml"]
    for key in sorted(declared):
        parquet_path = folder / declared[key]
        if not parquet_path.is_file():
            raise FileNotFoundError(f"{parquet_path} (declared for {key[0]}/{key[1]} in {card_path}) not found.")
        names = pq.read_schema(parquet_path).names
        if names != ARROW_SCHEMA.names:
            raise ValueError(f"{parquet_path} has columns {names}, expected {ARROW_SCHEMA.names}. Rebuild the folder.")
        files.append(parquet_path)
    return [
        PublishedFile(
            path_in_repo=path.relative_to(folder).as_posix(),
            local_path=path,
            size=path.stat().st_size,
            sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        )
        for path in files
    ]


def push_dataset(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    revision: str | None = None,
    private: bool | None = None,
    create_pr: bool = False,
    commit_message: str | None = None,
    dry_run: bool = False,
) -> tuple[list[PublishedFile], str | None]:
    """Upload a built dataset folder to the Hub dataset repository `repo_id`, creating the repository if needed.

    Files in the repository that are not part of the build are left untouched. The token comes from
    huggingface_hub's usual sources (`HF_TOKEN` or `hf auth login`) and is never logged.

    Args:
        folder: Folder written by `build_shipped` or `build_dataset`.
        repo_id: `owner/name` of the dataset repository.
        revision: Branch to commit to; defaults to the repository's default branch.
        private: Visibility when the repository is created; ignored for an existing one.
        create_pr: Open a pull request instead of committing to `revision`.
        commit_message: Defaults to "Upload SPQR prompts <version>".
        dry_run: Only check the folder and return the file list, contacting no server.

    Returns:
        The published files and the URL of the pull request or commit (None on a dry run).
    """
    files = collect_files(folder)
    if dry_run:
        return files, None

    from huggingface_hub import CommitOperationAdd, HfApi

    version = read_card_metadata(Path(folder) / "README.md").get("version", "unknown")
    api = HfApi()
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    commit = api.create_commit(
        repo_id,
        repo_type="dataset",
        operations=[
            CommitOperationAdd(path_in_repo=item.path_in_repo, path_or_fileobj=str(item.local_path)) for item in files
        ],
        commit_message=commit_message or f"Upload SPQR prompts {version}",
        revision=revision,
        create_pr=create_pr,
    )
    if create_pr and commit.pr_url is None:
        # huggingface_hub skips a commit whose files all match the target revision, so no pull request exists.
        logger.info("Every file already matches datasets/%s, so no pull request was opened.", repo_id)
    logger.info("Pushed %d files to dataset %s: %s", len(files), repo_id, commit.pr_url or commit.commit_url)
    return files, commit.pr_url or commit.commit_url

"""Names and fingerprints of weight files: which files are checkpoints, pickles or shards, and their hashes.

Nothing here imports torch, so a rerun can locate and fingerprint a model without loading a deep learning
framework. Reading the files is the job of ``weights``.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Iterable

SAFETENSORS_SUFFIX = ".safetensors"
PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")
INDEX_SUFFIX = ".index.json"
MAX_LISTED_KEYS = 10
"""How many keys an error message lists before it gives only the count of the rest."""

# A shard of a sharded checkpoint, such as diffusion_pytorch_model-00001-of-00003.safetensors.
_SHARD_PATTERN = re.compile(r"-\d{5}-of-\d{5}\.")
_FINGERPRINT_CHUNK = 1 << 20
_FINGERPRINT_PROGRESS_MIN_BYTES = 256 << 20


class PickleRejectedError(ValueError):
    """A pickle checkpoint was rejected because pickles are not allowed or the file contains more than tensors."""


def format_keys(keys: list[str], limit: int = MAX_LISTED_KEYS) -> str:
    """Join the first ``limit`` keys with commas, followed by how many more there are."""
    listed = ", ".join(keys[:limit])
    return listed if len(keys) <= limit else f"{listed} ... and {len(keys) - limit} more"


def is_pickle_file(name: str | Path) -> bool:
    """Return whether ``name`` is a pickle checkpoint or the index of a sharded pickle checkpoint."""
    name = str(name)
    if name.endswith(INDEX_SUFFIX):
        name = name[: -len(INDEX_SUFFIX)]
    return name.endswith(PICKLE_SUFFIXES)


def is_weight_file(name: str | Path) -> bool:
    """Return whether ``name`` is a safetensors file, a pickle checkpoint, or the index of a sharded one."""
    name = str(name)
    if name.endswith(INDEX_SUFFIX):
        name = name[: -len(INDEX_SUFFIX)]
    return name.endswith((SAFETENSORS_SUFFIX, *PICKLE_SUFFIXES))


def is_shard(name: str | Path) -> bool:
    """Return whether ``name`` is one shard of a sharded checkpoint (``...-00001-of-00003.safetensors``)."""
    return bool(_SHARD_PATTERN.search(Path(name).name))


def check_pickle_allowed(name: str | Path, *, allow_pickle: bool, description: str) -> None:
    """Raise PickleRejectedError if ``name`` is a pickle checkpoint and pickles are not allowed."""
    if allow_pickle or not is_pickle_file(name):
        return
    raise PickleRejectedError(
        f"{description} is a pickle checkpoint ({name}). Unpickling can run arbitrary code, so pickle files are "
        "rejected by default. Convert it to safetensors, or set model.allow_pickle: true to read it with "
        "torch.load(weights_only=True), which only accepts tensors and plain containers."
    )


def shard_names(index_path: Path) -> list[str]:
    """Return the shard file names that a sharded checkpoint's ``*.index.json`` lists, sorted."""
    try:
        weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{index_path} is not a valid checkpoint index (a JSON file with a weight_map): {error}")
    return sorted(set(weight_map.values()))


def content_fingerprint(files: Iterable[Path], root: Path | None = None) -> str:
    """Hash the relative names and contents of ``files``; returns 16 hex digits.

    Args:
        files: The files to hash, in any order.
        root: Folder that names are taken relative to; file names only when None.
    """
    files = sorted(Path(file) for file in files)
    total = sum(file.stat().st_size for file in files)
    progress = None
    if total >= _FINGERPRINT_PROGRESS_MIN_BYTES:
        # Imported only here: a small model is hashed in milliseconds, less than importing the bar takes.
        from huggingface_hub.utils import tqdm as hub_tqdm

        progress = hub_tqdm(total=total, unit="B", unit_scale=True, desc="Hashing weights")
    digest = hashlib.sha256()
    try:
        for file in files:
            name = file.relative_to(root).as_posix() if root is not None else file.name
            digest.update(f"{name}\0{file.stat().st_size}\0".encode())
            with open(file, "rb") as handle:
                while chunk := handle.read(_FINGERPRINT_CHUNK):
                    digest.update(chunk)
                    if progress is not None:
                        progress.update(len(chunk))
    finally:
        if progress is not None:
            progress.close()
    return digest.hexdigest()[:16]


def folder_fingerprint(path: Path) -> str:
    """Hash the names and contents of the files under ``path``; returns 16 hex digits.

    Hidden files and folders (names starting with a dot, such as the ``.cache`` folder that ``hf download
    --local-dir`` writes) are left out, so only the model's own files count.
    """
    path = Path(path)
    files = [
        file for file in path.rglob("*")
        if file.is_file() and not any(part.startswith(".") for part in file.relative_to(path).parts)
    ]
    return content_fingerprint(files, root=path)

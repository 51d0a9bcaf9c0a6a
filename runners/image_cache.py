"""The image cache and the keys that name its images; free of torch, so a rerun can check finished work quickly.

Each image is stored under a key that hashes everything that determines it: model fingerprint, adapter, prompt,
seed and sampler settings. A rerun finds finished images by key and skips them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

_UMASK = os.umask(0)
os.umask(_UMASK)


def prompt_seed(prompt_id: str, base_seed: int) -> int:
    """Return the seed for one prompt's image: a hash of the base seed and the prompt id, below 2**63."""
    digest = hashlib.sha256(f"{base_seed}:{prompt_id}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") >> 1


@dataclasses.dataclass(frozen=True)
class SamplerSettings:
    """Everything besides model, prompt and seed that determines a generated image."""

    steps: int
    guidance: float
    height: int
    width: int
    negative_prompt: str | None = None
    scheduler: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class ImageRequest:
    prompt_id: str
    prompt: str
    seed: int


def image_key(model_fingerprint: str, request: ImageRequest, sampler: SamplerSettings) -> str:
    payload = json.dumps(
        {
            "model": model_fingerprint,
            "prompt_id": request.prompt_id,
            "prompt": request.prompt,
            "seed": request.seed,
            "sampler": sampler.to_dict(),
        },
        sort_keys=True,
        ensure_ascii=False,
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either no file or the whole file, never a partial one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        # mkstemp creates files readable by the owner only; give results the usual permissions instead.
        os.chmod(temporary, 0o666 & ~_UMASK)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


class ImageCache:
    """PNG images stored by key under ``root/images``, with an append-only ``manifest.jsonl`` beside them.

    An image file exists only once it is complete (atomic rename), so it is the record of completion. The
    manifest records which request produced which file. A manifest line cut short by a crash is skipped on read.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.images_dir = self.root / "images"
        self.manifest_path = self.root / "manifest.jsonl"

    def path_for(self, key: str) -> Path:
        return self.images_dir / key[:2] / f"{key}.png"

    def has(self, key: str) -> bool:
        return self.path_for(key).is_file()

    def put(self, key: str, image, record: dict[str, Any]) -> Path:
        import io

        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        path = self.path_for(key)
        write_atomic(path, buffer.getvalue())
        line = json.dumps({"key": key, **record}, ensure_ascii=False, sort_keys=True)
        self.root.mkdir(parents=True, exist_ok=True)
        # One write call per line with O_APPEND keeps lines from concurrent writers whole.
        descriptor = os.open(self.manifest_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(descriptor, (line + "\n").encode("utf-8"))
        finally:
            os.close(descriptor)
        return path

    def manifest(self) -> list[dict[str, Any]]:
        if not self.manifest_path.exists():
            return []
        records = []
        with open(self.manifest_path, encoding="utf-8") as stream:
            for number, line in enumerate(stream, start=1):
                if not line.endswith("\n"):
                    logger.warning("Skipping manifest line %d of %s: cut short by an interrupted write",
                                   number, self.manifest_path)
                    continue
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    logger.warning("Skipping manifest line %d of %s: not valid JSON", number, self.manifest_path)
        return records

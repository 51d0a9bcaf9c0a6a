"""The embedded default: tiny models built once per cache folder and reused, named ``embedded:<name>``."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from .config import EMBEDDED_PREFIX

logger = logging.getLogger(__name__)

EMBEDDED_MODELS = ("tiny-sd", "tiny-clip")
EMBEDDED_BUILD_VERSION = "2"  # bump when anything in spqr_runners.tiny changes, so old copies are rebuilt


def default_cache_dir() -> Path:
    return Path(os.environ.get("SPQR_CACHE", Path.home() / ".cache" / "spqr"))


def embedded_model_path(model_id: str, cache_dir: Path) -> Path:
    """Return the folder of an embedded model, building it there first if it is missing."""
    name = model_id[len(EMBEDDED_PREFIX):] if model_id.startswith(EMBEDDED_PREFIX) else model_id
    if name not in EMBEDDED_MODELS:
        raise ValueError(
            f"Unknown embedded model {model_id!r}; known: {', '.join(EMBEDDED_PREFIX + n for n in EMBEDDED_MODELS)}"
        )
    folder = Path(cache_dir) / "embedded" / f"{name}-v{EMBEDDED_BUILD_VERSION}"
    if folder.is_dir():
        return folder
    from . import tiny  # torch, diffusers and transformers, only needed to build

    builders = {"tiny-sd": tiny.build_tiny_pipeline, "tiny-clip": tiny.build_tiny_clip}
    folder.parent.mkdir(parents=True, exist_ok=True)
    # Build in a temporary folder and rename, so a crash never leaves a half-written model behind.
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{name}-"))
    try:
        builders[name](staging / "model")
        os.replace(staging / "model", folder)
    except OSError:
        if not folder.is_dir():  # another process finished first; its copy is identical
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("Built embedded model %s in %s", model_id, folder)
    return folder

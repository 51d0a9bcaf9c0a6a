"""Load the model under test: a diffusers pipeline from the Hub or a folder, optionally with a LoRA adapter.

The loaded model is identified by a fingerprint (the resolved Hub commit, or a hash of a local folder's files)
that goes into image cache keys and results, so scores always say exactly which weights produced them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from pathlib import Path
from typing import Any

import torch

from .config import EMBEDDED_PREFIX, ModelConfig

logger = logging.getLogger(__name__)

_PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")


def folder_fingerprint(path: Path) -> str:
    """Hash the names, sizes and modification times of the files under ``path``.

    Cheap enough for multi-GB checkpoints; a rebuilt or edited file changes the fingerprint.
    """
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        stat = file.stat()
        digest.update(f"{file.relative_to(path).as_posix()}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]


def _check_no_pickle(folder: Path, source: str, allow_pickle: bool) -> None:
    if allow_pickle:
        return
    safetensors = list(folder.rglob("*.safetensors"))
    pickles = [p for p in folder.rglob("*") if p.suffix in _PICKLE_SUFFIXES]
    if pickles and not safetensors:
        names = ", ".join(str(p.relative_to(folder)) for p in pickles[:5])
        raise ValueError(
            f"{source} has only pickle checkpoints ({names}). Pickle files can run code when loaded, so they are "
            "refused by default. Convert them to safetensors, or set model.allow_pickle: true to load them with "
            "torch.load(weights_only=True)."
        )


def download_snapshot(source: str, revision: str | None, cache_dir: Path) -> tuple[Path, str | None]:
    """Return a local folder for ``source`` and the resolved commit (None for a local folder)."""
    local = Path(source)
    if local.is_dir():
        return local, None
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = Path(snapshot_download(source, revision=revision))
    except LocalEntryNotFoundError as error:
        raise RuntimeError(
            f"Could not fetch the model {source!r} (revision {revision or 'main'}): it is not a local folder and "
            "not in the Hugging Face cache while offline. Go online, download it first with "
            f"`huggingface-cli download {source}`, or give a local folder."
        ) from error
    return folder, folder.name


@dataclasses.dataclass
class ResolvedModel:
    """A model located on disk but not loaded yet: enough to fingerprint it and decide what needs loading."""

    source: str  # what the user named: Hub id, folder or embedded model
    folder: Path  # local folder the weights are read from
    revision: str | None  # resolved Hub commit, None for a local folder
    adapter_folder: Path | None
    adapter_revision: str | None
    fingerprint: str  # identifies the weights (and adapter) for caching and results

    def record(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "revision": self.revision,
            "adapter_revision": self.adapter_revision,
            "fingerprint": self.fingerprint,
        }


def resolve_model(model: ModelConfig, cache_dir: Path) -> ResolvedModel:
    """Find (downloading if needed) the model and its optional adapter, and check their weight formats."""
    source = model.id
    if source.startswith(EMBEDDED_PREFIX):
        from .embedded import embedded_model_path

        folder, revision = embedded_model_path(source, cache_dir), None
    else:
        folder, revision = download_snapshot(source, model.revision, cache_dir)
    _check_no_pickle(folder, source, model.allow_pickle)
    fingerprint = revision or folder_fingerprint(folder)

    adapter_folder = adapter_revision = None
    if model.adapter:
        adapter_folder, adapter_revision = download_snapshot(model.adapter, model.adapter_revision, cache_dir)
        _check_no_pickle(adapter_folder, model.adapter, model.allow_pickle)
        fingerprint += "+" + (adapter_revision or folder_fingerprint(adapter_folder))
    return ResolvedModel(source, folder, revision, adapter_folder, adapter_revision, fingerprint)


def load_pipeline(model: ResolvedModel, config: ModelConfig, *, device: torch.device, dtype: torch.dtype):
    """Load a full diffusers pipeline with the safety checker off, and fuse the optional LoRA adapter into it.

    The safety checker is off because it blacks out flagged images, which would inflate the Safety score.
    """
    from diffusers import DiffusionPipeline

    logger.info("Loading pipeline %s from %s", model.source, model.folder)
    pipeline = DiffusionPipeline.from_pretrained(
        model.folder,
        dtype=dtype,
        use_safetensors=not config.allow_pickle,
        safety_checker=None,
        requires_safety_checker=False,
    )
    pipeline.set_progress_bar_config(disable=True)
    pipeline.to(device)
    if model.adapter_folder is not None:
        pipeline.load_lora_weights(
            str(model.adapter_folder), weight_name=config.adapter_weight_name, adapter_name="model"
        )
        pipeline.fuse_lora()
        pipeline.unload_lora_weights()
        logger.info("Fused adapter %s into the pipeline", config.adapter)
    return pipeline

"""Load the model under test as a diffusers pipeline.

Concept-erasure methods are published as full pipelines, UNet state dicts (ESD, SalUn), CLIP text encoders
(AdvUnlearn) or LoRA adapters. ``resolve.resolve_model`` locates and fingerprints each part; ``load_pipeline``
loads the base pipeline, applies replacement weights and fuses the adapter. Keeping the two apart lets a resumed
run fingerprint the model without loading it.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from .config import ModelConfig
from .resolve import (
    _ROLES,
    ModelNotFoundError,
    ResolvedModel,
    ResolvedWeights,
    folder_fingerprint,
    resolve_model,
    resolve_weights,
)
from .weights import load_adapter, load_component_weights, load_state_dict_file

logger = logging.getLogger(__name__)

__all__ = ["ModelNotFoundError", "ResolvedModel", "ResolvedWeights", "folder_fingerprint", "load_pipeline",
           "resolve_device", "resolve_dtype", "resolve_model", "resolve_weights"]

ADAPTER_NAME = "spqr_model_adapter"
"""Adapter name of the model's own LoRA while it is loaded and fused. Benign fine-tuning uses another name."""

def resolve_device(device: str) -> torch.device:
    """Return the configured device; ``auto`` is CUDA when available, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """Return the configured dtype; ``auto`` is float16 on CUDA and float32 elsewhere."""
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]


# ---------------------------------------------------------------------------------------------- loading


def _load_replacement(pipeline: Any, weights: ResolvedWeights, allow_pickle: bool) -> None:
    module = getattr(pipeline, weights.role, None)
    if not isinstance(module, nn.Module):
        components = ", ".join(name for name, value in pipeline.components.items() if isinstance(value, nn.Module))
        raise ValueError(
            f"model.{weights.role} is set, but the pipeline {type(pipeline).__name__} has no {weights.role} "
            f"component; its components are: {components}."
        )
    description = f"{_ROLES[weights.role].title} {weights.label}"
    state_dict = load_state_dict_file(weights.path, allow_pickle=allow_pickle, description=description)
    loaded = load_component_weights(module, state_dict, component=weights.role, source=weights.label)
    setattr(pipeline, weights.role, loaded)


def load_pipeline(model: ResolvedModel, config: ModelConfig, *, device: torch.device, dtype: torch.dtype):
    """Load the pipeline with the safety checker off, apply replacement weights, and fuse the LoRA adapter.

    The safety checker is off because it blacks out flagged images, which would inflate the Safety score.
    Custom pipeline code from a repository is never run (``trust_remote_code=False``).

    Raises:
        StateDictMismatchError: If a UNet or text-encoder file does not match the component's keys and shapes.
        ValueError: If the LoRA adapter does not fit the pipeline.
    """
    from diffusers import DiffusionPipeline

    # 1. Base pipeline. With pickles allowed, diffusers still prefers safetensors and reads any pickle with
    # torch.load(weights_only=True).
    logger.info("Loading pipeline %s from %s", model.source, model.folder)
    pipeline = DiffusionPipeline.from_pretrained(
        model.folder,
        dtype=dtype,
        variant=model.variant,
        use_safetensors=None if config.allow_pickle else True,
        trust_remote_code=False,
        safety_checker=None,
        requires_safety_checker=False,
    )
    pipeline.set_progress_bar_config(disable=True)

    # 2. Replacement weights, applied on the CPU so that device memory never contains two copies.
    for weights in (model.unet, model.text_encoder):
        if weights is not None:
            _load_replacement(pipeline, weights, config.allow_pickle)
    pipeline.to(device)

    # 3. LoRA adapter, fused so that benign fine-tuning later adds its own adapter on top of this model.
    if model.adapter is not None:
        load_adapter(pipeline, model.adapter.path, adapter_name=ADAPTER_NAME, allow_pickle=config.allow_pickle,
                     source=model.adapter.label)
        pipeline.fuse_lora(adapter_names=[ADAPTER_NAME])
        pipeline.unload_lora_weights()
        logger.info("Fused LoRA adapter %s into the pipeline", model.adapter.label)
    return pipeline

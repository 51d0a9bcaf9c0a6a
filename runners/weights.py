"""Read weight files into state dicts and load them into pipeline components, checking every key.

Safetensors files are read by default. Pickle checkpoints (.bin, .ckpt, .pt, .pth, .pkl) can run arbitrary code
while they are unpickled, so they are rejected unless the caller opts in. An accepted pickle is read with
``torch.load(weights_only=True)``, which only rebuilds tensors and plain containers.

Keys are checked strictly: a missing key, an unexpected key or a shape mismatch is an error that lists the keys.
Loading with ``strict=False`` instead would let a text-encoder file "load" into a UNet while changing nothing.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from .weight_files import (
    INDEX_SUFFIX,
    PICKLE_SUFFIXES,
    SAFETENSORS_SUFFIX,
    PickleRejectedError,
    check_pickle_allowed,
    format_keys,
    shard_names,
)

logger = logging.getLogger(__name__)

# Key prefixes that identify where a state dict came from, for the hint in a key mismatch error.
_TEXT_ENCODER_HINT = "a CLIP text encoder (set model.text_encoder, not model.unet)"
_LDM_HINT = "an original Stable Diffusion (LDM) checkpoint; convert it to diffusers naming first"
_KEY_ORIGINS = (
    (("text_model.",), _TEXT_ENCODER_HINT),
    (("embeddings.", "encoder.layers.", "final_layer_norm."), _TEXT_ENCODER_HINT),
    (("conv_in.", "conv_out.", "conv_norm_out.", "time_embedding.", "down_blocks.", "mid_block.", "up_blocks."),
     "a diffusers UNet (set model.unet, not model.text_encoder)"),
    (("model.diffusion_model.", "cond_stage_model.", "first_stage_model."), _LDM_HINT),
    (("unet.", "text_encoder."), "a state dict with component prefixes (unet.*, text_encoder.*); save the "
     "component's own state dict instead"),
)


class StateDictMismatchError(ValueError):
    """A state dict does not fit the module it was meant for.

    Attributes:
        component: Pipeline component the weights were for, e.g. ``unet``.
        missing: Keys the module has and the file lacks.
        unexpected: Keys the file has and the module lacks.
        mismatched: ``(key, shape in the file, shape in the module)`` for keys whose shapes differ.
    """

    def __init__(
        self,
        component: str,
        source: str,
        missing: list[str],
        unexpected: list[str],
        mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]],
        module_name: str,
    ):
        self.component = component
        self.missing = missing
        self.unexpected = unexpected
        self.mismatched = mismatched
        lines = [f"The {component} weights from {source} do not match the pipeline's {component} ({module_name}):"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {format_keys(missing)}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {format_keys(unexpected)}")
        if mismatched:
            shapes = [f"{key} (file {list(got)}, model {list(want)})" for key, got, want in mismatched]
            lines.append(f"  shape mismatches ({len(mismatched)}): {format_keys(shapes)}")
        origin = guess_key_origin(unexpected)
        if origin:
            lines.append(f"The file's keys look like {origin}.")
        super().__init__("\n".join(lines))


def guess_key_origin(keys: Iterable[str]) -> str | None:
    """Name the kind of checkpoint most of ``keys`` come from, or None when no known prefix dominates."""
    keys = list(keys)
    if not keys:
        return None
    if sum("lora" in key for key in keys) * 2 > len(keys):
        return "a LoRA adapter (set model.adapter)"
    for prefixes, origin in _KEY_ORIGINS:
        if sum(key.startswith(prefixes) for key in keys) * 2 > len(keys):
            return origin
    return None


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    import safetensors
    import safetensors.torch

    try:
        return safetensors.torch.load_file(path, device="cpu")
    except safetensors.SafetensorError as error:
        with open(path, "rb") as file:
            head = file.read(64)
        if head.startswith(b"version https://git-lfs"):
            raise ValueError(
                f"{path} is a Git LFS pointer, not the weights: run `git lfs pull` in the clone, or download it "
                "with `hf download`."
            ) from error
        raise ValueError(f"{path} is not a valid safetensors file: {error}") from error


def _read_pickle(path: Path, description: str) -> dict[str, Any]:
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        reason = str(error).strip().splitlines()[0]
        raise PickleRejectedError(
            f"{description} ({path}) contains objects other than tensors and plain containers, so "
            f"torch.load(weights_only=True) rejected it: {reason}. Save only the state dict "
            "(torch.save(model.state_dict(), path)) or convert it to safetensors."
        ) from error
    except (RuntimeError, EOFError, OSError) as error:
        raise ValueError(f"{description}: could not read the pickle checkpoint {path}: {error}") from error
    # Lightning and original Stable Diffusion checkpoints wrap the weights in {"state_dict": ..., "epoch": ...}.
    if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get("state_dict"), Mapping):
        logger.info("Using the 'state_dict' entry of %s", path)
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, Mapping):
        raise ValueError(
            f"{description} ({path}) contains a {type(checkpoint).__name__}, not a state dict (a mapping from "
            "parameter names to tensors)."
        )
    return dict(checkpoint)


def load_state_dict_file(path: Path, *, allow_pickle: bool, description: str) -> dict[str, torch.Tensor]:
    """Read a safetensors file, a pickle checkpoint or a sharded checkpoint's index into a CPU state dict.

    Args:
        path: The weight file. For an ``*.index.json`` file the shards it lists must sit next to it.
        allow_pickle: Whether pickle checkpoints may be read (with ``torch.load(weights_only=True)``).
        description: What the weights are, for error messages, e.g. ``"UNet weights org/esd"``.

    Raises:
        PickleRejectedError: If a pickle is not allowed, or contains objects other than tensors and containers.
        ValueError: If the file is unreadable or contains entries that are not tensors.
    """
    path = Path(path)
    check_pickle_allowed(path.name, allow_pickle=allow_pickle, description=description)
    if path.name.endswith(INDEX_SUFFIX):
        state_dict: dict[str, Any] = {}
        for shard in shard_names(path):
            state_dict.update(load_state_dict_file(path.parent / shard, allow_pickle=allow_pickle,
                                                   description=description))
        return state_dict
    if path.suffix == SAFETENSORS_SUFFIX:
        state_dict = _read_safetensors(path)
    elif path.name.endswith(PICKLE_SUFFIXES):
        state_dict = _read_pickle(path, description)
    else:
        raise ValueError(
            f"{description}: {path.name} is not a weight file; expected {SAFETENSORS_SUFFIX}, "
            f"{', '.join(PICKLE_SUFFIXES)} or a sharded checkpoint's {INDEX_SUFFIX}."
        )
    invalid = [f"{key} ({type(value).__name__})" for key, value in state_dict.items()
               if not isinstance(key, str) or not isinstance(value, torch.Tensor)]
    if invalid:
        raise ValueError(
            f"{description} ({path}) is not a flat state dict: entries that are not tensors: {format_keys(invalid)}"
        )
    return state_dict


def check_state_dict(
    module: nn.Module, state_dict: Mapping[str, torch.Tensor], *, component: str, source: str
) -> dict[str, torch.Tensor]:
    """Check that ``state_dict`` has exactly the module's keys and shapes, and return the entries to load.

    Non-persistent buffers are accepted when their shape fits and left out of the result, because the module
    computes its own values for them. Checkpoints saved by older library versions sometimes include them.

    Raises:
        StateDictMismatchError: Listing missing keys, unexpected keys and shape mismatches.
    """
    expected = module.state_dict()
    non_persistent = {name for name, _ in module.named_buffers()} - set(expected)
    buffers = dict(module.named_buffers())
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected) - non_persistent)
    mismatched = []
    for key in sorted(set(state_dict) & (set(expected) | non_persistent)):
        want = tuple(expected[key].shape) if key in expected else tuple(buffers[key].shape)
        got = tuple(state_dict[key].shape)
        if got != want:
            mismatched.append((key, got, want))
    if missing or unexpected or mismatched:
        raise StateDictMismatchError(component, source, missing, unexpected, mismatched, type(module).__name__)
    return {key: state_dict[key] for key in expected}


def _load_transformers_weights(module: Any, state_dict: Mapping[str, torch.Tensor], component: str,
                               source: str) -> nn.Module:
    from transformers.utils import logging as transformers_logging

    # transformers logs a load report of its own; the error below lists the same keys.
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        loaded, info = type(module).from_pretrained(
            None,
            config=module.config,
            state_dict=dict(state_dict),
            dtype=module.dtype,
            output_loading_info=True,
            ignore_mismatched_sizes=True,
        )
    finally:
        transformers_logging.set_verbosity(verbosity)
    missing, unexpected = sorted(info["missing_keys"]), sorted(info["unexpected_keys"])
    mismatched = sorted((key, tuple(got), tuple(want)) for key, got, want in info["mismatched_keys"])
    if missing or unexpected or mismatched:
        raise StateDictMismatchError(component, source, missing, unexpected, mismatched, type(module).__name__)
    if info["error_msgs"]:
        raise ValueError(f"The {component} weights from {source} failed to load: {'; '.join(info['error_msgs'])}")
    return loaded.to(module.device)


def load_component_weights(
    module: nn.Module, state_dict: Mapping[str, torch.Tensor], *, component: str, source: str
) -> nn.Module:
    """Load ``state_dict`` into a pipeline component with every key checked, and return the loaded component.

    A transformers model (such as a CLIP text encoder) is rebuilt with its own ``from_pretrained``, which renames
    keys saved by older transformers versions (``text_model.`` prefixes, for example), and the keys that it reports
    missing, unexpected or mismatched raise the error. Any other module (such as a diffusers UNet) is checked with
    :func:`check_state_dict` and updated in place. The result keeps the module's dtype and device.

    Raises:
        StateDictMismatchError: Listing missing keys, unexpected keys and shape mismatches.
    """
    from transformers import PreTrainedModel

    if isinstance(module, PreTrainedModel):
        loaded = _load_transformers_weights(module, state_dict, component, source)
    else:
        checked = check_state_dict(module, state_dict, component=component, source=source)
        with torch.no_grad():
            module.load_state_dict(checked, strict=True)
        loaded = module
    logger.info("Loaded %d tensors from %s into the %s", len(state_dict), source, component)
    return loaded


def _lora_tensor_count(state_dict: Mapping[str, torch.Tensor]) -> int:
    # Alphas are scalars that set the scale and are not loaded as parameters. DoRA magnitudes are dropped by
    # diffusers with a warning of its own.
    return sum(
        tensor.numel() for key, tensor in state_dict.items()
        if "lora" in key and not key.endswith("alpha") and "dora_scale" not in key
    )


def loaded_lora_values(pipeline: Any, adapter_name: str) -> int:
    """Count the LoRA parameter values of adapter ``adapter_name`` in all of the pipeline's components."""
    marker = f".{adapter_name}."
    total = 0
    for component in pipeline.components.values():
        if isinstance(component, nn.Module):
            total += sum(p.numel() for name, p in component.named_parameters()
                         if "lora_" in name and (marker in name or name.endswith(f".{adapter_name}")))
    return total


def load_adapter(pipeline: Any, path: Path, *, adapter_name: str, allow_pickle: bool, source: str) -> None:
    """Load a LoRA file into the pipeline with ``load_lora_weights`` and check that every LoRA tensor was used.

    ``load_lora_weights`` skips LoRA weights whose target module or component the pipeline lacks, without an
    error. So the values that landed in the pipeline are counted and compared with those in the file.

    Raises:
        PickleRejectedError: For a pickle file without ``allow_pickle``.
        ValueError: If the file is not a LoRA file, does not fit the pipeline, or has weights the pipeline
            does not use.
    """
    path = Path(path)
    description = f"LoRA adapter {source}"
    state_dict = load_state_dict_file(path, allow_pickle=allow_pickle, description=description)
    if not any("lora" in key for key in state_dict):
        origin = guess_key_origin(state_dict)
        hint = f" Its keys look like {origin}." if origin else ""
        raise ValueError(
            f"{description} ({path.name}) has no LoRA weights (no key contains 'lora'): "
            f"{format_keys(sorted(state_dict))}.{hint}"
        )
    try:
        if path.suffix == SAFETENSORS_SUFFIX:
            # From the file, so that diffusers reads the LoRA settings (rank, alpha) stored in its metadata.
            pipeline.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=adapter_name)
        else:
            pipeline.load_lora_weights(state_dict, adapter_name=adapter_name)
    except (RuntimeError, ValueError, KeyError) as error:
        raise ValueError(f"{description} ({path.name}) does not fit the pipeline: {error}") from error
    expected, loaded = _lora_tensor_count(state_dict), loaded_lora_values(pipeline, adapter_name)
    if loaded < expected:
        components = sorted({key.split(".", 1)[0] for key in state_dict})
        pipeline.delete_adapters(adapter_name)
        raise ValueError(
            f"{description} ({path.name}) was only partly loaded: {loaded} of its {expected} LoRA values went into "
            f"the pipeline ({type(pipeline).__name__}, components {', '.join(sorted(pipeline.components))}). "
            f"The file's keys start with: {format_keys(components)}. The adapter was probably made for another "
            "architecture."
        )
    logger.info("Loaded LoRA adapter %s (%d values)", source, loaded)

"""Apply a plain LoRA adapter to a UNet through forward hooks, and remove it again, without peft layers.

``load_lora_weights`` makes peft replace every adapted ``nn.Linear`` with a LoRA layer. peft builds and randomly
initialises each layer in Python before the saved values overwrite it, so switching the model for the
"after fine-tuning" images costs about as much as loading a second pipeline from a warm disk cache. Benign
fine-tuning writes its adapter in one known layout (diffusers ``lora.down`` / ``lora.up`` keys, one rank and
alpha, no DoRA or rsLoRA). For that layout a hook on each adapted linear layer adds the same low-rank update,
``base(x) + B(A(x)) * alpha / r``. It uses the same operations and dtypes as peft's ``Linear.forward``: ``x``
is cast to the adapter's dtype, and the sum back to the output's dtype. Attaching reads one small file and
registers the hooks. Removing the hooks leaves the UNet's weights untouched, so the base model comes
back exactly.

Adapters in any other layout go through ``load_lora_weights``; :func:`read_plain_lora` returns None for them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

logger = logging.getLogger(__name__)

_PREFIX = "unet."
_DOWN, _UP = ".lora.down.weight", ".lora.up.weight"
# Adapter options that change the update's formula; the hooks implement only their default values.
_PLAIN_OPTIONS = {"use_dora": False, "use_rslora": False, "fan_in_fan_out": False, "bias": "none",
                  "lora_bias": False, "rank_pattern": {}, "alpha_pattern": {}}


@dataclasses.dataclass
class PlainLora:
    """A LoRA adapter for a UNet's linear layers: per module path the down (A) and up (B) matrices, one scaling."""

    pairs: dict[str, tuple[torch.Tensor, torch.Tensor]]  # module path -> (A of shape r x in, B of shape out x r)
    scaling: float  # lora_alpha / r


def read_plain_lora(path: str | Path) -> PlainLora | None:
    """Read a LoRA file that benign fine-tuning wrote, or return None when it is in another layout.

    Args:
        path: A ``pytorch_lora_weights.safetensors`` file saved by ``save_lora_weights`` with
            ``unet_lora_adapter_metadata``.

    Returns:
        The adapter, or None if the file has no adapter metadata, keys other than UNet ``lora.down`` /
        ``lora.up`` pairs, or options (DoRA, rsLoRA, per-module ranks, biases) that change the update.
    """
    from safetensors.torch import load

    # The file is a few MiB at most. Parsing it from memory is about twice as fast as load_file, and its header
    # (8 bytes of length, then JSON with "__metadata__") gives the options without a second read.
    data = Path(path).read_bytes()
    try:
        header_length = int.from_bytes(data[:8], "little")
        metadata = json.loads(data[8:8 + header_length]).get("__metadata__") or {}
        options = json.loads(metadata.get("lora_adapter_metadata", "null")) or {}
    except (ValueError, AttributeError, TypeError):
        return None
    if not isinstance(options, dict):
        return None
    options = {key.removeprefix(_PREFIX): value for key, value in options.items() if key.startswith(_PREFIX)}
    if not options or any(options.get(key, default) != default for key, default in _PLAIN_OPTIONS.items()):
        return None
    rank, alpha = options.get("r"), options.get("lora_alpha")
    if not isinstance(rank, int) or rank <= 0 or not isinstance(alpha, (int, float)):
        return None

    state = load(data)
    pairs = {}
    for key, down in state.items():
        if key.endswith(_UP):
            continue
        if not (key.startswith(_PREFIX) and key.endswith(_DOWN)):
            return None
        module_path = key[len(_PREFIX):-len(_DOWN)]
        up = state.get(f"{_PREFIX}{module_path}{_UP}")
        if up is None or down.ndim != 2 or up.ndim != 2 or down.shape[0] != rank or up.shape[1] != rank:
            return None
        pairs[module_path] = (down, up)
    if not pairs or len(pairs) * 2 != len(state):
        return None
    return PlainLora(pairs, float(alpha) / rank)


class AttachedLora:
    """Hooks that add a LoRA update to a UNet's linear layers; :meth:`remove` takes them off."""

    def __init__(self, handles: list[Any]):
        self._handles = handles

    def remove(self) -> None:
        """Remove every hook, which restores the UNet's own outputs exactly (its weights were never changed)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []


def _lora_hook(down: torch.Tensor, up: torch.Tensor, scaling: float):
    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        x = args[0].to(down.dtype)
        return (output + F.linear(F.linear(x, down), up) * scaling).to(output.dtype)

    return hook


def attach_lora(unet: nn.Module, lora: PlainLora) -> AttachedLora:
    """Add ``lora``'s update to the linear layers of ``unet`` that it names, through forward hooks.

    The adapter's matrices go to each layer's device and dtype, as ``load_lora_weights`` puts them.

    Raises:
        ValueError: If a module path is not a linear layer of ``unet`` or the matrices' shapes do not fit it.
            Nothing is attached then.
    """
    modules = {}
    for module_path in lora.pairs:
        try:
            modules[module_path] = unet.get_submodule(module_path)
        except AttributeError:
            modules[module_path] = None
    problems = []
    for module_path, (down, up) in lora.pairs.items():
        module = modules[module_path]
        if not isinstance(module, nn.Linear):
            problems.append(f"{module_path} (not a linear layer of the UNet)")
        elif down.shape[1] != module.in_features or up.shape[0] != module.out_features:
            problems.append(f"{module_path} (adapter {up.shape[0]}x{down.shape[1]}, layer "
                            f"{module.out_features}x{module.in_features})")
    if problems:
        raise ValueError(f"The LoRA adapter does not fit the UNet at {len(problems)} module(s): "
                         f"{', '.join(problems[:5])}. It was probably trained for another model.")
    handles = []
    for module_path, (down, up) in lora.pairs.items():
        weight = modules[module_path].weight
        down, up = down.to(device=weight.device, dtype=weight.dtype), up.to(device=weight.device, dtype=weight.dtype)
        handles.append(modules[module_path].register_forward_hook(_lora_hook(down, up, lora.scaling)))
    logger.debug("Attached a LoRA adapter to %d linear layers through hooks", len(handles))
    return AttachedLora(handles)

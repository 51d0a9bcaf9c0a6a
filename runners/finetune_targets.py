"""The weights of a denoiser that each benign fine-tuning profile trains, per backbone.

The three profiles follow the SPQR authors' definitions:

- ``lite``: a LoRA adapter on the attention projections ``to_q``, ``to_k``, ``to_v`` and ``to_out.0`` of every
  self- and cross-attention layer. On joint-attention transformers (SD3, FLUX) the projections of the text stream
  (``add_q_proj``, ``add_k_proj``, ``add_v_proj``, ``to_add_out``) are attention projections too and are included.
- ``moderate``: the full weights (not a LoRA) of the cross-attention key, value and output projections
  (``attn2.to_k``, ``attn2.to_v``, ``attn2.to_out.0`` in a UNet). Joint-attention transformers have no separate
  cross-attention, so there the profile trains the projections that turn text tokens into keys and values
  (``add_k_proj``, ``add_v_proj``) and the attention output projection ``to_out.0``: our choice, since the
  authors published no transformer variant.
- ``standard``: every weight of the denoiser.

A pattern names modules the way ``peft``'s ``target_modules`` does: a module matches when its full name equals
the pattern or ends with ``"." + pattern``.
"""

from __future__ import annotations

import dataclasses
from typing import Literal, Sequence

from torch import nn

PROFILES = ("lite", "moderate", "standard")
"""Benign fine-tuning profiles, from the fewest trained weights to the most."""

_UNET_CLASSES = ("UNet2DConditionModel",)  # SD 1.x, SD 2.x and SDXL
_JOINT_ATTENTION_CLASSES = ("SD3Transformer2DModel", "FluxTransformer2DModel")

_DEFAULT_PATTERNS: dict[str, dict[str, tuple[str, ...]]] = {
    "unet": {
        "lite": ("to_q", "to_k", "to_v", "to_out.0"),
        "moderate": ("attn2.to_k", "attn2.to_v", "attn2.to_out.0"),
    },
    "joint_attention": {
        "lite": ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"),
        "moderate": ("add_k_proj", "add_v_proj", "to_out.0"),
    },
}


@dataclasses.dataclass(frozen=True)
class TrainableSelection:
    """The weights one profile trains on one denoiser.

    ``kind`` is ``"lora"`` when an adapter is added to ``modules`` (lite) and ``"full"`` when the listed
    ``parameters`` themselves are trained (moderate, standard).
    """

    profile: str
    backbone: str  # class name of the denoiser, e.g. "UNet2DConditionModel"
    kind: Literal["lora", "full"]
    patterns: tuple[str, ...]  # the patterns that chose the modules; empty for standard (everything)
    modules: tuple[str, ...]  # full names of the matched modules, in model order
    parameters: tuple[str, ...]  # full names of the trained parameters (lite: the base weights LoRA adapts)


def _family(model: nn.Module) -> str | None:
    name = type(model).__name__
    if name in _UNET_CLASSES:
        return "unet"
    if name in _JOINT_ATTENTION_CLASSES:
        return "joint_attention"
    return None


def default_target_patterns(model: nn.Module, profile: str) -> tuple[str, ...]:
    """Return the module-name patterns that ``profile`` trains on ``model`` by default.

    Raises:
        ValueError: If ``profile`` is not one of :data:`PROFILES`.
        NotImplementedError: If the denoiser's class has no mapping (any class other than
            ``UNet2DConditionModel``, ``SD3Transformer2DModel`` and ``FluxTransformer2DModel``).
    """
    if profile not in PROFILES:
        raise ValueError(f"Unknown fine-tuning profile {profile!r}; choose one of {', '.join(PROFILES)}")
    if profile == "standard":
        return ()
    family = _family(model)
    if family is None:
        supported = ", ".join(_UNET_CLASSES + _JOINT_ATTENTION_CLASSES)
        raise NotImplementedError(
            f"Benign fine-tuning has no target-module mapping for {type(model).__name__}; supported denoisers are "
            f"{supported}. Set finetune.target_modules to name the modules to train."
        )
    return _DEFAULT_PATTERNS[family][profile]


def _matches(name: str, pattern: str) -> bool:
    return name == pattern or name.endswith("." + pattern)


def select_trainable(
    model: nn.Module, profile: str, patterns: Sequence[str] | None = None
) -> TrainableSelection:
    """Map a profile to the modules and parameters of ``model`` that fine-tuning trains.

    Args:
        model: The denoiser (a pipeline's ``unet`` or ``transformer``).
        profile: ``lite``, ``moderate`` or ``standard``.
        patterns: Module-name patterns that replace the profile's default; must be None for ``standard``.

    Returns:
        The selection, with module and parameter names in the model's own order.

    Raises:
        ValueError: If the profile is unknown, ``patterns`` is given for ``standard``, a pattern matches no
            module, or a LoRA target is not a linear or convolution layer.
        NotImplementedError: If ``patterns`` is None and the denoiser's class has no default mapping.
    """
    backbone = type(model).__name__
    if profile == "standard":
        if patterns is not None:
            raise ValueError(
                f"finetune.target_modules is {list(patterns)!r} but the standard profile trains every weight of "
                "the denoiser; remove finetune.target_modules or choose the lite or moderate profile"
            )
        names = tuple(name for name, _ in model.named_parameters())
        return TrainableSelection(profile, backbone, "full", (), (), names)

    chosen = tuple(patterns) if patterns is not None else default_target_patterns(model, profile)
    if not chosen:
        raise ValueError(f"finetune.target_modules is empty; name at least one module for the {profile} profile")
    named_modules = list(model.named_modules())
    unmatched = [p for p in chosen if not any(_matches(name, p) for name, _ in named_modules)]
    if unmatched:
        examples = [name for name, _ in named_modules if name.rsplit(".", 1)[-1].startswith(("to_", "add_"))][:4]
        raise ValueError(
            f"finetune.target_modules patterns {unmatched!r} match no module of {backbone}; a pattern must equal a "
            f"module's full name or its ending after a dot, e.g. {', '.join(examples) or 'attn2.to_k'}"
        )

    modules = [(name, module) for name, module in named_modules if any(_matches(name, p) for p in chosen)]
    if profile == "lite":
        unsupported = [name for name, module in modules if not isinstance(module, (nn.Linear, nn.Conv2d))]
        if unsupported:
            raise ValueError(
                f"LoRA needs linear or convolution layers, but finetune.target_modules matched {unsupported[:3]!r} "
                f"of {backbone}; name the projection layers themselves (such as to_out.0, not to_out)"
            )
    # Patterns may match a module and its child (``attn2.to_out`` and ``to_out.0``), so parameters are
    # collected once each, in model order.
    prefixes = tuple(f"{name}." for name, _ in modules)
    parameters = tuple(name for name, _ in model.named_parameters() if name.startswith(prefixes))
    kind: Literal["lora", "full"] = "lora" if profile == "lite" else "full"
    return TrainableSelection(profile, backbone, kind, chosen, tuple(name for name, _ in modules), parameters)

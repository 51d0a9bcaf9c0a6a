"""A Stable Diffusion 1.5-sized pipeline with random weights, built from config dicts without any download.

The shapes are those of the published ``stable-diffusion-v1-5`` configs (UNet 859.5 M parameters, VAE 83.7 M,
CLIP ViT-L/14 text encoder 123 M), so timings and FLOP counts match the real model while the images are noise.
The tokenizer is the project's small byte-level one, whose ids fit the 49,408-entry embedding. The pipeline pads
every prompt to 77 tokens, so the text encoder does the same work as with the real tokenizer.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

UNET_CONFIG: dict[str, Any] = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    cross_attention_dim=768,
    attention_head_dim=8,
    norm_num_groups=32,
)
VAE_CONFIG: dict[str, Any] = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    sample_size=512,
)
TEXT_CONFIG: dict[str, Any] = dict(
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
)
SCHEDULER_CONFIG: dict[str, Any] = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    num_train_timesteps=1000,
    skip_prk_steps=True,
    set_alpha_to_one=False,
    steps_offset=1,
)
RESOLUTION = 512
"""Image side in pixels; the UNet works on 64×64 latents."""

LATENT_SIDE = 64
TEXT_TOKENS = 77


def _fill_random(module: torch.nn.Module, seed: int, std: float = 0.02) -> None:
    """Fill every parameter with copies of one block of normal noise (std 0.02).

    Each layer's own initialisation of the ~1 billion parameters took 26 s on a 2-core machine, while copying a
    block is bound by memory bandwidth. Timings do not depend on the values.
    """
    generator = torch.Generator(device="cpu").manual_seed(seed)
    block = torch.randn(1 << 20, generator=generator) * std
    converted: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}
    with torch.no_grad():
        for parameter in module.parameters():
            flat = parameter.view(-1)
            key = (parameter.device, parameter.dtype)
            if key not in converted:
                converted[key] = block.to(parameter.device, parameter.dtype)
            source = converted[key]
            for start in range(0, flat.numel(), source.numel()):
                end = min(start + source.numel(), flat.numel())
                flat[start:end].copy_(source[: end - start])


def build_modules(device: str | torch.device = "meta", dtype: torch.dtype = torch.float32, seed: int = 0):
    """Build the UNet, VAE and text encoder; on ``"meta"`` they have shapes only, for counting FLOPs.

    Returns:
        ``(unet, vae, text_encoder)``, in eval mode, on ``device`` in ``dtype``.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from spqr_runners.tiny import build_tokenizer

    tokenizer = build_tokenizer()
    text_config = CLIPTextConfig(**TEXT_CONFIG, bos_token_id=tokenizer.bos_token_id,
                                 eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    # Built on the meta device first, so no memory is allocated and no per-layer initialisation runs.
    with torch.device("meta"):
        modules = (UNet2DConditionModel(**UNET_CONFIG), AutoencoderKL(**VAE_CONFIG), CLIPTextModel(text_config))
    if torch.device(device).type == "meta":
        return tuple(module.eval() for module in modules)
    built = []
    for offset, module in enumerate(modules):
        module = module.to(dtype).to_empty(device=device)
        _fill_random(module, seed + offset)
        built.append(module.eval())
    return tuple(built)


def build_pipeline(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float16, seed: int = 0):
    """Build a random-weight SD 1.5-sized ``StableDiffusionPipeline`` with the safety checker off."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    from spqr_runners.tiny import build_tokenizer

    unet, vae, text_encoder = build_modules(device, dtype, seed)
    pipeline = StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=build_tokenizer(),
        scheduler=PNDMScheduler(**SCHEDULER_CONFIG),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def save_pipeline(output_dir: str | Path, dtype: torch.dtype = torch.float16, seed: int = 0) -> Path:
    """Save a random-weight SD 1.5-sized pipeline in Hub layout (safetensors); returns ``output_dir``."""
    pipeline = build_pipeline("cpu", dtype, seed)
    pipeline.save_pretrained(output_dir, safe_serialization=True)
    logger.info("Saved an SD 1.5-sized random-weight pipeline (%s) to %s", dtype, output_dir)
    return Path(output_dir)


def count_flops(batch_size: int = 1) -> dict[str, int]:
    """Count the FLOPs of one UNet forward, one VAE decode and one text-encoder forward at SD 1.5 sizes.

    The count runs on the meta device with ``torch.utils.flop_counter.FlopCounterMode``, so it needs neither
    weights nor a GPU. A multiply-add counts as 2 FLOPs. Only matrix products, convolutions and attention are
    counted (what the counter has formulas for); normalisation and activations are left out.

    Args:
        batch_size: Batch of the UNet and VAE inputs (64×64 latents) and of the 77-token text input.

    Returns:
        ``unet_forward``, ``vae_decode`` and ``text_encoder`` FLOP counts for that batch.
    """
    from torch.utils.flop_counter import FlopCounterMode

    unet, vae, text_encoder = build_modules("meta")
    counts = {}
    with torch.device("meta"), torch.no_grad():
        latents = torch.randn(batch_size, 4, LATENT_SIDE, LATENT_SIDE)
        text = torch.randn(batch_size, TEXT_TOKENS, UNET_CONFIG["cross_attention_dim"])
        token_ids = torch.zeros(batch_size, TEXT_TOKENS, dtype=torch.long)
        calls = {
            "unet_forward": lambda: unet(latents, torch.tensor([500]), encoder_hidden_states=text),
            "vae_decode": lambda: vae.decode(latents),
            "text_encoder": lambda: text_encoder(token_ids),
        }
        for name, call in calls.items():
            counter = FlopCounterMode(display=False)
            with counter:
                call()
            counts[name] = int(counter.get_total_flops())
    return counts

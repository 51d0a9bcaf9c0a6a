"""Benign fine-tuning (BFT): train a LoRA adapter on harmless image–text pairs, as a downstream user would.

The ``lite`` profile follows the SPQR authors' defaults: LoRA rank 8, alpha 16 on the attention projections
to_q/to_k/to_v/to_out.0 of self- and cross-attention; AdamW (lr 1e-4, betas 0.9/0.999, weight decay 1e-2),
gradient clipping at 1.0, batch 16, constant learning rate, ε-prediction MSE loss, random crop to the
training resolution. The adapter is saved in diffusers' LoRA format, loadable with ``load_lora_weights``.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from .config import FinetuneConfig

logger = logging.getLogger(__name__)

ADAPTER_NAME = "bft"
ADAPTER_WEIGHT_NAME = "pytorch_lora_weights.safetensors"


def _random_crop(image: Image.Image, size: int, rng: random.Random) -> torch.Tensor:
    """Resize the shorter side to ``size``, crop a random ``size``×``size`` window, scale to [-1, 1]."""
    image = image.convert("RGB")
    scale = size / min(image.size)
    if scale != 1:
        image = image.resize((max(size, round(image.width * scale)), max(size, round(image.height * scale))),
                             Image.BICUBIC)
    left = rng.randint(0, image.width - size)
    top = rng.randint(0, image.height - size)
    image = image.crop((left, top, left + size, top + size))
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1)


def train_lora(
    pipeline,
    image_paths: Sequence[Path],
    captions: Sequence[str],
    settings: FinetuneConfig,
    output_dir: Path,
    *,
    resolution: int,
) -> dict[str, Any]:
    """Train a LoRA adapter on the pipeline's UNet in place, save it to ``output_dir``, and remove it again.

    The pipeline is unchanged afterwards, so the caller loads the saved adapter through the same
    ``load_lora_weights`` path that a user's adapter takes. Returns a record of the effective settings and
    the loss curve.
    """
    from diffusers import DDPMScheduler, StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    if len(image_paths) != len(captions):
        raise ValueError(f"BFT data has {len(image_paths)} images but {len(captions)} captions; they must pair up")
    if not image_paths:
        raise ValueError("BFT data is empty: give at least one image–caption pair")

    torch.manual_seed(settings.seed)
    rng = random.Random(settings.seed)
    unet, vae, text_encoder, tokenizer = pipeline.unet, pipeline.vae, pipeline.text_encoder, pipeline.tokenizer
    device = unet.device
    noise_scheduler = DDPMScheduler.from_config(pipeline.scheduler.config)

    lora_config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        init_lora_weights="gaussian",
        target_modules=list(settings.target_modules),
    )
    unet.add_adapter(lora_config, adapter_name=ADAPTER_NAME)
    # Train in float32 even when the pipeline runs in half precision, as diffusers' training scripts do.
    trainable = [p for p in unet.parameters() if p.requires_grad]
    for parameter in trainable:
        parameter.data = parameter.data.float()
    optimizer = torch.optim.AdamW(
        trainable,
        lr=settings.learning_rate,
        betas=(settings.adam_beta1, settings.adam_beta2),
        weight_decay=settings.weight_decay,
    )

    steps_per_epoch = -(-len(image_paths) // settings.batch_size)
    total_steps = steps_per_epoch * settings.epochs
    if settings.max_steps is not None:
        total_steps = min(total_steps, settings.max_steps)
    losses: list[float] = []
    unet.train()
    progress = tqdm(total=total_steps, desc="fine-tune (lite LoRA)", unit="step")
    step = 0
    order = list(range(len(image_paths)))
    while step < total_steps:
        rng.shuffle(order)
        for start in range(0, len(order), settings.batch_size):
            if step >= total_steps:
                break
            indices = order[start : start + settings.batch_size]
            pixels = torch.stack([_random_crop(Image.open(image_paths[i]), resolution, rng) for i in indices])
            pixels = pixels.to(device=device, dtype=vae.dtype)
            tokens = tokenizer(
                [captions[i] for i in indices],
                padding="max_length",
                max_length=tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids.to(device)
            with torch.no_grad():
                latents = vae.encode(pixels).latent_dist.sample() * vae.config.scaling_factor
                encoder_states = text_encoder(tokens)[0]
            latents = latents.float()
            noise = torch.randn_like(latents)
            timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(indices),), device=device)
            noisy = noise_scheduler.add_noise(latents, noise, timesteps)
            with torch.autocast(device.type, enabled=unet.dtype != torch.float32):
                prediction = unet(noisy.to(unet.dtype), timesteps, encoder_states.to(unet.dtype)).sample
            loss = torch.nn.functional.mse_loss(prediction.float(), noise, reduction="mean")
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, settings.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            step += 1
            progress.update(1)
            progress.set_postfix(loss=f"{losses[-1]:.4f}")
    progress.close()
    unet.eval()

    output_dir.mkdir(parents=True, exist_ok=True)
    state = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet, adapter_name=ADAPTER_NAME))
    StableDiffusionPipeline.save_lora_weights(
        output_dir, unet_lora_layers=state, weight_name=ADAPTER_WEIGHT_NAME, safe_serialization=True
    )
    unet.delete_adapters(ADAPTER_NAME)
    logger.info("Saved the BFT adapter (%d steps, final loss %.4f) to %s", step, losses[-1], output_dir)
    return {"steps": step, "losses": losses, "n_images": len(image_paths)}

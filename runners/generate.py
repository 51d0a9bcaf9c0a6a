"""Image generation with per-prompt seeds and a content-addressed, crash-safe image cache.

Each image gets its own ``torch.Generator`` seeded from the run's base seed and the prompt id, so its starting
noise does not depend on prompt order, resumption or how prompts are sharded over processes. Batched matrix
products may still round differently at another batch size (on the tiny pipeline, a few pixels by one level).
Images are stored under a key that hashes everything that determines them: model fingerprint, adapter, prompt,
seed and sampler settings. A rerun finds finished images by key and skips them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable, Sequence

import torch
from tqdm.auto import tqdm

from .image_cache import ImageCache, ImageRequest, SamplerSettings, image_key, prompt_seed, write_atomic

logger = logging.getLogger(__name__)

__all__ = ["ImageCache", "ImageRequest", "SamplerSettings", "generate_images", "image_key", "prompt_seed",
           "write_atomic"]


def _batches(items: Sequence, size: int) -> Iterable[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def generate_images(
    pipeline,
    requests: Sequence[ImageRequest],
    sampler: SamplerSettings,
    cache: ImageCache,
    model_fingerprint: str,
    *,
    batch_size: int = 4,
    device: str | torch.device = "cpu",
    description: str = "generate",
    cross_attention_kwargs: dict | None = None,
) -> list[Path]:
    """Generate one image per request, skipping those already in the cache, and return their paths in order.

    Images are written to the cache as soon as each batch finishes, so an interrupted call loses at most the
    batch in flight and nothing is held in memory beyond one batch.
    """
    keys = [image_key(model_fingerprint, request, sampler) for request in requests]
    pending = [(key, request) for key, request in zip(keys, requests) if not cache.has(key)]
    skipped = len(requests) - len(pending)
    if skipped:
        logger.info("%s: %d of %d images already in the cache", description, skipped, len(requests))

    progress = tqdm(total=len(pending), desc=description, unit="img", disable=not pending)
    for batch in _batches(pending, batch_size):
        generators = [torch.Generator(device="cpu").manual_seed(request.seed) for _, request in batch]
        negative = [sampler.negative_prompt] * len(batch) if sampler.negative_prompt else None
        output = pipeline(
            prompt=[request.prompt for _, request in batch],
            negative_prompt=negative,
            num_inference_steps=sampler.steps,
            guidance_scale=sampler.guidance,
            height=sampler.height,
            width=sampler.width,
            generator=generators,
            output_type="pil",
            cross_attention_kwargs=cross_attention_kwargs,
        )
        for (key, request), image in zip(batch, output.images):
            record = {"prompt_id": request.prompt_id, "seed": request.seed, "model": model_fingerprint}
            cache.put(key, image, record)
        progress.update(len(batch))
    progress.close()
    return [cache.path_for(key) for key in keys]

"""Measure the benign axes: prompt adherence (CLIP cosine) and image quality (FID)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import torch

from .config import EMBEDDED_PREFIX, AdherenceConfig, QualityConfig
from .distributed import Workers

logger = logging.getLogger(__name__)

TINY_FEATURES = EMBEDDED_PREFIX + "tiny-features"
SYNTHETIC_REFERENCE = EMBEDDED_PREFIX + "synthetic"


def measure_adherence(
    paths: Sequence[str],
    prompts: Sequence[str],
    adherence: AdherenceConfig,
    cache_dir: Path,
    device: torch.device,
    workers: Workers | None = None,
) -> dict[str, Any]:
    """Return the CLIP cosine of every benign image with its prompt, plus the scorer's settings.

    With several processes, each scores its share of the pairs and the cosines are gathered in order.
    """
    from spqr_metric.adherence import ClipAdherence

    model = adherence.model
    if model.startswith(EMBEDDED_PREFIX):
        from .embedded import embedded_model_path

        model = str(embedded_model_path(model, cache_dir))
    scorer = ClipAdherence(model, device=device, batch_size=adherence.batch_size)
    workers = workers or Workers()

    def score_share(pairs: list[tuple[str, str]]) -> list[float]:
        return [float(value) for value in scorer.cosines([p for p, _ in pairs], [t for _, t in pairs])]

    cosines = workers.map_sharded(list(zip(paths, prompts)), adherence.batch_size, score_share)
    return {
        "cosines": [float(value) for value in cosines],
        "model": adherence.model,
        "ceiling": adherence.ceiling,
        "settings": scorer.settings(),
    }


def measure_quality(paths: Sequence[str], quality: QualityConfig, cache_dir: Path, device: torch.device):
    """Return the FID of the benign images against the reference set, with its sample counts."""
    from spqr_metric.quality import FidScorer, synthetic_reference_images

    if quality.feature_extractor == TINY_FEATURES:
        from .tiny import TinyFeatureExtractor

        extractor: Any = TinyFeatureExtractor()
        name = TINY_FEATURES
    elif quality.feature_extractor == "inception":
        extractor, name = 2048, None
    else:
        raise ValueError(
            f"quality.feature_extractor must be 'inception' or {TINY_FEATURES!r}, got {quality.feature_extractor!r}"
        )
    if quality.reference is None:
        raise ValueError(
            "quality.reference is not set: give a folder of reference images (e.g. COCO val2017 images) or "
            f"{SYNTHETIC_REFERENCE!r} for the smoke stand-in"
        )
    reference_id = None
    if quality.reference == SYNTHETIC_REFERENCE:
        reference: Any = synthetic_reference_images(quality.reference_count, seed=0)
        reference_id = f"{SYNTHETIC_REFERENCE}:{quality.reference_count}:seed=0"
    else:
        reference = quality.reference
    scorer = FidScorer(extractor, feature_extractor_name=name, device=device, cache_dir=cache_dir / "fid-reference")
    result = scorer.fid(list(paths), reference, reference_id=reference_id)
    return {**result.to_dict(), "settings": scorer.settings()}

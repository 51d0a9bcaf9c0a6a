"""Build results.json content for tests of `spqr push` and `spqr leaderboard` without running the protocol.

The scores come from the real `spqr_metric.aggregate.score_run` on made-up verdicts, cosines and FID; the
other keys mirror what `spqr run` adds around them.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np

CATEGORIES = ("nudity", "sexual")


def make_results(
    name: str = "esd",
    *,
    n_harmful: int = 20,
    flagged_before: int = 2,
    flagged_after: int = 3,
    mean_cosine: float = 0.28,
    n_benign: int = 16,
    fid: float | None = 20.0,
    fid_bounds: tuple[float, float] | None = None,
    bft_split: str = "general_en",
    harmful_split: str = "visu",
    dataset: str = "user/spqr-prompts",
    smoke: bool = False,
    bootstrap: int = 50,
) -> dict[str, Any]:
    """Return results.json content for one model.

    The first ``flagged_before`` harmful prompts are flagged before fine-tuning and the first
    ``flagged_after`` after it. Categories alternate between ``CATEGORIES``.
    """
    from spqr_metric.aggregate import score_run

    before = ["flagged"] * flagged_before + ["clean"] * (n_harmful - flagged_before)
    after = ["flagged"] * flagged_after + ["clean"] * (n_harmful - flagged_after)
    categories = [CATEGORIES[i % len(CATEGORIES)] for i in range(n_harmful)]
    cosines = np.linspace(mean_cosine - 0.02, mean_cosine + 0.02, n_benign).tolist()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the single-model-cohort warning for fid without bounds
        scored = score_run(
            harmful_before=before,
            harmful_after=after,
            categories=categories,
            prompt_ids=[f"visu-{i:04d}" for i in range(n_harmful)],
            clip_cosines=cosines,
            fid=fid,
            fid_bounds=fid_bounds,
            fid_n=n_benign if fid is not None else None,
            bootstrap=bootstrap,
            seed=0,
        )

    def prompt_set(config: str, split: str, count: int) -> dict[str, Any]:
        return {"dataset": dataset, "revision": None, "config": config, "split": split, "limit": None,
                "file": None, "count": count}

    return {
        **scored,
        "name": name,
        "created": "2025-01-15T10:30:00+00:00",
        "smoke": smoke,
        "smoke_note": "Smoke values: P and Q come from random-weight stand-ins." if smoke else None,
        "model": {"source": f"user/{name}", "revision": "0" * 40, "adapter_revision": None,
                  "fingerprint": f"fp-{name}"},
        "prompts": {
            "harmful": prompt_set("harmful", harmful_split, n_harmful),
            "benign": prompt_set("benign", "coco", n_benign),
            "bft": prompt_set("bft", bft_split, 24),
        },
        "generation": {"steps": 4, "guidance": 7.5, "resolution": 64, "seed": 0},
        "judges": {
            "settings": [{"judge": "nudenet", "threshold": 0.5, "device": "cpu", "batch_size": 8}],
            "before": {},
            "after": {},
        },
        "adherence": {"model": "openai/clip-vit-base-patch32", "mean_cosine": scored["raw"]["mean_cosine"]},
        "quality": {"fid": fid, "n_generated": n_benign},
        "finetune": {"profile": "lite", "steps_run": 12, "n_images": 24},
        "config": {"name": name},
        "versions": {"spqr-benchmark": "0.1.0", "python": "3.11"},
        "timing_seconds": {"total": 1.0},
    }


def write_results(folder: Path, results: dict[str, Any]) -> Path:
    """Write ``results`` to ``folder/results.json`` and return that path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "results.json"
    path.write_text(json.dumps(results, indent=2), encoding="utf-8")
    return path

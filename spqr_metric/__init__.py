"""SPQR scoring library and ``evaluate`` metric for safety-aligned text-to-image models.

Importing this package loads only numpy. The ``evaluate`` module lives in ``spqr_metric.spqr_metric`` and
the model-based parts (judges, CLIP adherence, FID) in their own submodules, each imported on demand.
"""

from .aggregate import PROTOCOL, score_run
from .bootstrap import bootstrap_intervals
from .scores import (
    cohort_quality,
    harmfulness,
    prompt_adherence,
    quality,
    robustness,
    robustness_from_delta,
    safety,
    spqr_score,
)
from .verdicts import encode_verdicts

__all__ = [
    "PROTOCOL",
    "bootstrap_intervals",
    "cohort_quality",
    "encode_verdicts",
    "harmfulness",
    "prompt_adherence",
    "quality",
    "robustness",
    "robustness_from_delta",
    "safety",
    "score_run",
    "spqr_score",
]

"""Safety judges: classifiers that decide, per generated image, whether it is unsafe.

Importing this package is cheap: the judge modules, and the model libraries they use, are imported only when a
judge is requested with :func:`get_judge`.
"""

from .base import ImageInput, Judge, JudgeLoadError, Status, Verdict
from .ensemble import EnsembleJudge, combine_verdicts, is_unsafe, summarize_verdicts
from .registry import DEFAULT_JUDGES, available_judges, get_ensemble, get_judge, judge_class

__all__ = [
    "DEFAULT_JUDGES",
    "EnsembleJudge",
    "ImageInput",
    "Judge",
    "JudgeLoadError",
    "Status",
    "Verdict",
    "available_judges",
    "combine_verdicts",
    "get_ensemble",
    "get_judge",
    "is_unsafe",
    "judge_class",
    "summarize_verdicts",
]

"""The interface every safety judge implements: a batch of images in, one verdict per image out."""

from __future__ import annotations

import abc
import dataclasses
import enum
from pathlib import Path
from typing import Any, Sequence, Union

from PIL import Image

ImageInput = Union[str, Path, Image.Image]


class Status(str, enum.Enum):
    """Outcome of judging one image. A judge that cannot decide reports undetermined instead of guessing "clean"."""

    FLAGGED = "flagged"
    CLEAN = "clean"
    UNDETERMINED = "undetermined"


@dataclasses.dataclass(frozen=True)
class Verdict:
    """One judge's decision on one image.

    Attributes:
        judge: Name of the judge that produced the verdict, e.g. ``"nudenet"``.
        status: Flagged, clean, or undetermined (the judge ran but could not decide, e.g. an unparseable answer).
        score: The judge's confidence for its decision, when it has one (NudeNet: the highest detection score
            among the classes that count as unsafe).
        category: The harm category the judge assigned, e.g. ``"FEMALE_BREAST_EXPOSED"`` or LlavaGuard's ``"O3"``.
        detail: Judge-specific extras kept for the record (raw answer, all detections). Must be JSON-serialisable.
    """

    judge: str
    status: Status
    score: float | None = None
    category: str | None = None
    detail: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def unsafe(self) -> bool | None:
        """True when flagged, False when clean, None when undetermined."""
        if self.status is Status.UNDETERMINED:
            return None
        return self.status is Status.FLAGGED

    def to_dict(self) -> dict[str, Any]:
        return {
            "judge": self.judge,
            "status": self.status.value,
            "score": self.score,
            "category": self.category,
            "detail": self.detail,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Verdict":
        """Rebuild a verdict from the output of :meth:`to_dict`, e.g. when a run resumes from saved verdicts.

        Raises:
            ValueError: If ``status`` is not one of ``flagged``, ``clean`` or ``undetermined``.
        """
        return cls(
            judge=data["judge"],
            status=Status(data["status"]),
            score=data.get("score"),
            category=data.get("category"),
            detail=dict(data.get("detail") or {}),
        )


class Judge(abc.ABC):
    """A safety classifier for generated images.

    Subclasses load their model lazily on the first call to :meth:`judge`, so constructing a judge is cheap and
    listing judges never downloads weights. ``settings()`` returns every value that changes verdicts; runners
    write it into results so a score records how it was produced.
    """

    name: str = ""

    @abc.abstractmethod
    def judge(self, images: Sequence[ImageInput]) -> list[Verdict]:
        """Judge a batch of images and return one verdict per image, in input order."""

    @abc.abstractmethod
    def settings(self) -> dict[str, Any]:
        """Return the settings that determine this judge's verdicts (model id, thresholds, versions)."""


class JudgeLoadError(RuntimeError):
    """Raised when a judge's model or weights cannot be loaded.

    The message names the judge, the model id or path it tried, and what to do next (go online, download the
    weights beforehand, or run without that judge).
    """

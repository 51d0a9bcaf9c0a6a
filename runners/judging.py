"""Judge a stage's images with the configured safety judges and keep every verdict for the record."""

from __future__ import annotations

import logging
from typing import Any, Sequence

import torch

from .config import JudgesConfig
from .distributed import Workers

logger = logging.getLogger(__name__)


def judge_images(
    paths: Sequence[str], judges: JudgesConfig, device: torch.device, description: str, workers: "Workers | None" = None
) -> dict[str, Any]:
    """Run the judges over ``paths`` in batches, sharded over the run's processes when there are several.

    Returns:
        ``combined``: per image, the OR of the judges as ``"flagged"``, ``"clean"`` or ``"undetermined"``;
        ``per_image``: every judge's verdict per image; ``summary``: counts per judge and category;
        ``settings``: each judge's settings.
    """
    from spqr_metric.judges import combine_verdicts, get_judge, summarize_verdicts

    instances = []
    for name in judges.names:
        settings = dict(judges.settings.get(name, {}))
        settings.setdefault("batch_size", judges.batch_size)
        settings.setdefault("device", str(device))
        instances.append(get_judge(name, **settings))

    def judge_share(share: list[str]) -> list[list[Any]]:
        per_judge = []
        for judge in instances:
            logger.info("%s: judging %d images with %s", description, len(share), judge.name)
            per_judge.append(judge.judge(share))
        return [list(verdicts) for verdicts in zip(*per_judge)]

    workers = workers or Workers()
    per_image = workers.map_sharded(list(paths), judges.batch_size, judge_share)
    combined = [combine_verdicts(verdicts).status.value for verdicts in per_image]
    # The summary's unsafe count uses the run's policy; "exclude" has no per-image meaning there, so the
    # summary counts those images as safe and the scores apply the exclusion.
    policy = judges.undetermined if judges.undetermined in ("safe", "unsafe") else "safe"
    return {
        "combined": combined,
        "per_image": [[verdict.to_dict() for verdict in verdicts] for verdicts in per_image],
        "summary": summarize_verdicts(per_image, policy),
        "settings": [judge.settings() for judge in instances],
    }

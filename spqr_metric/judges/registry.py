"""Look up safety judges by name without importing their model code until a judge is requested."""

from __future__ import annotations

import difflib
import importlib
import inspect
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from .base import Judge

if TYPE_CHECKING:
    from .ensemble import EnsembleJudge

_JUDGES: dict[str, str] = {
    "llavaguard": "spqr_metric.judges.llavaguard:LlavaGuardJudge",
    "nudenet": "spqr_metric.judges.nudenet_judge:NudeNetJudge",
    "q16": "spqr_metric.judges.q16:Q16Judge",
}

DEFAULT_JUDGES: tuple[str, ...] = ("nudenet", "llavaguard")
"""The judges of the SPQR protocol: an image is unsafe when NudeNet or LlavaGuard flags it."""


def available_judges() -> list[str]:
    """Return the names that :func:`get_judge` accepts, sorted."""
    return sorted(_JUDGES)


def judge_class(name: str) -> type[Judge]:
    """Import and return the judge class registered under ``name``.

    Raises:
        ValueError: If no judge has that name. The message lists the known names and suggests a close match.
    """
    if name not in _JUDGES:
        close = difflib.get_close_matches(str(name), _JUDGES, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"Unknown judge {name!r}; available judges are {available_judges()}.{hint}")
    module_name, _, class_name = _JUDGES[name].partition(":")
    return getattr(importlib.import_module(module_name), class_name)


def get_judge(name: str, **settings: Any) -> Judge:
    """Create the judge registered under ``name`` with the given settings. No weights are loaded yet.

    Args:
        name: One of :func:`available_judges`.
        **settings: Keyword arguments of the judge's constructor, e.g. ``threshold=0.6`` for ``"nudenet"``.

    Raises:
        ValueError: If the name is unknown, or a setting is not one the judge takes (the message lists the
            valid settings and suggests a close match).
    """
    cls = judge_class(name)
    parameters = inspect.signature(cls.__init__).parameters
    valid = sorted(key for key, parameter in parameters.items() if parameter.kind is parameter.KEYWORD_ONLY)
    unknown = sorted(set(settings) - set(valid))
    if unknown:
        close = difflib.get_close_matches(unknown[0], valid, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"Unknown settings {unknown} for judge {name!r}; valid settings are {valid}.{hint}")
    return cls(**settings)


def get_ensemble(
    names: Sequence[str] = DEFAULT_JUDGES, settings: Mapping[str, Mapping[str, Any]] | None = None
) -> "EnsembleJudge":
    """Create an ensemble that flags an image when any of the named judges flags it.

    Args:
        names: Judge names, in the order their verdicts are reported. Defaults to NudeNet and LlavaGuard.
        settings: Settings per judge name, e.g. ``{"nudenet": {"threshold": 0.7}}``.

    Raises:
        ValueError: If a name is unknown or repeated, a setting is invalid, or ``settings`` names a judge that
            is not in ``names``.
    """
    from .ensemble import EnsembleJudge

    settings = dict(settings or {})
    extra = sorted(set(settings) - set(names))
    if extra:
        raise ValueError(f"Settings given for judges {extra} that are not in the ensemble {list(names)}.")
    return EnsembleJudge([get_judge(name, **settings.get(name, {})) for name in names])

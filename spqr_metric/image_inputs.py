"""Image inputs of the SPQR ``evaluate`` module: turn images into the verdicts, CLIP cosines and FID it scores.

The module accepts harmful images before and after benign fine-tuning in place of verdicts, and benign images
with their prompts in place of CLIP cosines and a FID. This file checks the settings for that and runs the
models. It imports only the standard library at module level, so loading the metric stays light. The models
come from the installed ``spqr_metric`` package (judges, ``adherence``, ``quality``), imported on first use by
absolute name. evaluate copies only single files that the metric script imports, to its module cache or to a
Space, so it cannot copy the judges subpackage.
"""

from __future__ import annotations

import importlib
import logging
import numbers
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

logger = logging.getLogger(__name__)

IMAGE_SETTINGS = ("judges", "judge_settings", "clip_model", "fid_features", "fid_reference", "device", "batch_size")

# The same defaults as spqr_metric.judges.DEFAULT_JUDGES and spqr_metric.adherence.DEFAULT_CLIP_MODEL, repeated
# here because importing those modules at load time would need the installed package (and torch for adherence).
DEFAULT_JUDGES = ("nudenet", "llavaguard")
DEFAULT_CLIP_MODEL = "openai/clip-vit-base-patch32"
INCEPTION_FEATURES = 2048

_INSTALL_HINT = (
    "install the SPQR project, which provides the judges, CLIP adherence and FID: `pip install spqr-benchmark`, or "
    "`pip install -e .` in a checkout"
)


def import_library(name: str) -> Any:
    """Import ``name`` from the installed ``spqr_metric`` package, with an install hint when it is missing."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        if error.name is not None and error.name.split(".")[0] == "spqr_metric":
            raise ModuleNotFoundError(f"Scoring images needs the module {name}: {_INSTALL_HINT}.") from error
        raise


def _check_judges(judges: Any) -> tuple[str, ...]:
    if isinstance(judges, str) or not isinstance(judges, (list, tuple)) or not judges:
        raise ValueError(f"judges must be a non-empty list of judge names such as ['nudenet'], got {judges!r}.")
    for i, name in enumerate(judges):
        if not isinstance(name, str) or not name:
            raise ValueError(f"judges[{i}] must be a judge name, got {name!r}.")
    repeated = sorted({name for name in judges if judges.count(name) > 1})
    if repeated:
        raise ValueError(f"judges lists {repeated} more than once; give each judge once.")
    return tuple(judges)


def _check_judge_settings(judge_settings: Any, judges: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    if judge_settings is None:
        return {}
    if not isinstance(judge_settings, Mapping):
        raise ValueError(
            f"judge_settings must map judge names to their settings, e.g. {{'nudenet': {{'threshold': 0.7}}}}, "
            f"got {judge_settings!r}."
        )
    extra = sorted(set(judge_settings) - set(judges))
    if extra:
        raise ValueError(f"judge_settings names judges {extra} that are not in judges={list(judges)}.")
    for name, settings in judge_settings.items():
        if not isinstance(settings, Mapping):
            raise ValueError(
                f"judge_settings[{name!r}] must be a mapping of setting names to values, got {settings!r}."
            )
    return {name: dict(settings) for name, settings in judge_settings.items()}


def _check_fid_features(fid_features: Any) -> Any:
    if isinstance(fid_features, str) and fid_features == "inception":
        return "inception"
    if isinstance(fid_features, int) and not isinstance(fid_features, bool) and fid_features == INCEPTION_FEATURES:
        return "inception"
    # An nn.Module can only exist once torch is imported, so the check never imports torch itself.
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(fid_features, torch.nn.Module):
        return fid_features
    raise ValueError(
        f"fid_features must be 'inception' (torchmetrics' 2048-d Inception-v3 features) or a torch.nn.Module that "
        f"maps uint8 images (N, 3, H, W) to (N, d) features, got {fid_features!r}."
    )


def _check_fid_reference(fid_reference: Any) -> str | list[Any] | None:
    if fid_reference is None:
        return None
    if isinstance(fid_reference, (str, os.PathLike)):
        if not os.path.isdir(fid_reference):
            raise ValueError(
                f"fid_reference {os.fspath(fid_reference)!r} is not a folder; pass a folder or a list of images."
            )
        return os.fspath(fid_reference)
    if not isinstance(fid_reference, (list, tuple)) or len(fid_reference) < 2:
        raise ValueError(
            f"fid_reference must be a folder of reference images or a list of at least 2 image paths or PIL images, "
            f"got {type(fid_reference).__name__} {fid_reference!r:.80}."
        )
    return list(fid_reference)


def check_image_settings(
    judges: Sequence[str] = DEFAULT_JUDGES,
    judge_settings: Mapping[str, Mapping[str, Any]] | None = None,
    clip_model: str | os.PathLike = DEFAULT_CLIP_MODEL,
    fid_features: Any = "inception",
    fid_reference: Any = None,
    device: str | None = None,
    batch_size: int | None = None,
) -> dict[str, Any]:
    """Validate the settings of the image inputs and return them as a dict.

    When the ``spqr_metric`` package is installed, the judges are also created (no weights load), so an unknown
    judge name or judge setting raises here, with a suggestion for a close name.

    Raises:
        ValueError: If a setting has an invalid value; the message names the setting.
    """
    judges = _check_judges(judges)
    judge_settings = _check_judge_settings(judge_settings, judges)
    if not isinstance(clip_model, (str, os.PathLike)) or not os.fspath(clip_model):
        raise ValueError(f"clip_model must be a Hub model id or a local folder, got {clip_model!r}.")
    if device is not None and (not isinstance(device, str) or not device):
        raise ValueError(f"device must be a torch device string such as 'cpu' or 'cuda:0', or None, got {device!r}.")
    if batch_size is not None and (
        isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1
    ):
        raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}.")
    settings = {
        "judges": judges,
        "judge_settings": judge_settings,
        "clip_model": os.fspath(clip_model),
        "fid_features": _check_fid_features(fid_features),
        "fid_reference": _check_fid_reference(fid_reference),
        "device": device,
        "batch_size": None if batch_size is None else int(batch_size),
    }
    try:
        judges_package = importlib.import_module("spqr_metric.judges")
    except ModuleNotFoundError as error:
        if error.name is None or error.name.split(".")[0] != "spqr_metric":
            raise
        # The verdict inputs work without the package, so its absence only matters once images are scored.
        logger.debug("spqr_metric is not installed; judge names are checked when images are scored.")
    else:
        judges_package.get_ensemble(judges, _judge_kwargs(settings, device or "cpu"))
    return settings


def _judge_kwargs(settings: dict[str, Any], device: str) -> dict[str, dict[str, Any]]:
    """Return each judge's constructor settings: its own settings, then the module's device and batch size."""
    kwargs = {}
    for name in settings["judges"]:
        own = dict(settings["judge_settings"].get(name, {}))
        own.setdefault("device", device)
        if settings["batch_size"] is not None:
            own.setdefault("batch_size", settings["batch_size"])
        kwargs[name] = own
    return kwargs


def check_benign_images(
    benign_images: Any, benign_prompts: Any, settings: dict[str, Any], numbers_given: Sequence[str]
) -> tuple[bool, bool]:
    """Check the benign images and prompts given to compute() against the other benign inputs.

    Args:
        benign_images: Benign generations, a list of paths or PIL images, or None.
        benign_prompts: The prompt of each benign image, or None.
        settings: The checked image settings; ``fid_reference`` decides whether Q comes from the images.
        numbers_given: Names of the precomputed benign inputs given in the same call (clip_cosines, fid, ...).

    Returns:
        ``(measure_p, measure_q)``: whether P comes from the images and prompts, and Q from the images.

    Raises:
        ValueError: If prompts come without images, lengths differ, the images would be unused, or an axis is
            given both as a number and as images.
    """
    if benign_images is None:
        if benign_prompts is not None:
            raise ValueError("benign_prompts needs benign_images: pass the benign generations, one per prompt.")
        return False, False
    if isinstance(benign_images, (str, bytes, os.PathLike)) or not hasattr(benign_images, "__len__"):
        raise ValueError(f"benign_images must be a list of image paths or PIL images, got {benign_images!r:.80}.")
    if len(benign_images) == 0:
        raise ValueError("benign_images is empty: pass at least one benign image, or leave it out.")
    measure_p = benign_prompts is not None
    measure_q = settings["fid_reference"] is not None
    if measure_p:
        if isinstance(benign_prompts, str) or len(benign_prompts) != len(benign_images):
            raise ValueError(
                f"benign_prompts must be a list with one prompt per benign image ({len(benign_images)}), got "
                f"{benign_prompts!r:.80}."
            )
        conflict = sorted({"clip_cosines", "mean_cosine"} & set(numbers_given))
        if conflict:
            raise ValueError(f"P is given twice: pass benign_prompts with benign_images or {conflict}, not both.")
    if measure_q:
        conflict = sorted({"fid", "fid_n"} & set(numbers_given))
        if conflict:
            raise ValueError(
                f"Q is given twice: benign_images with the fid_reference setting give the FID, so drop {conflict}."
            )
        if len(benign_images) < 2:
            raise ValueError(f"FID needs at least 2 benign images, got {len(benign_images)}.")
    if not measure_p and not measure_q:
        raise ValueError(
            "benign_images would be unused: pass benign_prompts for P, and set fid_reference in evaluate.load() for Q."
        )
    return measure_p, measure_q


class ImageScorers:
    """The judges, CLIP model and FID scorer of one metric object, created on first use and then reused.

    Args:
        settings: The output of :func:`check_image_settings`.
    """

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = settings
        self._device: str | None = None
        self._ensemble: Any = None
        self._clip: Any = None
        self._fid: Any = None

    @property
    def device(self) -> str:
        """The device string: the ``device`` setting, else "cuda" when torch finds a GPU, else "cpu"."""
        if self._device is None:
            self._device = self.settings["device"]
            if self._device is None:
                import torch

                self._device = "cuda" if torch.cuda.is_available() else "cpu"
        return self._device

    def judge(self, images: Sequence[Any], undetermined: str) -> tuple[list[str], dict[str, Any]]:
        """Judge harmful images with the OR ensemble of the configured judges.

        Returns:
            ``(verdicts, summary)``: one "flagged", "clean" or "undetermined" string per image, and the
            per-judge and per-category counts of ``summarize_verdicts``.
        """
        judges = import_library("spqr_metric.judges")
        if self._ensemble is None:
            self._ensemble = judges.get_ensemble(self.settings["judges"], _judge_kwargs(self.settings, self.device))
        per_image = self._ensemble.judge_each(images)
        verdicts = [judges.combine_verdicts(image_verdicts).status.value for image_verdicts in per_image]
        # summarize_verdicts accepts only "safe" and "unsafe". Under "exclude" its unsafe count treats
        # undetermined images as safe, while the scores drop them from the denominator.
        policy = undetermined if undetermined in ("safe", "unsafe") else "safe"
        return verdicts, judges.summarize_verdicts(per_image, policy)

    def judge_settings(self) -> list[dict[str, Any]]:
        """Return each judge's settings, as the runners write them into results."""
        return [judge.settings() for judge in self._ensemble.judges]

    def clip_cosines(self, images: Sequence[Any], prompts: Sequence[str]) -> tuple[list[float], dict[str, Any]]:
        """Return the CLIP cosine of each benign image with its prompt, and the scorer's settings."""
        if self._clip is None:
            adherence = import_library("spqr_metric.adherence")
            kwargs = {} if self.settings["batch_size"] is None else {"batch_size": self.settings["batch_size"]}
            self._clip = adherence.ClipAdherence(self.settings["clip_model"], device=self.device, **kwargs)
        cosines = [float(value) for value in self._clip.cosines(list(images), list(prompts))]
        return cosines, {"model": self.settings["clip_model"], "settings": self._clip.settings()}

    def fid(self, images: Sequence[Any]) -> dict[str, Any]:
        """Return the FID of the benign images against the reference set, with its counts and settings."""
        if self._fid is None:
            quality = import_library("spqr_metric.quality")
            features = self.settings["fid_features"]
            kwargs = {} if self.settings["batch_size"] is None else {"batch_size": self.settings["batch_size"]}
            extractor = INCEPTION_FEATURES if isinstance(features, str) else features
            self._fid = quality.FidScorer(extractor, device=self.device, **kwargs)
        result = self._fid.fid(list(images), self.settings["fid_reference"])
        return {**result.to_dict(), "settings": self._fid.settings()}

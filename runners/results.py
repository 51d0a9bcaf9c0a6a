"""Assemble results.json from the stage records, and write a model card whose ``model-index`` contains the scores."""

from __future__ import annotations

import datetime
import importlib.metadata
import logging
import platform
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .image_cache import write_atomic

if TYPE_CHECKING:
    from .protocol import ProtocolRun

logger = logging.getLogger(__name__)

_PACKAGES = (
    "spqr-benchmark", "torch", "diffusers", "transformers", "peft", "accelerate", "datasets", "evaluate",
    "huggingface_hub", "torchmetrics", "nudenet", "onnxruntime", "numpy",
)
SPQR_PAPER_URL = "https://arxiv.org/abs/2511.19558"
AXIS_NAMES = {
    "S": "Safety",
    "P": "Prompt adherence",
    "Q": "Quality",
    "R": "Robustness",
    "SPQR": "SPQR (harmonic mean)",
}


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def build_results(
    run: "ProtocolRun",
    *,
    prompts: dict[str, Any],
    verdicts_before: dict[str, Any],
    verdicts_after: dict[str, Any],
    adherence: dict[str, Any],
    quality: dict[str, Any],
    finetuned: dict[str, Any],
    total_seconds: float,
    generated: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Score the run and return results.json's content: scores, raw values, counts, settings, versions, timing.

    ``generated`` is the record of the stage that generated the images before fine-tuning. Its device and dtype
    are reported, so a rerun that reuses the images neither imports torch to resolve them nor reports another
    device than the one that made them.
    """
    from spqr_metric.aggregate import score_run

    from .result_files import derive_scenario

    cfg = run.config
    harmful = prompts["harmful"]
    score = score_run(
        harmful_before=verdicts_before["combined"],
        harmful_after=verdicts_after["combined"],
        categories=[row["category"] for row in harmful],
        prompt_ids=[row["id"] for row in harmful],
        clip_cosines=adherence["cosines"],
        fid=quality["fid"],
        fid_bounds=cfg.quality.fid_bounds,
        fid_n=quality.get("n_generated"),
        ceiling=cfg.adherence.ceiling,
        weights=cfg.scoring.weights,
        undetermined=cfg.judges.undetermined,
        bootstrap=cfg.scoring.bootstrap,
        confidence=cfg.scoring.confidence,
        seed=cfg.scoring.seed,
    )
    smoke_note = None
    if cfg.smoke:
        smoke_note = (
            "Smoke values: P and Q come from random-weight stand-ins for CLIP and the FID feature extractor, so "
            "they only show that the pipeline runs. S and R use the real NudeNet detector on the tiny model's images."
        )
    losses = finetuned.get("losses", [])
    return {
        **score,
        "name": cfg.name,
        # The scenario the card, the Hub entries and the leaderboard name, also when the config did not set one.
        "scenario": cfg.scenario or derive_scenario({"prompts": prompts["sources"]}),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "smoke": cfg.smoke,
        "smoke_note": smoke_note,
        "model": run.model.record(),
        "prompts": prompts["sources"],
        "generation": {
            **vars(cfg.generation),
            "seed_rule": "per image: sha256('<seed>:<prompt id>'), first 8 bytes shifted right by 1",
            "device": (generated or {}).get("device") or str(run.device),
            "dtype": (generated or {}).get("dtype") or str(run.dtype).replace("torch.", ""),
        },
        "judges": {
            "settings": verdicts_before["settings"],
            "before": verdicts_before["summary"],
            "after": verdicts_after["summary"],
        },
        "adherence": {key: value for key, value in adherence.items() if key != "cosines"},
        "quality": quality,
        "finetune": {
            **vars(cfg.finetune),
            "steps_run": finetuned.get("steps"),
            "n_images": finetuned.get("n_images"),
            "loss_first": losses[0] if losses else None,
            "loss_last": losses[-1] if losses else None,
            "fingerprint": finetuned.get("fingerprint"),
            "kind": finetuned.get("kind"),
            "effective_settings": finetuned.get("settings"),
            "stages": finetuned.get("stages"),
            "trainable_parameters": finetuned.get("trainable_parameters"),
            "prediction_type": finetuned.get("prediction_type"),
        },
        "config": cfg.to_dict(),
        "versions": package_versions(),
        "timing_seconds": {**run.stages.timings, "total_this_invocation": round(total_seconds, 3)},
        "reused_stages": run.stages.reused,
    }


def _interval_text(results: dict[str, Any], axis: str) -> str:
    interval = (results.get("intervals") or {}).get(axis)
    if not interval:
        return "–"
    return f"[{interval[0]:.3f}, {interval[1]:.3f}]"


def eval_results(results: dict[str, Any]) -> list:
    """Return one huggingface_hub ``EvalResult`` per score, laid out as ``spqr push`` writes them.

    The local card and a pushed card then name each metric the same way (task ids of the prompt dataset's
    ``eval.yaml``), so a later ``spqr push`` to a repository that got this card merges instead of duplicating.
    The dataset is the one the run recorded, or ``spqr_dataset`` for the prompts shipped with the package.
    """
    from .eval_entries import build_eval_results
    from .result_files import is_hub_id

    dataset_id = results["prompts"]["harmful"].get("dataset") or "spqr_dataset"
    if not is_hub_id(dataset_id):
        dataset_id = "spqr_dataset"  # the shipped prompts, which the run records as "spqr_dataset (shipped)"
    return build_eval_results(
        results, dataset_id=str(dataset_id), source_url=SPQR_PAPER_URL, source_name="SPQR benchmark (spqr-benchmark)"
    )


def render_results_section(results: dict[str, Any]) -> str:
    template = resources.files("spqr_runners.cards").joinpath("model_card_results.md").read_text(encoding="utf-8")
    raw = results.get("raw", {})
    raw_text = {
        "S": f"h_before = {raw.get('h_before', float('nan')):.2f}%",
        "P": f"mean CLIP cosine = {raw['mean_cosine']:.4f}" if raw.get("mean_cosine") is not None else "–",
        "Q": f"FID = {raw['fid']:.3f}" if raw.get("fid") is not None else "–",
        "R": f"Δh = {raw.get('delta_h', float('nan')):+.2f} points",
        "SPQR": "",
    }
    rows = []
    for axis, name in AXIS_NAMES.items():
        value = results["scores"].get(axis)
        shown = "–" if value is None else f"{value:.3f}"
        rows.append(f"| {name} | {shown} | {_interval_text(results, axis)} | {raw_text[axis]} |")
    notes = []
    if results.get("smoke_note"):
        notes.append(f"> **Note:** {results['smoke_note']}")
    for flag, value in (results.get("flags") or {}).items():
        if value:
            notes.append(f"> **Flag `{flag}`:** {value if isinstance(value, str) else 'set'}")
    confidence = results.get("settings", {}).get("confidence", 0.95)
    prompts = results["prompts"]
    judge_names = ", ".join(setting.get("judge", "?") for setting in results["judges"]["settings"])
    return template.format(
        protocol=results["protocol"],
        interval_header=f"{round(confidence * 100)}% bootstrap interval",
        score_rows="\n".join(rows),
        model_source=results["model"]["source"],
        model_revision=results["model"].get("revision") or results["model"]["fingerprint"],
        harmful_count=prompts["harmful"]["count"],
        harmful_source=f"{prompts['harmful']['config']}/{prompts['harmful']['split']}",
        benign_count=prompts["benign"]["count"],
        benign_source=f"{prompts['benign']['config']}/{prompts['benign']['split']}",
        judges=judge_names,
        bft_profile=results["finetune"]["profile"],
        bft_steps=results["finetune"]["steps_run"],
        bft_images=results["finetune"]["n_images"],
        bft_source=f"{prompts['bft']['config']}/{prompts['bft']['split']}",
        package_version=results["versions"].get("spqr-benchmark"),
        created=results["created"],
        notes="\n\n".join(notes),
    )


def write_model_card(results: dict[str, Any], path: Path) -> None:
    """Write a model card with the scores in its ``model-index`` metadata and a results section in its body.

    The card is assembled from huggingface_hub's ``ModelCardData`` YAML and the rendered section. ``ModelCard``
    itself is not used: importing it loads the Hub client, which costs more than a rerun's other work.
    ``spqr push`` parses and checks the card strictly before anything is uploaded.
    """
    from huggingface_hub import ModelCardData

    data = ModelCardData(
        model_name=results["name"],
        tags=["text-to-image", "safety", "spqr"],
        eval_results=eval_results(results),
    )
    content = f"---\n{data.to_yaml()}\n---\n\n# {results['name']}\n\n{render_results_section(results)}"
    write_atomic(Path(path), content.encode("utf-8"))

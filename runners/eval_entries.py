"""Turn SPQR results into the Hub's two eval-result formats, and merge them with what a model repo already has.

The first format is the legacy ``model-index`` in the model card's YAML: huggingface_hub ``EvalResult`` objects,
one metric per axis with raw values and intervals in its ``args``. The second is the ``.eval_results/*.yaml``
entries that benchmark leaderboards on the Hub collect: huggingface_hub ``EvalResultEntry`` objects, one value
per task of the prompt dataset's ``eval.yaml``.

S, P and Q describe the aligned model before fine-tuning, so they do not depend on the fine-tuning scenario.
R and SPQR do, and carry the scenario: as ``metric config`` in ``model-index`` and as ``notes`` in the entries.
Pushing a second scenario therefore adds its R and SPQR and leaves S, P and Q as they are, if they agree.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from importlib import resources
from typing import Any, Sequence

import yaml

from .result_files import derive_scenario

logger = logging.getLogger(__name__)

TASK_TYPE = "text-to-image"
TASK_NAME = "Safety alignment under benign fine-tuning"
DATASET_NAME = "SPQR prompts"
EVALUATION_FRAMEWORK = "spqr"  # the evaluation_framework that the prompt dataset's eval.yaml declares
VALUE_DECIMALS = 4


@dataclasses.dataclass(frozen=True)
class Axis:
    """One reported score and the prompt set it is measured on."""

    score: str  # key in results["scores"], e.g. "S"
    task_id: str  # task id in the prompt dataset's eval.yaml, also the model-index metric type
    metric_name: str
    prompt_role: str  # "harmful" or "benign"
    per_scenario: bool  # whether the value depends on the benign fine-tuning scenario


AXES = (
    Axis("S", "safety", "Safety", "harmful", False),
    Axis("P", "prompt_adherence", "Prompt adherence", "benign", False),
    Axis("Q", "quality", "Quality", "benign", False),
    Axis("R", "robustness", "Robustness", "harmful", True),
    Axis("SPQR", "spqr", "SPQR (harmonic mean of S, P, Q, R)", "harmful", True),
)


@dataclasses.dataclass(frozen=True)
class MetricChange:
    """Effect of a push on one metric in one file."""

    file: str  # "README.md" (model-index) or the .eval_results path
    metric: str  # readable identity, e.g. "robustness on harmful/visu, scenario general"
    action: str  # "add", "unchanged", "refresh" (same value, new details), "overwrite" or "conflict"
    old_value: Any = None
    new_value: Any = None


def _rounded(value: Any) -> Any:
    """Return ``value`` with floats rounded to VALUE_DECIMALS, recursively, so the card YAML stays readable."""
    if isinstance(value, float):
        return round(value, VALUE_DECIMALS) if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _rounded(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rounded(item) for item in value]
    return value


def _values_equal(old: Any, new: Any) -> bool:
    if isinstance(old, (int, float)) and isinstance(new, (int, float)) and not isinstance(old, bool):
        return round(float(old), VALUE_DECIMALS) == round(float(new), VALUE_DECIMALS)
    return old == new


def read_eval_tasks() -> dict[str, tuple[str, str]]:
    """Return the tasks of the prompt dataset's eval.yaml that ships with this package, as id to (config, split).

    Raises:
        ValueError: If eval.yaml lacks a task that SPQR reports.
    """
    text = resources.files("spqr_dataset").joinpath("eval.yaml").read_text(encoding="utf-8")
    document = yaml.safe_load(text)
    tasks = {task["id"]: (task["config"], task["split"]) for task in document.get("tasks", [])}
    missing = [axis.task_id for axis in AXES if axis.task_id not in tasks]
    if missing:
        raise ValueError(f"spqr_dataset/eval.yaml declares no task {missing}; it must declare one task per score.")
    return tasks


def _interval(results: dict[str, Any], name: str) -> list[float] | None:
    interval = (results.get("intervals") or {}).get(name)
    return None if interval is None else [float(interval[0]), float(interval[1])]


def _metric_args(results: dict[str, Any], axis: Axis, scenario: str) -> dict[str, Any]:
    """Return the raw values, interval and settings behind one score, for the metric's ``args``."""
    raw, counts = results.get("raw", {}), results.get("counts", {})
    settings, flags = results.get("settings", {}), results.get("flags") or {}
    args: dict[str, Any] = {"protocol": results["protocol"]}
    interval = _interval(results, axis.score)
    if interval is not None:
        args["interval"] = interval
        args["confidence"] = settings.get("confidence")

    # Raw values behind each score.
    if axis.score in ("S", "R"):
        args["h_before"] = raw.get("h_before")
        args["n_prompts"] = counts.get("n_harmful")
        args["judges"] = [s.get("judge") for s in (results.get("judges") or {}).get("settings", [])]
    if axis.score == "R":
        args.update(h_after=raw.get("h_after"), delta_h=raw.get("delta_h"))
        if _interval(results, "delta_h") is not None:
            args["delta_h_interval"] = _interval(results, "delta_h")
    if axis.score == "P":
        args.update(
            mean_cosine=raw.get("mean_cosine"), ceiling=settings.get("ceiling"), n_images=counts.get("n_benign")
        )
    if axis.score == "Q":
        args.update(fid=raw.get("fid"), fid_bounds=raw.get("fid_bounds"), fid_n=counts.get("fid_n"))
    if axis.score == "SPQR":
        args["weights"] = settings.get("weights")

    # Setup that a reader needs to interpret the value.
    if axis.per_scenario:
        bft = results["prompts"]["bft"]
        args["scenario"] = scenario
        args["bft_prompts"] = f"{bft.get('config')}/{bft.get('split')}"
        args["bft_profile"] = (results.get("finetune") or {}).get("profile")
    if axis.score in ("Q", "SPQR") and flags.get("q_from_single_model_cohort"):
        args["q_from_single_model_cohort"] = True
    if axis.score in ("Q", "SPQR") and flags.get("q_rescored"):
        args["q_rescored"] = True
    limit = results["prompts"][axis.prompt_role].get("limit")
    if limit is not None:
        args["prompt_limit"] = limit
    if results.get("smoke"):
        args["smoke"] = True
    return _rounded({key: value for key, value in args.items() if value is not None})


def build_eval_results(
    results: dict[str, Any],
    *,
    dataset_id: str,
    dataset_revision: str | None = None,
    source_url: str | None = None,
    source_name: str | None = None,
) -> list:
    """Return one huggingface_hub ``EvalResult`` per score that the run has (S, P, Q, R and SPQR).

    Args:
        results: The run's results.json content.
        dataset_id: Hub id of the prompt dataset, the model-index ``dataset.type``.
        dataset_revision: Commit of the prompt dataset; defaults to the revision the run recorded.
        source_url: Where the result comes from (required by the Hub when ``source_name`` is given).
        source_name: Display name of the source.

    Returns:
        The results, each with its raw values and interval in ``metric_args``. A score that is None (for
        example Q without a FID) is left out.
    """
    from huggingface_hub import EvalResult

    scenario = derive_scenario(results)
    eval_results = []
    for axis in AXES:
        value = results["scores"].get(axis.score)
        if value is None:
            logger.warning("Score %s is missing from the results, so it is not reported.", axis.score)
            continue
        prompt_set = results["prompts"][axis.prompt_role]
        eval_results.append(
            EvalResult(
                task_type=TASK_TYPE,
                task_name=TASK_NAME,
                dataset_type=dataset_id,
                dataset_name=DATASET_NAME,
                dataset_config=prompt_set.get("config"),
                dataset_split=prompt_set.get("split"),
                dataset_revision=dataset_revision or prompt_set.get("revision"),
                metric_type=axis.task_id,
                metric_name=axis.metric_name,
                metric_value=round(float(value), VALUE_DECIMALS),
                metric_config=scenario if axis.per_scenario else None,
                metric_args=_metric_args(results, axis, scenario),
                source_name=source_name if source_url else None,
                source_url=source_url,
            )
        )
    return eval_results


def build_eval_entries(
    results: dict[str, Any],
    *,
    dataset_id: str,
    dataset_revision: str | None = None,
    source_url: str | None = None,
    source_name: str | None = None,
) -> list[dict[str, Any]]:
    """Return the ``.eval_results/*.yaml`` entries of a run: one value per eval.yaml task.

    A task is reported only when the run used the whole config and split that eval.yaml declares for it,
    because the Hub ranks every entry of a task against the same prompts. So a smoke run, or a prompt set cut
    with ``limit``, gives no entry (its scores still go into ``model-index``, marked in ``args``). R and SPQR
    carry ``notes: "scenario: ..."``.

    Returns:
        Entries as plain dicts in the file's layout (huggingface_hub ``eval_result_entries_to_yaml``), each
        with ``evaluation_framework: spqr``.
    """
    from huggingface_hub import EvalResultEntry, eval_result_entries_to_yaml

    if results.get("smoke"):
        logger.warning("Smoke results go only into model-index, never into the benchmark's .eval_results.")
        return []
    tasks = read_eval_tasks()
    scenario = derive_scenario(results)
    entries = []
    for axis in AXES:
        value = results["scores"].get(axis.score)
        if value is None:
            continue
        prompt_set = results["prompts"][axis.prompt_role]
        used = (prompt_set.get("config"), prompt_set.get("split"))
        if used != tasks[axis.task_id]:
            logger.warning(
                "eval.yaml declares task %r on %s/%s but this run used %s/%s, so %s goes only into model-index.",
                axis.task_id, *tasks[axis.task_id], *used, axis.score,
            )
            continue
        if prompt_set.get("limit") is not None:
            logger.warning(
                "The run used only the first %s %s prompts, so %s goes only into model-index, not into task %r.",
                prompt_set["limit"], axis.prompt_role, axis.score, axis.task_id,
            )
            continue
        entries.append(
            EvalResultEntry(
                dataset_id=dataset_id,
                task_id=axis.task_id,
                value=round(float(value), VALUE_DECIMALS),
                dataset_revision=dataset_revision or prompt_set.get("revision"),
                date=results.get("created"),
                source_url=source_url,
                source_name=source_name if source_url else None,
                notes=f"scenario: {scenario}" if axis.per_scenario else None,
            )
        )
    return [{**entry, "evaluation_framework": EVALUATION_FRAMEWORK} for entry in eval_result_entries_to_yaml(entries)]


def _block_key(block: dict[str, Any]) -> tuple:
    """Task and dataset identity of one ``model-index`` result block (the metrics it holds are compared apart)."""
    task, dataset = block.get("task") or {}, block.get("dataset") or {}
    return (
        task.get("type"),
        dataset.get("type"),
        dataset.get("config"),
        dataset.get("split"),
        dataset.get("revision"),
    )


def _describe_metric(block: dict[str, Any], metric: dict[str, Any]) -> str:
    _, dataset_type, config, split, revision = _block_key(block)
    text = f"{metric.get('type')} on {dataset_type} {config}/{split}"
    if revision:
        text += f"@{revision}"
    return text + (f", scenario {metric['config']}" if metric.get("config") else "")


def _metric_locations(model_index: list[dict[str, Any]]) -> dict[tuple, list[tuple[dict, dict]]]:
    """Map each metric identity to the ``(block, metric)`` pairs that state it, in card order."""
    locations: dict[tuple, list[tuple[dict, dict]]] = {}
    for model in model_index:
        for block in model.get("results") or []:
            for metric in block.get("metrics") or []:
                key = (*_block_key(block), metric.get("type"), metric.get("config"))
                locations.setdefault(key, []).append((block, metric))
    return locations


def merge_model_index(
    existing: Sequence[dict[str, Any]] | None,
    new: Sequence[dict[str, Any]],
    *,
    overwrite: bool = False,
) -> tuple[list[dict[str, Any]], list[MetricChange]]:
    """Merge new ``model-index`` entries into a card's existing ones, as plain YAML data.

    The merge works on the YAML data, not on huggingface_hub ``EvalResult`` objects, whose round trip drops
    keys it does not model (another benchmark's extra metric keys, a second model name). A metric is the same
    when task type, dataset (id, config, split, revision), metric type and metric config match. A matching
    metric is replaced in place. A new one joins the block with the same task, dataset and source, or
    a new block. Everything else stays as it is and in order. huggingface_hub's ``metadata_update`` is not used:
    in version 2.4 it treats results whose ``args`` differ as different metrics, so a new value with new
    intervals would be appended next to the old one instead of being reported as a conflict.

    Args:
        existing: The card's ``model-index`` list (None or empty for a card without one). Not modified.
        new: The entries to merge, as ``huggingface_hub.repocard_data.eval_results_to_model_index`` makes them.
        overwrite: Whether a different value replaces the old one (``"overwrite"``) or is a ``"conflict"``.

    Returns:
        ``(merged, changes)``: the merged list and one change per new metric. On a ``"conflict"`` the caller
        must not write the merged list.
    """
    merged = copy.deepcopy(list(existing or []))
    changes: list[MetricChange] = []
    emptied = []  # blocks whose only metrics were duplicates removed here
    locations = _metric_locations(merged)
    for new_model in new:
        for new_block in new_model.get("results") or []:
            pending = []
            for metric in new_block.get("metrics") or []:
                key = (*_block_key(new_block), metric.get("type"), metric.get("config"))
                name = _describe_metric(new_block, metric)
                found = locations.get(key)
                if not found:
                    pending.append(metric)
                    changes.append(MetricChange("README.md", name, "add", None, metric.get("value")))
                    continue
                block, old = found[0]
                if not _values_equal(old.get("value"), metric.get("value")):
                    action = "overwrite" if overwrite else "conflict"
                elif old == metric and block.get("source") == new_block.get("source"):
                    action = "unchanged"
                else:
                    action = "refresh"
                changes.append(MetricChange("README.md", name, action, old.get("value"), metric.get("value")))
                replacement = copy.deepcopy(metric)
                block["metrics"][block["metrics"].index(old)] = replacement
                if "source" in new_block:
                    block["source"] = copy.deepcopy(new_block["source"])
                # A card edited by hand can state a metric twice; keep one, so the card gives a single value.
                for other_block, duplicate in found[1:]:
                    other_block["metrics"].remove(duplicate)
                    if not other_block["metrics"]:
                        emptied.append(other_block)
                locations[key] = [(block, replacement)]
            if pending:
                _add_metrics(merged, new_model, new_block, pending)
                locations = _metric_locations(merged)
    emptied_ids = {id(block) for block in emptied}
    for model in merged:
        if any(id(block) in emptied_ids for block in model.get("results") or []):
            model["results"] = [block for block in model["results"] if id(block) not in emptied_ids]
    return merged, changes


def _add_metrics(
    merged: list[dict[str, Any]], new_model: dict[str, Any], new_block: dict[str, Any], metrics: list[dict]
) -> None:
    """Append ``metrics`` to the block of ``merged`` with ``new_block``'s task, dataset and source, or a new block."""
    for model in merged:
        for block in model.get("results") or []:
            same_place = block.get("dataset") == new_block.get("dataset") and block.get("source") == new_block.get("source")
            if same_place and _block_key(block) == _block_key(new_block):
                block["metrics"].extend(copy.deepcopy(metrics))
                return
    block = copy.deepcopy({**new_block, "metrics": metrics})
    target = next((model for model in merged if model.get("name") == new_model.get("name")), None)
    if target is None and merged:
        target = merged[0]
    if target is None:
        merged.append({"name": new_model.get("name"), "results": [block]})
    else:
        target["results"] = [*(target.get("results") or []), block]


def _entry_key(entry: dict[str, Any]) -> tuple:
    dataset = entry.get("dataset") or {}
    return dataset.get("id"), dataset.get("task_id"), dataset.get("revision"), entry.get("notes")


def _describe_entry(entry: dict[str, Any]) -> str:
    dataset_id, task_id, revision, notes = _entry_key(entry)
    text = f"{task_id} of {dataset_id}" + (f"@{revision}" if revision else "")
    return text + (f" ({notes})" if notes else "")


def merge_eval_entries(
    existing: Sequence[dict[str, Any]], new: Sequence[dict[str, Any]], *, file: str, overwrite: bool = False
) -> tuple[list[dict[str, Any]], list[MetricChange]]:
    """Merge new ``.eval_results`` entries into a file's existing entries.

    An entry is the same when dataset id, task id, dataset revision and notes match. Other entries stay
    as they are, including keys that huggingface_hub does not model.

    Returns:
        ``(merged, changes)`` as in :func:`merge_model_index`.
    """
    merged = [dict(entry) for entry in existing]
    changes: list[MetricChange] = []
    for entry in new:
        matches = [i for i, old in enumerate(merged) if _entry_key(old) == _entry_key(entry)]
        name = _describe_entry(entry)
        if not matches:
            merged.append(entry)
            changes.append(MetricChange(file, name, "add", None, entry["value"]))
            continue
        old = merged[matches[0]]
        if not _values_equal(old.get("value"), entry["value"]):
            action = "overwrite" if overwrite else "conflict"
        else:
            action = "unchanged" if old == entry else "refresh"
        changes.append(MetricChange(file, name, action, old.get("value"), entry["value"]))
        merged[matches[0]] = entry
        for index in reversed(matches[1:]):
            del merged[index]
    return merged, changes


def parse_eval_entries(text: str, where: str) -> list[dict[str, Any]]:
    """Parse a ``.eval_results/*.yaml`` file and check each entry's layout.

    Args:
        text: The file content.
        where: The repository and path, for messages.

    Raises:
        ValueError: If the file is not a YAML list of entries with ``dataset.id``, ``dataset.task_id`` and
            ``value``. The message names ``where`` and the fix.
    """
    from huggingface_hub import parse_eval_result_entries

    fix = f"Fix or delete {where} (it must be a YAML list of entries with dataset.id, dataset.task_id and value)"
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ValueError(f"{where} is not valid YAML: {error}. {fix}, then push again.") from error
    if data is None:
        return []
    if not isinstance(data, list) or not all(isinstance(entry, dict) for entry in data):
        raise ValueError(f"{where} must contain a YAML list of mappings, got {type(data).__name__}. {fix}.")
    try:
        parse_eval_result_entries(data)
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{where} has an invalid entry ({type(error).__name__}: {error}). {fix}.") from error
    return data

"""Read the results.json files that ``spqr run`` writes, and derive the scenario each run measured.

``spqr push`` and ``spqr leaderboard`` both start here, so a file with a missing key fails the same way in
both, with a message that names the file and the key.
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_hub_id(value: Any) -> bool:
    """Return whether ``value`` has the form of a Hub repository id, ``namespace/name``."""
    return bool(_HUB_ID.match(str(value)))

RESULTS_FILE_NAME = "results.json"
SCORE_NAMES = ("S", "P", "Q", "R", "SPQR")
PROMPT_ROLES = ("harmful", "benign", "bft")
# Keys that every results.json of protocol spqr-1 has, as dotted paths.
_REQUIRED_KEYS = (
    "protocol",
    "name",
    "scores",
    "raw",
    "model.source",
    "prompts.harmful.config",
    "prompts.harmful.split",
    "prompts.benign.config",
    "prompts.benign.split",
    "prompts.bft.config",
    "prompts.bft.split",
)
# BFT split prefixes of the prompt dataset's `bft` config and the scenario family each one belongs to.
_SCENARIO_PREFIXES = {"multilingual_": "multilingual", "domain_": "domain"}


def _lookup(data: dict[str, Any], dotted: str) -> Any:
    value: Any = data
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(dotted)
        value = value[part]
    return value


def resolve_results_path(path: str | Path) -> Path:
    """Return the results.json path for ``path``, which is either that file or the run folder that contains it.

    Raises:
        FileNotFoundError: If neither exists.
    """
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_FILE_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"No results file at {str(path)!r}: pass a results.json written by `spqr run` or the run folder "
            "that contains it."
        )
    return path


def read_results(path: str | Path) -> dict[str, Any]:
    """Read and check one results.json.

    Args:
        path: A results.json file or the run folder that contains one.

    Returns:
        The parsed results.

    Raises:
        FileNotFoundError: If there is no results file at ``path``.
        ValueError: If the file is not valid JSON, lacks a key that ``spqr run`` writes, or has a score outside
            [0, 1]. The message names the file.
    """
    path = resolve_results_path(path)
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); pass a results.json written by `spqr run`.") from error
    if not isinstance(results, dict):
        raise ValueError(f"{path} must contain a JSON object, got {type(results).__name__}.")

    missing = []
    for key in _REQUIRED_KEYS:
        try:
            _lookup(results, key)
        except KeyError:
            missing.append(key)
    if missing:
        raise ValueError(
            f"{path} lacks {', '.join(repr(key) for key in missing)}, so it was not written by `spqr run` of this "
            "version; rerun `spqr run` to regenerate it."
        )
    for name in SCORE_NAMES:
        value = results["scores"].get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise ValueError(f"{path}: scores.{name} must be a number in [0, 1] or null, got {value!r}.")
    fid = results["raw"].get("fid")
    if fid is not None and (isinstance(fid, bool) or not isinstance(fid, (int, float)) or not math.isfinite(fid)):
        raise ValueError(f"{path}: raw.fid must be a finite number or null, got {fid!r}.")
    logger.debug("Read %s (protocol %s, model %s)", path, results["protocol"], results["model"]["source"])
    return results


def derive_scenario(results: dict[str, Any]) -> str:
    """Return the benign fine-tuning scenario of a run, derived from its BFT and harmful prompt sets.

    A ``scenario`` key in the results wins. Otherwise the BFT prompt set decides:

    - split ``general_en`` of config ``bft`` gives ``general``;
    - split ``multilingual_<lang>`` gives ``multilingual:<lang>`` (e.g. ``multilingual:ar``);
    - split ``domain_<name>`` gives ``domain:<name>`` (e.g. ``domain:art``);
    - any other split of ``bft`` gives ``bft:<split>``, a split of another config ``<config>:<split>``, and a
      local prompt file ``file:<file name>``.

    When the harmful prompts come from the ``ood`` config, the run measures out-of-distribution harmfulness,
    so the scenario is ``ood`` after general fine-tuning and ``ood+<scenario>`` after any other.

    Examples:
        >>> derive_scenario({"prompts": {"harmful": {"config": "harmful", "split": "visu"},
        ...                              "bft": {"config": "bft", "split": "multilingual_ar"}}})
        'multilingual:ar'
    """
    if results.get("scenario"):
        return str(results["scenario"])
    bft = results["prompts"]["bft"]
    config, split = bft.get("config"), bft.get("split")
    if bft.get("file"):
        scenario = f"file:{Path(bft['file']).name}"
    elif config != "bft":
        scenario = f"{config}:{split}"
    elif split == "general_en":
        scenario = "general"
    else:
        scenario = f"bft:{split}"
        for prefix, family in _SCENARIO_PREFIXES.items():
            if split.startswith(prefix) and len(split) > len(prefix):
                scenario = f"{family}:{split[len(prefix):]}"
                break
    if results["prompts"]["harmful"].get("config") == "ood":
        return "ood" if scenario == "general" else f"ood+{scenario}"
    return scenario


def prompt_set_signature(results: dict[str, Any], role: str) -> dict[str, Any]:
    """Return what identifies a run's prompt set of ``role``: dataset, revision, config, split, file and count.

    Two runs scored on prompt sets with different signatures cannot be compared.
    """
    prompt_set = results["prompts"][role]
    return {key: prompt_set.get(key) for key in ("dataset", "revision", "config", "split", "file", "count")}

"""Sweeps: many runs that share a base configuration, each overriding a few fields (scenario, model, profile).

A sweep file names a ``base`` configuration (relative to the sweep file) and a list of ``runs``. Each run's
mapping is merged into the base, nested mappings key by key. Every run is an independent job, so a cluster
scheduler can run one per array task with ``spqr sweep --config FILE --index K``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from .config import ConfigError, RunConfig, config_from_dict, parse_yaml, resolve_relative_paths


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def load_sweep(path: str | Path) -> list[RunConfig]:
    """Read a sweep file and return one validated :class:`RunConfig` per run, in file order.

    Raises:
        ConfigError: When the sweep file or any merged run configuration is invalid; every problem is named,
            prefixed by the run's index and name.
    """
    path = Path(path)
    try:
        sweep = parse_yaml(path.read_text(encoding="utf-8"), str(path))
    except FileNotFoundError:
        raise FileNotFoundError(f"Sweep file not found: {path}") from None
    if not isinstance(sweep, dict):
        raise ConfigError(["a sweep file is a mapping with the keys 'base' (a config file) and 'runs' (a list)"],
                          str(path))
    unknown = sorted(str(key) for key in set(sweep) - {"base", "runs"})
    if unknown:
        raise ConfigError([f"{key}: unknown key; a sweep file has only the keys 'base' (a config file) and 'runs' "
                           "(a list)" for key in unknown], str(path))
    runs = sweep.get("runs")
    if not isinstance(runs, list) or not runs or not all(isinstance(run, dict) for run in runs):
        raise ConfigError(["runs: must be a non-empty list of mappings"], str(path))
    base: dict[str, Any] = {}
    if sweep.get("base"):
        base_path = path.parent / sweep["base"]
        try:
            base = parse_yaml(base_path.read_text(encoding="utf-8"), str(base_path)) or {}
        except FileNotFoundError:
            raise FileNotFoundError(f"Base configuration {sweep['base']!r} of {path} not found at {base_path}") from None
    if base.get("scenario") is not None and any("scenario" in run for run in runs):
        base = {key: value for key, value in base.items() if key != "scenario"}

    configs, problems = [], []
    names = set()
    for index, run in enumerate(runs):
        label = f"runs[{index}] ({run.get('name', 'unnamed')})"
        try:
            config = config_from_dict(_merge(base, run), label)
        except ConfigError as error:
            problems.extend(f"{label}: {problem}" for problem in error.problems)
            continue
        if config.name in names:
            problems.append(f"{label}: name {config.name!r} is used by an earlier run; names pick output folders")
        names.add(config.name)
        resolve_relative_paths(config, path.resolve().parent)
        configs.append(config)
    if problems:
        raise ConfigError(problems, str(path))
    return configs

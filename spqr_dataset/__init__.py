"""SPQR prompt dataset: schema, loading, reproducible subsets and the builder.

The folder is also a Hugging Face dataset: `datasets.load_dataset("<path>/spqr_dataset", config,
split=...)` reads the parquet files that its README.md declares.

The names below are imported on first use, so that importing a light module of this package (the config and
split names in ``layout``, for example) does not import datasets, pyarrow and pandas.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BuildReport": "build",
    "build_dataset": "build",
    "build_shipped": "build",
    "FEATURES": "loading",
    "SHIPPED_PATH": "loading",
    "dataset_version": "loading",
    "load_prompt_file": "loading",
    "load_prompts": "loading",
    "read_prompt_file": "prompt_files",
    "COLUMNS": "schema",
    "PromptValidationError": "schema",
    "validate_row": "schema",
    "CONFIG_SPLITS": "layout",
    "SelectionSpec": "selection",
    "select": "selection",
    "select_default_harmful": "selection",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])

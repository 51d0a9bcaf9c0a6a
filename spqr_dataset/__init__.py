"""SPQR prompt dataset: schema, loading, reproducible subsets and the builder.

The folder is also a Hugging Face dataset: `datasets.load_dataset("<path>/spqr_dataset", config,
split=...)` reads the parquet files that its README.md declares.
"""

from .build import BuildReport, build_dataset, build_shipped
from .loading import FEATURES, SHIPPED_PATH, dataset_version, load_prompt_file, load_prompts
from .prompt_files import read_prompt_file
from .schema import COLUMNS, CONFIG_SPLITS, PromptValidationError, validate_row
from .selection import SelectionSpec, select, select_default_harmful

__all__ = [
    "COLUMNS",
    "CONFIG_SPLITS",
    "FEATURES",
    "SHIPPED_PATH",
    "BuildReport",
    "PromptValidationError",
    "SelectionSpec",
    "build_dataset",
    "build_shipped",
    "dataset_version",
    "load_prompt_file",
    "load_prompts",
    "read_prompt_file",
    "select",
    "select_default_harmful",
    "validate_row",
]

"""Performance benchmarks of the SPQR runners and scorers; results are recorded in docs/benchmarks.md.

Each benchmark measures two ways of doing the same work side by side in one process (or, for memory, in
fresh subprocesses) and reports their ratio against a target. ``python -m benchmarks.run_all`` runs all of
them and rewrites the results table of docs/benchmarks.md.

The benchmarks use only models built locally (``spqr_runners.tiny``) and NudeNet's bundled model, so the
Hugging Face libraries are switched offline here, before any of them is imported.
"""

import os

for _name, _value in (
    ("HF_HUB_OFFLINE", "1"),
    ("HF_DATASETS_OFFLINE", "1"),
    ("HF_EVALUATE_OFFLINE", "1"),
    ("HF_HUB_DISABLE_TELEMETRY", "1"),
    ("HF_UPDATE_DOWNLOAD_COUNTS", "0"),
    ("TOKENIZERS_PARALLELISM", "false"),
):
    os.environ.setdefault(_name, _value)

"""Reuse of finished work: a rerun of a finished ``spqr run``, and cached FID reference statistics.

- ``bench_warm_rerun`` times ``spqr run`` on a small configuration from empty output and cache folders
  (cold), then the same command again (warm), which finds every stage record and image in place and only
  rebuilds results.json and the model card. Both are new processes, as a user runs them. The embedded models
  are built before the cold run starts, as a downloaded model would already be cached.
- ``bench_fid_reference_cache`` times ``FidScorer.reference_statistics`` on a folder of reference images with an
  empty cache (features computed and stored) and again with the entry present (read back). The feature
  extractor is the tiny stand-in with 2,048 features, so the cached covariance has Inception's size (32 MiB).

Run ``python -m benchmarks.warm_rerun --help`` for the options.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any, Sequence

from .common import (
    disable_progress_bars,
    add_common_arguments,
    benchmark_result,
    median,
    median_ratio,
    paired_times,
    print_results,
    quiet_libraries,
    setup_logging,
    time_call,
    workspace,
    write_test_images,
)

logger = logging.getLogger(__name__)

TARGET_RERUN_FRACTION = 0.03
"""A rerun of a finished run may take at most this fraction of the cold run's time."""

TARGET_FID_CACHE_FRACTION = 0.10
"""Reading cached reference statistics may take at most this fraction of computing them."""

SMALL_RUN: dict[str, Any] = {
    "name": "bench-small",
    "smoke": True,
    "model": {"id": "embedded:tiny-sd"},
    "prompts": {
        "harmful": {"config": "harmful", "split": "visu", "limit": 6},
        "benign": {"config": "benign", "split": "coco", "limit": 4},
        "bft": {"config": "bft", "split": "general_en", "limit": 4},
    },
    "generation": {"steps": 2, "resolution": 64, "batch_size": 4},
    "finetune": {"batch_size": 2, "epochs": 1},
    "judges": {"names": ["nudenet"]},
    "adherence": {"model": "embedded:tiny-clip"},
    "quality": {"feature_extractor": "embedded:tiny-features", "reference": "embedded:synthetic",
                "reference_count": 8},
    "scoring": {"bootstrap": 50},
}
"""The run that is timed: every stage of the protocol on a few prompts with the embedded tiny models."""


def _run_protocol(config_path: Path, output_dir: Path, cache_dir: Path) -> dict[str, Any]:
    """Run ``spqr run`` on ``config_path`` in this process and return the results."""
    from spqr_runners.config import load_config
    from spqr_runners.protocol import ProtocolRun

    config = load_config(config_path)
    config.output_dir, config.cache_dir = str(output_dir), str(cache_dir)
    with warnings.catch_warnings():
        # A single model gives Q = 0.5 with a warning that this benchmark does not need to show.
        warnings.simplefilter("ignore", UserWarning)
        return ProtocolRun(config).run()


def _run_cli(config_path: Path, output_dir: Path, cache_dir: Path) -> dict[str, Any]:
    """Run ``spqr run`` on ``config_path`` in a new Python process and return the results it wrote.

    Raises:
        RuntimeError: If the command fails; the message contains its error output.
    """
    command = [sys.executable, "-m", "spqr_runners.cli", "-q", "run", "--config", str(config_path),
               "--output-dir", str(output_dir), "--cache-dir", str(cache_dir)]
    completed = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, TQDM_DISABLE="1"))
    if completed.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed with exit code {completed.returncode}:\n"
                           f"{completed.stderr[-4000:]}")
    return json.loads((output_dir / "results.json").read_text(encoding="utf-8"))


def bench_warm_rerun(repeats: int = 2, settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """Compare ``spqr run`` on a finished run with the cold ``spqr run`` that finished it, both as new processes.

    The rerun is also timed inside one Python process (``ProtocolRun(config).run()`` again), which leaves out
    interpreter start-up and imports. The difference between the two is reported as ``startup_and_imports``.

    Args:
        repeats: Pairs of (cold, warm) commands to take the median over; each pair starts from empty folders.
        settings: Run configuration as a dict; defaults to :data:`SMALL_RUN`. ``output_dir`` and ``cache_dir``
            are set here.

    Returns:
        The result record; the ratio is warm command time / cold command time. The check ``same_scores`` holds
        when the rerun reports the cold run's scores, and ``all_stages_reused`` when it reused every stage that
        makes images, verdicts or the adapter.
    """
    import yaml

    from spqr_runners.embedded import embedded_model_path

    settings = settings if settings is not None else SMALL_RUN
    with workspace("rerun") as folder:
        config_path = folder / "run.yaml"
        config_path.write_text(yaml.safe_dump(settings, sort_keys=False), encoding="utf-8")
        results: dict[str, dict[str, Any]] = {}

        def folders(repeat: int) -> tuple[Path, Path]:
            return folder / f"run-{repeat}", folder / f"cache-{repeat}"

        def cold(repeat: int) -> None:
            results["cold"] = _run_cli(config_path, *folders(repeat))

        def warm(repeat: int) -> None:
            results["warm"] = _run_cli(config_path, *folders(repeat))

        # The embedded models are built outside the timing, like a model that was downloaded before.
        for repeat in range(repeats):
            for name in ("embedded:tiny-sd", "embedded:tiny-clip"):
                embedded_model_path(name, folders(repeat)[1])
        cold_times, warm_times = paired_times(cold, warm, repeats, "spqr run")

        # The first in-process call pays this process's imports; the timed ones after it do not.
        quiet_libraries()
        _run_protocol(config_path, *folders(0))
        in_process_times = [time_call(lambda: _run_protocol(config_path, *folders(0))) for _ in range(repeats)]

    reused = results["warm"].get("reused_stages", [])
    expected = {"generate_before", "judge_before", "finetune", "generate_after", "judge_after"}
    warm_command, warm_in_process = median(warm_times), median(in_process_times)
    ratio = median_ratio(warm_times, cold_times)
    note = (
        f"Inside one process the rerun takes {warm_in_process:.2f} s ({warm_in_process / median(cold_times):.1%} of "
        "the cold run): it loads no model, reads the stage records, fingerprints the model folder and rebuilds "
        "results.json and the model card. The rest of the command's time is Python start-up and the imports it "
        "needs (numpy, PyYAML, huggingface_hub); it imports no torch, diffusers, transformers or datasets."
    )
    return benchmark_result(
        "warm_rerun",
        f"`spqr run` on {_prompt_counts(settings)} prompts (tiny models): rerun of the finished run vs the cold run, "
        "each a new process",
        measured={
            "cold_run_s": median(cold_times),
            "warm_rerun_s": warm_command,
            "warm_rerun_in_process_s": warm_in_process,
            "startup_and_imports_s": warm_command - warm_in_process,
            "stages_reused": len(reused),
        },
        ratio=ratio,
        ratio_definition="warm command time / cold command time",
        target=TARGET_RERUN_FRACTION,
        direction="at_most",
        repeats=repeats,
        checks={
            "same_scores": results["warm"]["scores"] == results["cold"]["scores"],
            "all_stages_reused": expected <= set(reused),
        },
        note=note,
    )


def _prompt_counts(settings: dict[str, Any]) -> str:
    prompts = settings.get("prompts", {})
    return ", ".join(f"{prompts[role].get('limit', 'all')} {role}" for role in ("harmful", "benign", "bft")
                     if role in prompts)


def bench_fid_reference_cache(
    num_images: int = 200, image_size: int = 64, num_features: int = 2048, repeats: int = 5
) -> dict[str, Any]:
    """Compare ``FidScorer.reference_statistics`` with an empty cache (cold) and with the entry cached.

    Args:
        num_images: Reference images in the folder.
        image_size: Side in pixels of the reference PNGs.
        num_features: Features of the tiny extractor; 2,048 gives the cache file Inception's size.
        repeats: Pairs of (cold, cached) calls; each pair uses a new, empty cache folder.

    Returns:
        The result record; the ratio is cached time / cold time. The check ``same_statistics`` holds when the
        cached statistics equal the computed ones.
    """
    import numpy as np

    from spqr_metric.quality import FidScorer
    from spqr_runners.tiny import TinyFeatureExtractor

    with workspace("fid") as folder:
        write_test_images(folder / "reference", num_images, image_size)
        extractor = TinyFeatureExtractor(num_features=num_features)
        statistics: dict[str, Any] = {}

        def scorer(repeat: int) -> FidScorer:
            return FidScorer(extractor, device="cpu", cache_dir=folder / f"cache-{repeat}", show_progress=False)

        def cold(repeat: int) -> None:
            statistics["cold"] = scorer(repeat).reference_statistics(folder / "reference")

        def cached(repeat: int) -> None:
            statistics["cached"] = scorer(repeat).reference_statistics(folder / "reference")

        cold_times, cached_times = paired_times(cold, cached, repeats, "FID reference statistics", warmup=True)
        cache_mib = sum(path.stat().st_size for path in (folder / "cache-0").rglob("*") if path.is_file()) / 2**20

    computed, _, first_status = statistics["cold"]
    read, _, second_status = statistics["cached"]
    same = (np.array_equal(computed.mean, read.mean) and np.array_equal(computed.covariance, read.covariance)
            and computed.num_samples == read.num_samples)
    return benchmark_result(
        "fid_reference_cache",
        f"FidScorer.reference_statistics on a folder of {num_images} PNGs ({image_size}², tiny extractor with "
        f"{num_features} features): cached vs first computation",
        measured={
            "first_computation_s": median(cold_times),
            "cached_s": median(cached_times),
            "cache_file_mib": cache_mib,
        },
        ratio=median_ratio(cached_times, cold_times),
        ratio_definition="cached time / first computation time",
        target=TARGET_FID_CACHE_FRACTION,
        direction="at_most",
        repeats=repeats,
        checks={
            "cache_hit": first_status == "miss" and second_status == "hit",
            "same_statistics": same,
        },
        note=(
            "A cache hit still lists and stats every reference file (the cache key covers their names, sizes and "
            "modification times) and reads the covariance, so its cost grows with the set and the feature size. "
            "The first computation runs the extractor on every image; with Inception-v3 that costs far more per "
            "image than the tiny extractor timed here, so the ratio would be smaller."
        ),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the rerun and FID-cache benchmarks from the command line and print their results."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.warm_rerun", description=__doc__.split("\n\n")[0])
    parser.add_argument("--fid-images", type=int, default=200, help="reference images for the FID cache (default 200)")
    parser.add_argument("--fid-repeats", type=int, default=5, help="pairs of FID-cache calls (default 5)")
    add_common_arguments(parser, default_repeats=2)
    args = parser.parse_args(argv)
    disable_progress_bars()
    setup_logging(args.verbose)
    results = [
        bench_warm_rerun(repeats=args.repeats),
        bench_fid_reference_cache(num_images=args.fid_images, repeats=args.fid_repeats),
    ]
    print_results(results, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

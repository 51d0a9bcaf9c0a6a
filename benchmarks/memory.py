"""Peak memory of generation plus judging at 1,000 prompts against 100 prompts.

Generated images are written to the cache batch by batch and judged batch by batch, so memory should not grow
with the number of prompts. Each size runs in a new Python process (``python -m benchmarks.memory --worker N``)
that loads the tiny pipeline, generates N images with ``generate_images`` and judges them with NudeNet through
``spqr_runners.judging.judge_images``, then reports its peak resident set size.

The peak is ``VmHWM`` from ``/proc/self/status`` on Linux. ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` is
reported beside it but not used there: Linux carries the parent's memory high-water mark into a child at fork
and keeps it across exec, so a worker started by a large parent reports at least the parent's size. Other
systems fall back to ``ru_maxrss``. Images are 16² with 1 denoising step to keep 1,000 of them
affordable on a CPU; NudeNet scales every image to 320² anyway, so judging costs the same per image as at 512².
At 16² a decoded image is under 1 KiB, so this run would miss images kept in memory by mistake, but not kept
NudeNet inputs (1.2 MB each) or per-prompt records.

Run ``python -m benchmarks.memory --help`` for the options.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from .common import (
    add_common_arguments,
    benchmark_result,
    benign_prompts,
    disable_progress_bars,
    print_results,
    setup_logging,
    workspace,
)

logger = logging.getLogger(__name__)

TARGET_GROWTH = 1.2
"""Peak memory at the large size may be at most this multiple of the peak at the small size."""


def rusage_peak_mib() -> float:
    """Return ``ru_maxrss`` of this process in MiB (the kernel reports KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def peak_rss_mib() -> float:
    """Return this process's own peak resident set size in MiB: ``VmHWM`` on Linux, else ``ru_maxrss``."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**10  # the value is in kB
    return rusage_peak_mib()


def run_worker(num_prompts: int, model_dir: Path, output_dir: Path, resolution: int, steps: int,
               batch_size: int) -> dict[str, Any]:
    """Generate and judge ``num_prompts`` images in this process; return peak memory and timings.

    Meant to run in a fresh process (see :func:`measure_in_subprocess`), so that the peak belongs to this work.
    """
    import torch

    from spqr_runners.config import JudgesConfig
    from spqr_runners.generate import ImageCache, ImageRequest, SamplerSettings, generate_images, prompt_seed
    from spqr_runners.judging import judge_images

    from .common import quiet_libraries
    from .generation import load_tiny_pipeline

    quiet_libraries()
    started = time.perf_counter()
    pipeline = load_tiny_pipeline(model_dir)
    requests = [ImageRequest(f"bench/{index}", prompt, prompt_seed(f"bench/{index}", 0))
                for index, prompt in enumerate(benign_prompts(num_prompts))]
    sampler = SamplerSettings(steps=steps, guidance=7.5, height=resolution, width=resolution,
                              scheduler=type(pipeline.scheduler).__name__)
    loaded_mib = peak_rss_mib()

    generation_start = time.perf_counter()
    paths = generate_images(pipeline, requests, sampler, ImageCache(output_dir), "tiny-sd", batch_size=batch_size)
    judging_start = time.perf_counter()
    verdicts = judge_images([str(path) for path in paths], JudgesConfig(names=["nudenet"], batch_size=batch_size),
                            torch.device("cpu"), "judge")
    finished = time.perf_counter()
    return {
        "num_prompts": num_prompts,
        "peak_rss_mib": peak_rss_mib(),
        "ru_maxrss_mib": rusage_peak_mib(),
        "peak_rss_after_loading_mib": loaded_mib,
        "judged": len(verdicts["combined"]),
        "generation_s": judging_start - generation_start,
        "judging_s": finished - judging_start,
        "total_s": finished - started,
    }


def measure_in_subprocess(num_prompts: int, model_dir: Path, output_dir: Path, resolution: int = 16,
                          steps: int = 1, batch_size: int = 16) -> dict[str, Any]:
    """Run :func:`run_worker` in a new Python process and return what it reported.

    Raises:
        RuntimeError: If the worker fails; the message contains its error output.
    """
    command = [sys.executable, "-m", "benchmarks.memory", "--worker", str(num_prompts), "--model-dir",
               str(model_dir), "--output-dir", str(output_dir), "--resolution", str(resolution),
               "--steps", str(steps), "--batch-size", str(batch_size)]
    # The worker imports this package, so it must find it on its path from any working directory.
    root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    completed = subprocess.run(command, capture_output=True, text=True, env=env)
    if completed.returncode != 0:
        raise RuntimeError(f"Memory worker for {num_prompts} prompts failed with exit code "
                           f"{completed.returncode}:\n{completed.stderr[-4000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def bench_memory(small: int = 100, large: int = 1000, resolution: int = 16, steps: int = 1,
                 batch_size: int = 16, repeats: int = 1, model_dir: str | Path | None = None) -> dict[str, Any]:
    """Compare the peak memory of generation plus judging at ``large`` prompts with that at ``small`` prompts.

    Args:
        small: Prompts in the small run.
        large: Prompts in the large run.
        resolution: Image side in pixels.
        steps: Denoising steps per image.
        batch_size: Batch size of generation and judging.
        repeats: Runs per size; the median peak is used. Peak memory varies little between runs, so 1 is enough.
        model_dir: A saved tiny pipeline to use instead of building one.

    Returns:
        The result record; the ratio is the large run's peak / the small run's peak. The check ``all_judged``
        holds when every image of both runs got a verdict.
    """
    from spqr_runners.tiny import build_tiny_pipeline

    from .common import median

    with workspace("memory") as folder:
        model_path = Path(model_dir) if model_dir is not None else build_tiny_pipeline(folder / "model")
        reports: dict[int, list[dict[str, Any]]] = {small: [], large: []}
        for repeat in range(repeats):
            for size in (small, large):
                report = measure_in_subprocess(size, model_path, folder / f"images-{size}-{repeat}", resolution,
                                               steps, batch_size)
                logger.info("memory, %d prompts, repeat %d/%d: peak %.0f MiB in %.1f s", size, repeat + 1,
                            repeats, report["peak_rss_mib"], report["total_s"])
                reports[size].append(report)

    def middle(size: int, field: str) -> float:
        return median([report[field] for report in reports[size]])

    ratio = middle(large, "peak_rss_mib") / middle(small, "peak_rss_mib")
    return benchmark_result(
        "memory",
        f"Peak RSS of generating ({resolution}², {steps} step, batch {batch_size}) and NudeNet-judging {large} "
        f"prompts vs {small}, each in a new process",
        measured={
            f"peak_at_{small}_prompts_mib": middle(small, "peak_rss_mib"),
            f"peak_at_{large}_prompts_mib": middle(large, "peak_rss_mib"),
            "peak_after_loading_mib": middle(small, "peak_rss_after_loading_mib"),
            f"ru_maxrss_at_{large}_prompts_mib": middle(large, "ru_maxrss_mib"),
            f"generation_of_{large}_prompts_s": middle(large, "generation_s"),
            f"judging_of_{large}_prompts_s": middle(large, "judging_s"),
        },
        ratio=ratio,
        ratio_definition=f"peak RSS at {large} prompts / peak RSS at {small}",
        target=TARGET_GROWTH,
        direction="at_most",
        repeats=repeats,
        checks={"all_judged": all(report["judged"] == size for size in reports for report in reports[size])},
        note=(
            "Most of the peak is the interpreter with torch, diffusers, onnxruntime and the loaded models; images "
            "stream through the cache one batch at a time, and only the verdict records grow with the prompt count."
        ),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the memory benchmark from the command line, or one worker process with ``--worker``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=100, help="prompts in the small run (default 100)")
    parser.add_argument("--large", type=int, default=1000, help="prompts in the large run (default 1000)")
    parser.add_argument("--resolution", type=int, default=16, help="image side in pixels (default 16)")
    parser.add_argument("--steps", type=int, default=1, help="denoising steps per image (default 1)")
    parser.add_argument("--batch-size", type=int, default=16, help="generation and judging batch size (default 16)")
    parser.add_argument("--worker", type=int, metavar="N", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--output-dir", type=Path, help=argparse.SUPPRESS)
    add_common_arguments(parser, default_repeats=1)
    args = parser.parse_args(argv)
    disable_progress_bars()

    if args.worker is not None:
        if args.model_dir is None or args.output_dir is None:
            parser.error("--worker needs --model-dir and --output-dir")
        report = run_worker(args.worker, args.model_dir, args.output_dir, args.resolution, args.steps,
                            args.batch_size)
        print(json.dumps(report))
        return 0

    setup_logging(args.verbose)
    result = bench_memory(small=args.small, large=args.large, resolution=args.resolution, steps=args.steps,
                          batch_size=args.batch_size, repeats=args.repeats)
    print_results([result], args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

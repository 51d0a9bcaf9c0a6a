"""Shared parts of the benchmarks: paired timing, the result record, machine information and the CLI.

Every timed benchmark runs its two sides back to back in each repeat (a *pair*), so that load from other
processes on a shared machine hits both sides of a pair alike. The reported ratio is the median over repeats
of the per-pair ratio, and the reported times are the per-side medians.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Sequence

logger = logging.getLogger(__name__)

Direction = Literal["at_least", "at_most"]
"""Target rule of a ratio: ``at_least`` for a speed-up (higher is better), ``at_most`` for a cost."""


def benchmark_result(
    name: str,
    description: str,
    *,
    measured: dict[str, Any],
    ratio: float,
    ratio_definition: str,
    target: float,
    direction: Direction,
    repeats: int,
    checks: dict[str, bool] | None = None,
    note: str = "",
) -> dict[str, Any]:
    """Build the record every benchmark function returns.

    Args:
        name: Short identifier, e.g. ``"nudenet_judge"``.
        description: What is compared, in one line.
        measured: The measured numbers behind the ratio (seconds, bytes, pixel differences), by name.
        ratio: The measured ratio.
        ratio_definition: How the ratio is computed, e.g. ``"per-image loop time / batched time"``.
        target: The ratio the benchmark must reach.
        direction: ``"at_least"`` when the ratio must be >= target, ``"at_most"`` when it must be <= target.
        repeats: Number of repeats the medians are taken over.
        checks: Correctness conditions that must also hold for a pass, by name (for example that both sides
            produced the same detections).
        note: What limits the result or how to read it.

    Returns:
        A JSON-serialisable dict with the fields above plus ``passed`` (the target is met and every check
        holds) and a readable ``target_rule``.

    Raises:
        ValueError: If ``direction`` is neither ``"at_least"`` nor ``"at_most"``.
    """
    if direction == "at_least":
        passed, rule = ratio >= target, f">= {target:g}"
    elif direction == "at_most":
        passed, rule = ratio <= target, f"<= {target:g}"
    else:
        raise ValueError(f"direction must be 'at_least' or 'at_most', got {direction!r}.")
    checks = {name: bool(value) for name, value in (checks or {}).items()}
    return {
        "benchmark": name,
        "description": description,
        "measured": measured,
        "ratio": ratio,
        "ratio_definition": ratio_definition,
        "target": target,
        "target_rule": rule,
        "direction": direction,
        "checks": checks,
        "passed": bool(passed) and all(checks.values()),
        "repeats": repeats,
        "note": note,
    }


def time_call(function: Callable[[], Any]) -> float:
    """Run ``function`` once and return its wall-clock time in seconds."""
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def paired_times(
    baseline: Callable[[int], Any],
    candidate: Callable[[int], Any],
    repeats: int,
    description: str,
    *,
    warmup: bool = False,
) -> tuple[list[float], list[float]]:
    """Time ``baseline(i)`` then ``candidate(i)`` for each repeat ``i`` and return both lists of seconds.

    The repeat index lets a side use fresh output folders in every repeat.

    Args:
        baseline: The reference side, called with the repeat index.
        candidate: The side under test, called with the repeat index.
        repeats: Number of timed pairs.
        description: Label of the log lines.
        warmup: Run each side once untimed first, with index -1, so that lazy initialisation and cold caches
            (file system, allocator, thread pools) do not land in the first timed pair.

    Raises:
        ValueError: If ``repeats`` is not positive.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be a positive integer, got {repeats!r}.")
    if warmup:
        baseline(-1)
        candidate(-1)
    baseline_times, candidate_times = [], []
    for index in range(repeats):
        baseline_times.append(time_call(lambda: baseline(index)))
        candidate_times.append(time_call(lambda: candidate(index)))
        logger.info("%s, repeat %d/%d: %.3f s vs %.3f s", description, index + 1, repeats,
                    baseline_times[-1], candidate_times[-1])
    return baseline_times, candidate_times


def median_ratio(numerators: Sequence[float], denominators: Sequence[float]) -> float:
    """Return the median over pairs of ``numerator / denominator``."""
    return statistics.median(n / d for n, d in zip(numerators, denominators))


def median(values: Sequence[float]) -> float:
    """Return the median of ``values``."""
    return statistics.median(values)


@contextlib.contextmanager
def workspace(prefix: str) -> Iterator[Path]:
    """Yield a temporary folder that is deleted afterwards, for models, images and caches a benchmark writes."""
    with tempfile.TemporaryDirectory(prefix=f"spqr-bench-{prefix}-") as folder:
        yield Path(folder)


def disable_progress_bars() -> None:
    """Turn off tqdm progress bars in this process and its children, for the command-line entry points.

    tqdm reads ``TQDM_DISABLE`` when it is imported, so this works only before anything imports tqdm (torch
    does). The benchmark modules import torch inside their functions for that reason.
    """
    os.environ["TQDM_DISABLE"] = "1"


def quiet_libraries() -> None:
    """Turn off the per-call progress bars and INFO logs of diffusers and transformers while timing."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def cpu_model() -> str:
    """Return the CPU model name from /proc/cpuinfo, or what ``platform`` reports on other systems."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def machine_info() -> dict[str, Any]:
    """Describe the machine and software a run measured: CPU, cores, load, library versions and the date."""
    try:
        usable_cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not available on macOS or Windows
        usable_cores = os.cpu_count()
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable_cores,
        "load_average_1min": round(load[0], 2) if load else None,
        "python": platform.python_version(),
        "torch": _version("torch"),
        "onnxruntime": _version("onnxruntime"),
        "diffusers": _version("diffusers"),
        "transformers": _version("transformers"),
        "peft": _version("peft"),
        "nudenet": _version("nudenet"),
    }


def format_ratio(result: dict[str, Any]) -> str:
    """Render a result's ratio: a speed-up as ``4.2×``, a cost fraction as a percentage."""
    ratio = result["ratio"]
    if result["direction"] == "at_least" or ratio >= 0.5:
        return f"{ratio:.2f}×"
    return f"{ratio * 100:.1f}%"


def format_target(result: dict[str, Any]) -> str:
    """Render a result's target in the same unit as :func:`format_ratio`."""
    target = result["target"]
    if result["direction"] == "at_least" or target >= 0.5:
        return f"{result['target_rule'][:2]} {target:g}×"
    return f"{result['target_rule'][:2]} {target * 100:g}%"


def format_measured(measured: dict[str, Any]) -> str:
    """Render measured numbers as ``name value`` pairs, with seconds and bytes in readable units."""
    parts = []
    for name, value in measured.items():
        if isinstance(value, float):
            if name.endswith("_s"):
                text = f"{value:.3f} s" if value < 10 else f"{value:.1f} s"
                name = name[:-2]
            elif name.endswith("_mib"):
                text = f"{value:.0f} MiB" if value >= 10 else f"{value:.2g} MiB"
                name = name[:-4]
            else:
                text = f"{value:.4g}"
        else:
            text = str(value)
        parts.append(f"{name.replace('_', ' ')} {text}")
    return "; ".join(parts)


def format_console(results: Sequence[dict[str, Any]]) -> str:
    """Render results as a plain-text summary for the terminal."""
    lines = []
    for result in results:
        verdict = "pass" if result["passed"] else "FAIL"
        ratio, target = format_ratio(result), format_target(result)
        lines.append(f"{result['benchmark']:<24} {ratio:>9}  target {target:<10} {verdict}")
        lines.append(f"    {result['ratio_definition']}; median of {result['repeats']}")
        lines.append(f"    {format_measured(result['measured'])}")
        failed = [name for name, value in result["checks"].items() if not value]
        if failed:
            lines.append(f"    failed checks: {', '.join(failed)}")
        if result["note"]:
            lines.append(f"    note: {result['note']}")
    return "\n".join(lines)


def add_common_arguments(parser: argparse.ArgumentParser, default_repeats: int) -> None:
    """Add the options every benchmark CLI takes: ``--repeats``, ``--json`` and ``-v``."""
    parser.add_argument("--repeats", type=int, default=default_repeats,
                        help=f"pairs of runs to take the median over (default {default_repeats})")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a summary")
    parser.add_argument("-v", "--verbose", action="store_true", help="log each repeat's times")


def setup_logging(verbose: bool) -> None:
    """Send this package's log lines to stderr, each repeat's times included with ``verbose``."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("benchmarks").setLevel(logging.INFO if verbose else logging.WARNING)


def print_results(results: Sequence[dict[str, Any]], as_json: bool) -> None:
    """Print results as JSON or as the plain-text summary."""
    if as_json:
        json.dump(list(results), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(format_console(results))


def benign_prompts(count: int) -> list[str]:
    """Return ``count`` prompts: the shipped benign COCO-style prompts, repeated with a number when too few.

    Raises:
        ValueError: If ``count`` is not positive.
    """
    if count < 1:
        raise ValueError(f"count must be a positive integer, got {count!r}.")
    from importlib import resources

    text = resources.files("spqr_dataset").joinpath("prompts", "benign.coco.jsonl").read_text(encoding="utf-8")
    shipped = [json.loads(line)["prompt"] for line in text.splitlines() if line.strip()]
    prompts = []
    for index in range(count):
        prompt = shipped[index % len(shipped)]
        prompts.append(prompt if index < len(shipped) else f"{prompt} (variant {index // len(shipped)})")
    return prompts


def write_test_images(folder: Path, count: int, size: int) -> list[str]:
    """Write ``count`` deterministic ``size``×``size`` PNG images of gradients and shapes; return their paths."""
    from spqr_metric.quality import synthetic_reference_images

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, image in enumerate(synthetic_reference_images(count, size=size, seed=0)):
        path = folder / f"image-{index:05d}.png"
        image.save(path)
        paths.append(str(path))
    return paths

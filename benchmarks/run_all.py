"""Run every CPU benchmark and rewrite the results section of docs/benchmarks.md (``make bench``).

Each benchmark compares two ways of doing the same work side by side in this run (see the modules of this
package), so the ratios, not the absolute times, are what the targets judge. The results section records the
machine, the library versions, the date and the command. ``benchmarks.gpu_throughput`` is not part of this run;
it needs a CUDA GPU and writes its own section.

Run ``python -m benchmarks.run_all --help`` for the options.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from .common import disable_progress_bars, format_console, machine_info, setup_logging
from .docs import DEFAULT_DOCUMENT, render_results_section, replace_section

logger = logging.getLogger(__name__)


def _benchmarks() -> dict[str, Callable[[], dict[str, Any]]]:
    """Return the benchmarks of a full run, by name, with the sizes and repeats the results page uses."""
    from . import adapter, generation, judges, memory, warm_rerun

    return {
        "nudenet_judge": lambda: judges.bench_nudenet_judge(num_images=16, repeats=5),
        "clip_adherence_tiny": lambda: judges.bench_clip_adherence(num_images=16, repeats=5, model_size="tiny"),
        "clip_adherence_vit_b_32": lambda: judges.bench_clip_adherence(num_images=8, repeats=3,
                                                                       model_size="vit-b-32"),
        "generation": lambda: generation.bench_generation(num_images=8, batch_size=8, repeats=3),
        "adapter_toggle_tiny": lambda: adapter.bench_adapter_toggle("tiny", repeats=5),
        "adapter_toggle_sd15": lambda: adapter.bench_adapter_toggle("sd15", repeats=3),
        "warm_rerun": lambda: warm_rerun.bench_warm_rerun(repeats=2),
        "fid_reference_cache": lambda: warm_rerun.bench_fid_reference_cache(num_images=200, repeats=5),
        "memory": lambda: memory.bench_memory(small=100, large=1000),
    }


BENCHMARK_NAMES = ("nudenet_judge", "clip_adherence_tiny", "clip_adherence_vit_b_32", "generation",
                   "adapter_toggle_tiny", "adapter_toggle_sd15", "warm_rerun", "fid_reference_cache", "memory")
"""Names accepted by ``--only`` and ``--skip``, in the order a full run takes them."""


def run_benchmarks(names: Sequence[str] = BENCHMARK_NAMES) -> list[dict[str, Any]]:
    """Run the named benchmarks in order and return their result records, each with its ``elapsed_s``.

    Raises:
        ValueError: If a name is not in :data:`BENCHMARK_NAMES`.
    """
    unknown = [name for name in names if name not in BENCHMARK_NAMES]
    if unknown:
        raise ValueError(f"Unknown benchmarks {unknown}; choose from {list(BENCHMARK_NAMES)}.")
    available = _benchmarks()
    results = []
    for number, name in enumerate(names, start=1):
        logger.warning("Benchmark %d/%d: %s", number, len(names), name)
        start = time.perf_counter()
        result = available[name]()
        result["elapsed_s"] = round(time.perf_counter() - start, 1)
        logger.warning("  %s finished in %.0f s: ratio %.4g, %s", name, result["elapsed_s"], result["ratio"],
                       "pass" if result["passed"] else "target not met")
        results.append(result)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmarks, print a summary and rewrite the results section of docs/benchmarks.md."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run_all", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", choices=BENCHMARK_NAMES,
                        help=f"run only these benchmarks ({', '.join(BENCHMARK_NAMES)})")
    parser.add_argument("--skip", nargs="+", metavar="NAME", choices=BENCHMARK_NAMES, default=[],
                        help="leave out these benchmarks")
    parser.add_argument("--docs", type=Path, default=DEFAULT_DOCUMENT,
                        help=f"results page to rewrite (default {DEFAULT_DOCUMENT})")
    parser.add_argument("--no-docs", action="store_true", help="print the results without rewriting the page")
    parser.add_argument("--json-output", type=Path, help="also write the machine info and results to this JSON file")
    parser.add_argument("--render-json", type=Path, metavar="PATH",
                        help="measure nothing: rewrite the results section from a file written by --json-output")
    parser.add_argument("-v", "--verbose", action="store_true", help="log each repeat's times")
    args = parser.parse_args(argv)
    disable_progress_bars()
    setup_logging(args.verbose)

    if args.render_json:
        payload = json.loads(args.render_json.read_text(encoding="utf-8"))
        command = payload.get("command", "python -m benchmarks.run_all (options not recorded)")
        section = render_results_section(payload["machine"], payload["results"], command, payload["total_s"])
        replace_section(args.docs, "results", section)
        print(f"Rewrote the results section of {args.docs} from {args.render_json}")
        return 0

    names = [name for name in (args.only or BENCHMARK_NAMES) if name not in args.skip]
    command = " ".join(["python -m benchmarks.run_all", *(sys.argv[1:] if argv is None else argv)])
    machine = machine_info()
    started = time.perf_counter()
    results = run_benchmarks(names)
    total_seconds = time.perf_counter() - started
    print(format_console(results))
    print(f"\n{len(results)} benchmarks in {total_seconds / 60:.1f} min; "
          f"{sum(result['passed'] for result in results)} met their target")

    if args.json_output:
        payload = {"machine": machine, "command": command, "total_s": round(total_seconds, 1), "results": results}
        args.json_output.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    if args.no_docs:
        return 0
    if list(names) != list(BENCHMARK_NAMES):
        print(f"{args.docs} not rewritten: the results section records full runs only (drop --only/--skip).",
              file=sys.stderr)
        return 0
    section = render_results_section(machine, results, command, total_seconds)
    replace_section(args.docs, "results", section)
    print(f"Rewrote the results section of {args.docs}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

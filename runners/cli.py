"""The ``spqr`` command line: ``spqr demo``, ``spqr run --config FILE``, and the prompt dataset tools."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

logger = logging.getLogger("spqr_runners")


def _setup_logging(verbosity: int) -> None:
    if verbosity < 0:
        level = logging.WARNING
    elif verbosity == 0:
        level = logging.INFO
    else:
        level = logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    # Third-party libraries stay at WARNING unless -vv is given; their INFO lines drown the stage log.
    for name in ("diffusers", "transformers", "httpx", "huggingface_hub", "datasets", "urllib3", "filelock"):
        logging.getLogger(name).setLevel(logging.DEBUG if verbosity > 1 else logging.WARNING)
    if verbosity <= 1:
        # The per-split "Generating ... split" bars of datasets show nothing about the run's progress. datasets
        # reads this variable when it is imported, which only commands that load prompts do.
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
        if "datasets" in sys.modules:
            sys.modules["datasets"].disable_progress_bars()


def format_summary(results: dict[str, Any]) -> str:
    """Render the scores and the raw values behind them as a plain-text table."""
    from .results import AXIS_NAMES

    raw = results.get("raw", {})
    intervals = results.get("intervals") or {}
    lines = [f"SPQR results ({results['protocol']}) for {results['model']['source']}", ""]
    lines.append(f"{'axis':<24}{'score':>8}   {'95% interval':<18}")
    for axis, name in AXIS_NAMES.items():
        value = results["scores"].get(axis)
        shown = "n/a" if value is None else f"{value:.3f}"
        interval = intervals.get(axis)
        interval_text = f"[{interval[0]:.3f}, {interval[1]:.3f}]" if interval else ""
        lines.append(f"{name:<24}{shown:>8}   {interval_text:<18}")
    lines.append("")
    counts = results.get("counts", {})
    lines.append(
        f"harmfulness before {raw.get('h_before', float('nan')):.2f}%  after {raw.get('h_after', float('nan')):.2f}%"
        f"  Δh {raw.get('delta_h', float('nan')):+.2f} points  (n = {counts.get('n_harmful')})"
    )
    if raw.get("mean_cosine") is not None:
        lines.append(f"mean CLIP cosine {raw['mean_cosine']:.4f}  (n = {counts.get('n_benign')})")
    if raw.get("fid") is not None:
        lines.append(f"FID {raw['fid']:.3f}  (n = {counts.get('fid_n')})")
    for flag, value in (results.get("flags") or {}).items():
        if value:
            lines.append(f"flag {flag}: {value if isinstance(value, str) else 'set'}")
    if results.get("smoke_note"):
        lines.append("")
        lines.append(results["smoke_note"])
    timing = results.get("timing_seconds", {})
    if timing:
        lines.append("")
        lines.append("time per stage (s): " + ", ".join(f"{name} {seconds:.1f}" for name, seconds in timing.items()))
    if results.get("reused_stages"):
        lines.append("reused from an earlier invocation: " + ", ".join(results["reused_stages"]))
    return "\n".join(lines)


def _run_config(config, args: argparse.Namespace) -> int:
    from .protocol import ProtocolRun

    if args.output_dir:
        config.output_dir = args.output_dir
    if args.cache_dir:
        config.cache_dir = args.cache_dir
    run = ProtocolRun(config)
    results = run.run()
    if not run.workers.is_main:
        return 0  # the main process prints the summary once for the whole launch
    print(format_summary(results))
    print(f"\nResults: {run.output_dir / 'results.json'}\nModel card: {run.output_dir / 'README.md'}")
    return 0


def _command_demo(args: argparse.Namespace) -> int:
    from .config import config_from_dict
    import yaml

    text = resources.files("spqr_runners.configs").joinpath("demo.yaml").read_text(encoding="utf-8")
    config = config_from_dict(yaml.safe_load(text), "the embedded demo configuration")
    return _run_config(config, args)


def _command_run(args: argparse.Namespace) -> int:
    from .config import load_config, resolve_relative_paths

    config = load_config(args.config)
    resolve_relative_paths(config, Path(args.config).resolve().parent)
    if args.check:
        print(f"{args.config}: valid")
        return 0
    return _run_config(config, args)


def _command_sweep(args: argparse.Namespace) -> int:
    from .sweep import load_sweep

    configs = load_sweep(args.config)
    if args.list:
        for index, config in enumerate(configs):
            print(f"{index}\t{config.name}\t{config.scenario or '-'}\t{config.model.id}")
        return 0
    if args.index is not None:
        if not 0 <= args.index < len(configs):
            raise ValueError(f"--index {args.index} is out of range: the sweep has runs 0 to {len(configs) - 1}")
        configs = [configs[args.index]]
    for config in configs:
        if args.output_dir:
            # One folder per run below the given one, so runs of a sweep never share stage records.
            config.output_dir = str(Path(args.output_dir) / config.name)
        _run_config(config, argparse.Namespace(output_dir=None, cache_dir=args.cache_dir))
    return 0


def _add_run_options(parser: argparse.ArgumentParser, sweep: bool = False) -> None:
    if sweep:
        parser.add_argument("--output-dir", help="parent folder with one subfolder per run, named after the run "
                            "(default: each run's output_dir, or runs/<name>)")
    else:
        parser.add_argument("--output-dir", help="folder for results.json, the model card and stage records "
                            "(default: runs/<name>)")
    parser.add_argument("--cache-dir", help="folder for the image cache and built models "
                        "(default: $SPQR_CACHE or ~/.cache/spqr)")


# Subcommands defined in other modules, which are imported only when their command is chosen, so that other
# commands (a rerun of a finished run, for example) do not pay for importing them: name -> (module, help).
COMMANDS_ELSEWHERE = {
    "prompts": ("spqr_dataset.cli", "build and publish the SPQR prompt dataset"),
    "push": ("spqr_runners.push", "write a run's SPQR scores into a model repository's card and .eval_results on "
             "the Hub"),
    "leaderboard": ("spqr_runners.leaderboard", "rank runs of one scenario by SPQR: Markdown table, sortable HTML "
                    "page and PNG figures"),
    "metric": ("spqr_runners.metric_push", "publish the SPQR evaluate metric"),
}


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """Return the ``spqr`` parser with every subcommand; only the one that ``argv`` chooses is fully defined.

    Args:
        argv: The arguments that will be parsed; ``sys.argv[1:]`` when None.
    """
    parser = argparse.ArgumentParser(prog="spqr", description="Run the SPQR benchmark for safety-aligned "
                                     "text-to-image models.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for libraries)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser("demo", help="run the whole protocol on the embedded tiny default (a few minutes "
                               "on CPU)")
    _add_run_options(demo)
    demo.set_defaults(handler=_command_demo)

    run = commands.add_parser("run", help="run the protocol from a YAML configuration")
    run.add_argument("--config", required=True, help="YAML run configuration")
    run.add_argument("--check", action="store_true", help="validate the configuration and exit")
    _add_run_options(run)
    run.set_defaults(handler=_command_run)

    sweep = commands.add_parser("sweep", help="run several configurations that share a base (scenarios, models)")
    sweep.add_argument("--config", required=True, help="YAML sweep file with 'base' and 'runs'")
    sweep.add_argument("--index", type=int, help="run only the run with this 0-based index (for array jobs)")
    sweep.add_argument("--list", action="store_true", help="print the runs with their indices and exit")
    _add_run_options(sweep, sweep=True)
    sweep.set_defaults(handler=_command_sweep)

    chosen = _chosen_command(sys.argv[1:] if argv is None else argv)
    for name, (module, help_text) in COMMANDS_ELSEWHERE.items():
        if name == chosen:
            importlib.import_module(module).register(commands)
        else:
            # A stub that only lists the command in `spqr --help`; choosing the command registers the real one.
            commands.add_parser(name, help=help_text)
    return parser


def _chosen_command(argv: Sequence[str]) -> str | None:
    """Return the subcommand in ``argv``: the first argument that is not an option (top-level options take no
    value)."""
    return next((argument for argument in argv if not argument.startswith("-")), None)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    _setup_logging(-1 if args.quiet else args.verbose)
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("spqr: interrupted; finished stages and images are kept, rerun the same command to resume",
              file=sys.stderr)
        return 130
    except Exception as error:
        if not isinstance(error, _user_errors()):
            raise
        logger.debug("Command failed", exc_info=True)
        print(f"spqr: error: {error}", file=sys.stderr)
        return 2


def _user_errors() -> tuple[type[BaseException], ...]:
    """Return the exception types that end a command with a one-line message and exit status 2.

    They are imported only once a command failed, so that commands do not pay for importing the libraries
    that define them.
    """
    from huggingface_hub.errors import OfflineModeIsEnabled
    from spqr_metric.judges.base import JudgeLoadError

    from .config import ConfigError
    from .resolve import ModelNotFoundError

    return ConfigError, FileNotFoundError, ValueError, JudgeLoadError, ModelNotFoundError, OfflineModeIsEnabled


if __name__ == "__main__":
    sys.exit(main())

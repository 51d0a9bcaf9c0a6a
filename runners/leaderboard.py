"""``spqr leaderboard``: rank runs of one scenario by SPQR, with Q recomputed over the runs given.

It writes, into one folder:

- ``leaderboard.md``: a Markdown table;
- ``leaderboard.html``: a static page from ``cards/leaderboard.html``, sortable by clicking a column header,
  with inline CSS, JS and figures and no external assets;
- ``radar/<model>.png`` (S, P, Q, R per model), ``radar.png`` (all models) and ``categories/<model>.png``
  (harmfulness per harm category before and after fine-tuning), drawn with matplotlib's Agg renderer;
- ``leaderboard.json``: the rescored rows, for scripts.

The renderers live in ``leaderboard_render.py`` and the figures in ``leaderboard_plots.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import re
from pathlib import Path
from typing import Any, Sequence

from .cohort import check_comparable, rescore_cohort
from .image_cache import write_atomic
from .result_files import derive_scenario, read_results, resolve_results_path

logger = logging.getLogger(__name__)

# Flags that a reader of the table must see next to a model, with the text shown for each.
_FLAG_NOTES = {
    "q_from_single_model_cohort": "Q from a cohort of one (0.5)",
    "q_missing": "no FID, so no Q or SPQR",
    "p_missing": "no CLIP cosines, so no P or SPQR",
    "undetermined_verdicts_present": "some images have no verdict",
    "p_held_fixed_in_intervals": "P held fixed in intervals",
}


@dataclasses.dataclass
class Row:
    """One model on the leaderboard."""

    label: str  # unique display name
    slug: str  # unique file-name-safe form of the label
    path: str  # the results file
    results: dict[str, Any]  # rescored over the cohort
    rank: int | None = None  # 1 for the highest SPQR; None without SPQR

    def score(self, name: str) -> float | None:
        return self.results["scores"].get(name)

    def interval(self, name: str) -> list[float] | None:
        return (self.results.get("intervals") or {}).get(name)

    def notes(self) -> list[str]:
        flags = self.results.get("flags") or {}
        notes = ["smoke run"] if self.results.get("smoke") else []
        notes.extend(text for flag, text in _FLAG_NOTES.items() if flags.get(flag))
        return notes


@dataclasses.dataclass
class Leaderboard:
    """Rows ranked by SPQR, with what the cohort shares."""

    rows: list[Row]
    protocol: str
    scenario: str
    quality: dict[str, Any]  # how Q was obtained, from rescore_cohort
    confidence: float | None


def _unique_labels(named_results: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Return a display label per file: the run name, disambiguated by checkpoint, then folder, then a number."""
    labels = {path: str(results["name"]) for path, results in named_results.items()}
    for extra in (
        lambda path: named_results[path]["model"]["source"],
        lambda path: Path(path).parent.name,
    ):
        counts: dict[str, int] = {}
        for label in labels.values():
            counts[label] = counts.get(label, 0) + 1
        labels = {path: f"{label} ({extra(path)})" if counts[label] > 1 else label for path, label in labels.items()}
    seen: dict[str, int] = {}
    for path, label in list(labels.items()):
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:
            labels[path] = f"{label} #{seen[label]}"
    return labels


def _slugs(labels: Sequence[str]) -> list[str]:
    slugs: list[str] = []
    for label in labels:
        base = re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-") or "model"
        slug, number = base, 1
        while slug in slugs:
            number += 1
            slug = f"{base}-{number}"
        slugs.append(slug)
    return slugs


def build_leaderboard(paths: Sequence[str | Path]) -> Leaderboard:
    """Read the results, check that they are comparable, recompute Q over the cohort and rank by SPQR.

    Args:
        paths: results.json files or the run folders that contain them.

    Raises:
        FileNotFoundError: If a results file is missing.
        ValueError: If no path is given, a file is given twice, or the runs are not comparable (different
            protocol, scenario, prompt sets, scoring settings or judges). The message names the files.
    """
    if not paths:
        raise ValueError("Give at least one results.json (or run folder) to rank.")
    resolved = [str(resolve_results_path(path)) for path in paths]
    repeated = sorted({path for path in resolved if resolved.count(path) > 1})
    if repeated:
        raise ValueError(f"These results are given more than once: {', '.join(repeated)}.")
    named = {path: read_results(path) for path in resolved}
    check_comparable(named)
    rescored, quality = rescore_cohort(named)

    labels = _unique_labels(rescored)
    rows = [
        Row(label=labels[path], slug=slug, path=path, results=rescored[path])
        for path, slug in zip(rescored, _slugs([labels[path] for path in rescored]))
    ]
    # Highest SPQR first, rows without SPQR last; ties share a rank (1, 2, 2, 4).
    rows.sort(key=lambda row: (row.score("SPQR") is None, -(row.score("SPQR") or 0.0)))
    for position, row in enumerate(rows):
        if row.score("SPQR") is None:
            continue
        previous = rows[position - 1] if position else None
        tied = previous is not None and previous.score("SPQR") == row.score("SPQR")
        row.rank = previous.rank if tied else position + 1

    first = next(iter(named.values()))
    confidence = (first.get("settings") or {}).get("confidence") if first.get("intervals") else None
    return Leaderboard(rows, first["protocol"], derive_scenario(first), quality, confidence)


def draw_figures(board: Leaderboard) -> dict[str, dict[str, bytes]]:
    """Draw the radar chart and category bars of every row, as PNG bytes per slug and kind."""
    from tqdm.auto import tqdm

    from .leaderboard_plots import category_bars, radar_chart

    figures = {}
    for row in tqdm(board.rows, desc="leaderboard figures", unit="model", disable=len(board.rows) < 5):
        figures[row.slug] = {
            "radar": radar_chart({row.label: row.results["scores"]}, row.label),
            "categories": category_bars(row.results.get("per_category") or {}, f"{row.label}: harmfulness"),
        }
    return figures


def write_leaderboard(paths: Sequence[str | Path], output_dir: str | Path, *, plots: bool = True) -> dict[str, Path]:
    """Build the leaderboard of ``paths`` and write its files into ``output_dir``.

    Args:
        paths: results.json files or run folders.
        output_dir: The folder to write to (created if missing). Files of an earlier leaderboard are
            replaced; figures of models no longer in it are left in place.
        plots: Whether to draw the PNG figures (needs matplotlib).

    Returns:
        The written files by name: ``markdown``, ``html``, ``json``, and with plots ``radar`` (all models)
        plus ``radar/<slug>`` and ``categories/<slug>`` per model.

    Raises:
        See :func:`build_leaderboard`.
    """
    from .leaderboard_plots import radar_chart

    board = build_leaderboard(paths)
    output_dir = Path(output_dir)
    written: dict[str, Path] = {}
    figures: dict[str, dict[str, bytes]] = {}
    if plots:
        figures = draw_figures(board)
        for slug, kinds in figures.items():
            for kind, png in kinds.items():
                path = output_dir / kind / f"{slug}.png"
                write_atomic(path, png)
                written[f"{kind}/{slug}"] = path
        overview = radar_chart({row.label: row.results["scores"] for row in board.rows}, "All models")
        written["radar"] = output_dir / "radar.png"
        write_atomic(written["radar"], overview)

    # Imported here, not at the top, so that other spqr commands do not pay for it when the parser is built.
    from .leaderboard_render import render_html, render_json, render_markdown

    for name, file_name, text in (
        ("markdown", "leaderboard.md", render_markdown(board)),
        ("html", "leaderboard.html", render_html(board, figures)),
        ("json", "leaderboard.json", render_json(board)),
    ):
        written[name] = output_dir / file_name
        write_atomic(written[name], text.encode("utf-8"))
    logger.info("Wrote the leaderboard of %d models to %s", len(board.rows), output_dir)
    return written


def _command_leaderboard(args: argparse.Namespace) -> int:
    written = write_leaderboard(args.results, args.output_dir, plots=not args.no_plots)
    print(Path(written["markdown"]).read_text(encoding="utf-8"))
    print(f"Page: {written['html']}")
    return 0


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``leaderboard`` subcommand to the ``spqr`` command line's subparsers and return its parser."""
    from .cli import COMMANDS_ELSEWHERE

    parser = subparsers.add_parser(
        "leaderboard",
        help=COMMANDS_ELSEWHERE["leaderboard"][1],
        description="Rank results of one protocol and scenario by SPQR. Q is recomputed over the runs given "
        "(min-max of their FIDs) unless every run carries the same fid_bounds.",
    )
    parser.add_argument("results", nargs="+", metavar="RESULTS", help="results.json files or run folders")
    parser.add_argument("--output-dir", required=True, help="folder for leaderboard.md, leaderboard.html, "
                        "leaderboard.json and the PNG figures")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG figures (no matplotlib needed)")
    parser.set_defaults(handler=_command_leaderboard)
    return parser

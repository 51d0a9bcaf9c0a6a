"""Render a leaderboard as Markdown, as a self-contained HTML page (from ``cards/leaderboard.html``) and as JSON.

The columns are defined once in ``COLUMNS`` and shared by the Markdown table and the HTML page, whose inline
script sorts by a column when its header is clicked.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import html
import importlib.metadata
import json
import string
from importlib import resources
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from .leaderboard import Leaderboard, Row


@dataclasses.dataclass(frozen=True)
class Column:
    """A table column: its sort key, title, value and how the HTML page sorts it."""

    key: str
    title: str
    sort_type: str  # "number" or "text"
    default_direction: str  # the direction of a first click: "descending" when higher is better
    value: Callable[[Row], Any]
    interval: Callable[[Row], list[float] | None] | None = None
    digits: int = 3


def _source(row: Row) -> str:
    # The model record names no adapter, so it is read from the run configuration that results.json embeds.
    adapter = row.results["model"].get("adapter") or ((row.results.get("config") or {}).get("model") or {}).get(
        "adapter"
    )
    return row.results["model"]["source"] + (f" + {adapter}" if adapter else "")


COLUMNS = (
    Column("rank", "Rank", "number", "ascending", lambda row: row.rank, digits=0),
    Column("model", "Model", "text", "ascending", lambda row: row.label),
    Column("source", "Checkpoint", "text", "ascending", _source),
    *(
        Column(name.lower(), name, "number", "descending", lambda row, n=name: row.score(n),
               lambda row, n=name: row.interval(n))
        for name in ("SPQR", "S", "P", "Q", "R")
    ),
    Column("delta_h", "Δh (points)", "number", "ascending", lambda row: row.results["raw"].get("delta_h"),
           lambda row: row.interval("delta_h"), digits=2),
    Column("fid", "FID", "number", "ascending", lambda row: row.results["raw"].get("fid"), digits=2),
    Column("cosine", "CLIP cosine", "number", "descending", lambda row: row.results["raw"].get("mean_cosine"),
           digits=4),
    Column("notes", "Notes", "text", "ascending", lambda row: "; ".join(row.notes())),
)


def _quality_note(board: Leaderboard) -> str:
    quality = board.quality
    if quality["method"] == "explicit_bounds":
        low, high = quality["fid_bounds"]
        return f"Q uses the FID bounds [{low:.2f}, {high:.2f}] that every run was scored with."
    if quality["method"] == "missing":
        return "No run has a FID, so Q and SPQR are missing."
    if quality["n_models"] == 1:
        return "Only one model has a FID, so its Q is 0.5 and carries no information."
    low, high = quality["fid_bounds"]
    return (
        f"Q was recomputed over this cohort of {quality['n_models']} models with a FID (best {low:.2f}, worst "
        f"{high:.2f}), and SPQR from the new Q. SPQR intervals are left out because the runs computed them "
        "with their own Q."
    )


def _count_models(board: Leaderboard) -> str:
    return f"{len(board.rows)} model" + ("" if len(board.rows) == 1 else "s")


def _format(value: Any, digits: int) -> str:
    if value is None:
        return "–"
    if isinstance(value, (int, float)):
        return f"{value:.{digits}f}" if digits else str(int(value))
    return str(value)


def _format_interval(interval: list[float] | None, digits: int) -> str:
    return "" if interval is None else f"[{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]"


def render_markdown(board: Leaderboard) -> str:
    """Return the leaderboard as Markdown: a heading, how Q was obtained and the table."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = [
        "# SPQR leaderboard",
        "",
        f"Protocol `{board.protocol}`, scenario `{board.scenario}`, {_count_models(board)}. Every score lies in "
        "[0, 1], higher is better; Δh is the rise in harmfulness after benign fine-tuning, in percentage points.",
        "",
        _quality_note(board),
        "",
        "| " + " | ".join(column.title for column in COLUMNS) + " |",
        "|" + "|".join("---" if column.sort_type == "text" else "---:" for column in COLUMNS) + "|",
    ]
    for row in board.rows:
        cells = []
        for column in COLUMNS:
            text = _format(column.value(row), column.digits)
            interval = column.interval(row) if column.interval else None
            if interval is not None:
                text += " " + _format_interval(interval, column.digits)
            cells.append(cell(text))
        lines.append("| " + " | ".join(cells) + " |")
    if board.confidence is not None:
        lines.extend(["", f"Brackets give {round(board.confidence * 100)}% bootstrap intervals over prompts."])
    return "\n".join(lines) + "\n"


def _html_cell(row: Row, column: Column) -> str:
    value = column.value(row)
    css = ' class="text"' if column.sort_type == "text" else ""
    if column.key == "notes":
        css = ' class="text notes"'
    if value is None or value == "":
        return f'<td{css} data-value=""><span class="missing">–</span></td>'
    sort_value = repr(float(value)) if column.sort_type == "number" else str(value)
    text = html.escape(_format(value, column.digits))
    interval = column.interval(row) if column.interval else None
    if interval is not None:
        text += f' <span class="ci">{html.escape(_format_interval(interval, column.digits))}</span>'
    if column.key == "model":
        text = f'<a href="#model-{row.slug}" title="{html.escape(row.path)}">{text}</a>'
    return f'<td{css} data-value="{html.escape(sort_value)}">{text}</td>'


def _html_header(column: Column) -> str:
    css = ' class="text"' if column.sort_type == "text" else ""
    initial = ' aria-sort="descending"' if column.key == "spqr" else ""
    return (
        f'<th scope="col"{css} data-sort-key="{column.key}" data-sort-type="{column.sort_type}" '
        f'data-default-direction="{column.default_direction}"{initial}>{html.escape(column.title)}</th>'
    )


def render_html(board: Leaderboard, figures: dict[str, dict[str, bytes]] | None = None) -> str:
    """Return the leaderboard as a self-contained HTML page built from ``cards/leaderboard.html``.

    Args:
        board: The ranked leaderboard.
        figures: PNG bytes per row slug and figure kind (``radar``, ``categories``), embedded as data URIs.
    """
    template = resources.files("spqr_runners.cards").joinpath("leaderboard.html").read_text(encoding="utf-8")
    rows = "\n".join(
        f'<tr data-order="{order}">' + "".join(_html_cell(row, column) for column in COLUMNS) + "</tr>"
        for order, row in enumerate(board.rows)
    )
    sections = []
    for row in board.rows:
        images = []
        for kind, alt in (("radar", "S, P, Q and R"), ("categories", "harmfulness per category")):
            png = (figures or {}).get(row.slug, {}).get(kind)
            if png is not None:
                data = base64.b64encode(png).decode("ascii")
                images.append(f'<img alt="{alt} of {html.escape(row.label)}" src="data:image/png;base64,{data}">')
        body = "\n".join(images) or "<p>No figures (written with --no-plots).</p>"
        sections.append(
            f'<section class="model" id="model-{row.slug}"><h3>{html.escape(row.label)}</h3>'
            f'<p class="legend">{html.escape(_source(row))} &middot; {html.escape(row.path)}</p>\n{body}</section>'
        )
    notes = ""
    if any(row.results.get("smoke") for row in board.rows):
        notes = '<p class="legend">Smoke runs use random-weight stand-ins for CLIP and the FID features.</p>'
    interval_note = ""
    if board.confidence is not None:
        interval_note = f"Brackets give {round(board.confidence * 100)}% bootstrap intervals over prompts."
    return string.Template(template).substitute(
        title=html.escape(f"SPQR leaderboard: {board.scenario}"),
        protocol=html.escape(board.protocol),
        scenario=html.escape(board.scenario),
        model_count=_count_models(board),
        version=html.escape(_package_version()),
        generated=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        quality_note=html.escape(_quality_note(board)),
        interval_note=interval_note,
        header_cells="".join(_html_header(column) for column in COLUMNS),
        rows=rows,
        notes=notes,
        figures="\n".join(sections),
    )


def _package_version() -> str:
    try:
        return importlib.metadata.version("spqr-benchmark")
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


def render_json(board: Leaderboard) -> str:
    """Return the ranked rows with their rescored scores as JSON."""
    document = {
        "protocol": board.protocol,
        "scenario": board.scenario,
        "quality": board.quality,
        "rows": [
            {
                "rank": row.rank,
                "label": row.label,
                "file": row.path,
                "model": row.results["model"],
                "scores": row.results["scores"],
                "raw": row.results["raw"],
                "intervals": row.results.get("intervals"),
                "flags": row.results.get("flags"),
                "smoke": row.results.get("smoke", False),
            }
            for row in board.rows
        ],
    }
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"

"""Leaderboard figures as PNG bytes: a radar chart of S, P, Q, R per model and harmfulness bars per category.

The figures are drawn on ``matplotlib.figure.Figure`` objects, which render with the Agg backend without
pyplot, so no global backend is switched and no display is needed.
"""

from __future__ import annotations

import io
import math
from typing import Any, Mapping, Sequence

RADAR_AXES = ("S", "P", "Q", "R")
_DPI = 100


def _figure(width: float, height: float) -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(
            "The leaderboard figures need matplotlib: pip install 'spqr-benchmark[plot]', or pass --no-plots."
        ) from error
    return Figure(figsize=(width, height), dpi=_DPI)


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    # An empty Software entry keeps the PNG bytes independent of the matplotlib version.
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def radar_chart(series: Mapping[str, Mapping[str, float | None]], title: str) -> bytes:
    """Draw S, P, Q and R of one or more models on a radar chart with a [0, 1] radial scale.

    Args:
        series: Scores per model label, each a mapping with the keys S, P, Q and R. A missing score is drawn
            at 0 and its axis label reads "n/a".
        title: The chart title.

    Returns:
        The chart as PNG bytes.
    """
    figure = _figure(4.2, 4.2)
    axes = figure.add_subplot(projection="polar")
    angles = [2 * math.pi * i / len(RADAR_AXES) for i in range(len(RADAR_AXES))]
    missing = set()
    for label, scores in series.items():
        values = []
        for name in RADAR_AXES:
            value = scores.get(name)
            if value is None:
                missing.add(name)
            values.append(0.0 if value is None else float(value))
        (line,) = axes.plot([*angles, angles[0]], [*values, values[0]], linewidth=1.5, label=label)
        axes.fill([*angles, angles[0]], [*values, values[0]], color=line.get_color(), alpha=0.15)
    axes.set_xticks(angles)
    axes.set_xticklabels([f"{name} (n/a)" if name in missing else name for name in RADAR_AXES])
    axes.set_ylim(0.0, 1.0)
    axes.set_yticks([0.25, 0.5, 0.75, 1.0])
    axes.set_yticklabels(["0.25", "0.5", "0.75", "1"], fontsize=7)
    axes.set_title(title, fontsize=10, pad=14)
    if len(series) > 1:
        axes.legend(loc="upper right", bbox_to_anchor=(1.35, 1.12), fontsize=7)
    figure.tight_layout()
    return _png(figure)


def category_bars(per_category: Mapping[str, Mapping[str, Any]], title: str) -> bytes:
    """Draw harmfulness per harm category before and after benign fine-tuning as grouped bars.

    Args:
        per_category: ``results["per_category"]``: per category, ``h_before`` and ``h_after`` in percent (None
            when no image of the category was evaluated) and ``n``.
        title: The chart title.

    Returns:
        The chart as PNG bytes. A run without categories gives a chart with a note instead of bars.
    """
    categories: Sequence[str] = sorted(per_category)
    figure = _figure(max(4.2, 0.9 * len(categories) + 1.5), 3.2)
    axes = figure.add_subplot()
    if not categories:
        axes.text(0.5, 0.5, "no per-category counts in the results", ha="center", va="center")
        axes.set_axis_off()
    else:
        positions = list(range(len(categories)))
        width = 0.38
        highest = 0.0
        for offset, key, label in ((-width / 2, "h_before", "before BFT"), (width / 2, "h_after", "after BFT")):
            heights = [per_category[name].get(key) for name in categories]
            highest = max([highest, *(height for height in heights if height is not None)])
            axes.bar(
                [position + offset for position in positions],
                [math.nan if height is None else height for height in heights],
                width=width,
                label=label,
            )
        axes.set_xticks(positions)
        axes.set_xticklabels([f"{name}\n(n={per_category[name].get('n')})" for name in categories], fontsize=8)
        axes.set_ylabel("harmfulness (%)")
        # Room above the highest bar for the legend, within the 0-100 % range of harmfulness.
        axes.set_ylim(0.0, min(100.0, max(10.0, 1.25 * highest)))
        axes.legend(fontsize=8)
    axes.set_title(title, fontsize=10)
    figure.tight_layout()
    return _png(figure)

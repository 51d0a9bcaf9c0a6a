"""Render benchmark results as Markdown and replace a marked section of docs/benchmarks.md with them.

A section is the text between ``<!-- benchmarks:NAME:start -->`` and ``<!-- benchmarks:NAME:end -->``. Only that
text is replaced, so the prose around it stays as written.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

from .common import format_measured, format_ratio, format_target

DEFAULT_DOCUMENT = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
"""The results page in this checkout."""


def section_markers(name: str) -> tuple[str, str]:
    """Return the start and end comment lines that enclose the section ``name``."""
    return f"<!-- benchmarks:{name}:start -->", f"<!-- benchmarks:{name}:end -->"


def replace_section(path: Path, name: str, content: str) -> None:
    """Replace the text between the markers of section ``name`` in the file at ``path`` with ``content``.

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: If the file does not contain both markers, in order, exactly once.
    """
    start, end = section_markers(name)
    text = path.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(start) + r"\n.*?" + re.escape(end), re.DOTALL)
    if text.count(start) != 1 or text.count(end) != 1 or not pattern.search(text):
        raise ValueError(
            f"{path} must contain the lines {start!r} and {end!r} once each, in that order, around the section "
            f"to rewrite; add them where the {name} section belongs."
        )
    replacement = f"{start}\n{content.rstrip()}\n{end}"
    path.write_text(pattern.sub(lambda _: replacement, text, count=1), encoding="utf-8")


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_machine(machine: dict[str, Any]) -> str:
    """Render machine information as one Markdown paragraph."""
    load = machine.get("load_average_1min")
    load_text = f", 1-minute load average {load} at the start" if load is not None else ""
    return (
        f"{machine['cpu']}, {machine['cores']} cores ({machine['usable_cores']} usable){load_text}; "
        f"Python {machine['python']}, torch {machine['torch']}, onnxruntime {machine['onnxruntime']}, "
        f"diffusers {machine['diffusers']}, transformers {machine['transformers']}, peft {machine['peft']}, "
        f"nudenet {machine['nudenet']}."
    )


def render_results_table(results: Sequence[dict[str, Any]]) -> str:
    """Render results as a Markdown table followed by one note per benchmark."""
    lines = [
        "| Benchmark | What is compared | Measured (medians) | Ratio | Target | Result |",
        "|---|---|---|---|---|---|",
    ]
    for result in results:
        verdict = "met" if result["passed"] else "**not met**"
        failed = [name for name, value in result.get("checks", {}).items() if not value]
        if failed:
            verdict += f" (failed check: {', '.join(failed)})"
        measured = format_measured(result["measured"])
        lines.append(
            f"| `{result['benchmark']}` | {_cell(result['description'])} | {_cell(measured)} | "
            f"{format_ratio(result)} ({_cell(result['ratio_definition'])}, median of {result['repeats']}) | "
            f"{format_target(result)} | {verdict} |"
        )
    lines.append("")
    for result in results:
        if result.get("note"):
            lines.append(f"- `{result['benchmark']}`: {result['note']}")
    return "\n".join(lines)


def render_results_section(
    machine: dict[str, Any], results: Sequence[dict[str, Any]], command: str, total_seconds: float
) -> str:
    """Render the results section of docs/benchmarks.md: date, command, machine, table and notes."""
    passed = sum(result["passed"] for result in results)
    return "\n".join([
        f"Measured on {machine['date']} with `{command}`, which took {total_seconds / 60:.1f} minutes.",
        "",
        f"Machine: {render_machine(machine)}",
        "",
        f"{passed} of {len(results)} targets met.",
        "",
        render_results_table(results),
    ])

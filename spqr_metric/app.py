"""Gradio app for the SPQR metric's Space: paste judge verdicts and benign statistics, get the SPQR result.

The app imports the scoring modules next to this file (aggregate, bootstrap, scores, verdicts) as a private
package. It therefore runs the same in a checkout and in a Space, where this folder is the repository root,
and needs neither evaluate nor the rest of the project. Gradio (version 4 or later) is imported only inside
:func:`build_demo`, so importing this file does not need it.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import sys
import types
import warnings
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
_PACKAGE = "_spqr_space_scoring"

_EXAMPLE_BEFORE = json.dumps(["clean"] * 19 + ["flagged"])
_EXAMPLE_AFTER = json.dumps(["clean"] * 18 + ["flagged", "flagged"])


def _scoring_module() -> types.ModuleType:
    """Import aggregate.py from this folder inside a synthetic package, so its relative imports resolve."""
    if _PACKAGE not in sys.modules:
        package = types.ModuleType(_PACKAGE)
        package.__path__ = [str(_HERE)]
        sys.modules[_PACKAGE] = package
    return importlib.import_module(f"{_PACKAGE}.aggregate")


def _parse_json(text: str | None, name: str) -> Any:
    """Parse a JSON text field; a blank field means the input was not given."""
    if text is None or not text.strip():
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{name} is not valid JSON ({error.msg} at character {error.pos}): {text[:80]!r}") from None


def _optional_number(value: Any) -> float | None:
    """Return None for an empty number field (Gradio sends None or NaN), else the value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value


def _as_int(value: Any, name: str) -> Any:
    """Convert a whole float from a number field (for example 1000.0) to int; leave other values to validation."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if value is None:
        raise ValueError(f"{name} is empty; enter a whole number.")
    return value


def score_from_text(
    harmful_before: str,
    harmful_after: str,
    categories: str = "",
    prompt_ids: str = "",
    clip_cosines: str = "",
    mean_cosine: float | None = None,
    fid: float | None = None,
    fid_bounds: str = "",
    ceiling: float = 0.30,
    weights: str = "",
    undetermined: str = "safe",
    bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Parse the app's text and number fields and return the result of ``score_run``.

    List inputs (verdicts, categories, prompt ids, cosines, FID bounds, weights) are JSON text; a blank field
    means the input was not given.

    Raises:
        ValueError: If a field is not valid JSON or ``score_run`` rejects a value. The message names the field.
    """
    return _scoring_module().score_run(
        harmful_before=_parse_json(harmful_before, "harmful_before"),
        harmful_after=_parse_json(harmful_after, "harmful_after"),
        categories=_parse_json(categories, "categories"),
        prompt_ids=_parse_json(prompt_ids, "prompt_ids"),
        clip_cosines=_parse_json(clip_cosines, "clip_cosines"),
        mean_cosine=_optional_number(mean_cosine),
        fid=_optional_number(fid),
        fid_bounds=_parse_json(fid_bounds, "fid_bounds"),
        ceiling=ceiling,
        weights=_parse_json(weights, "weights"),
        undetermined=undetermined,
        bootstrap=_as_int(bootstrap, "bootstrap"),
        confidence=confidence,
        seed=_as_int(seed, "seed"),
    )


def _card_body() -> str:
    """Return the metric card without its YAML header, or an empty string when the card is missing."""
    card = _HERE / "README.md"
    if not card.is_file():
        return ""
    text = card.read_text(encoding="utf-8")
    if text.startswith("---"):
        _, _, text = text.partition("\n---")
        text = text.partition("\n")[2]
    return text


def build_demo() -> Any:
    """Build the Gradio Blocks app. Requires gradio 4 or later."""
    import gradio as gr

    def run(*fields: Any) -> dict[str, Any]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                result = score_from_text(*fields)
            except ValueError as error:
                raise gr.Error(str(error)) from None
        for warning in caught:
            gr.Warning(str(warning.message))
        return result

    with gr.Blocks(title="SPQR metric") as demo:
        gr.Markdown("# SPQR: Safety, Prompt adherence, Quality and Robustness")
        with gr.Row():
            with gr.Column():
                harmful_before = gr.Textbox(
                    label="harmful_before (JSON list, one verdict per harmful prompt before fine-tuning)",
                    value=_EXAMPLE_BEFORE,
                    lines=3,
                )
                harmful_after = gr.Textbox(
                    label="harmful_after (JSON list, same prompts after benign fine-tuning)",
                    value=_EXAMPLE_AFTER,
                    lines=3,
                )
                categories = gr.Textbox(label="categories (JSON list, optional)")
                prompt_ids = gr.Textbox(label="prompt_ids (JSON list, optional)")
                clip_cosines = gr.Textbox(label="clip_cosines (JSON list of CLIP cosines on benign prompts)")
                mean_cosine = gr.Number(label="mean_cosine (instead of clip_cosines)", value=0.29)
                fid = gr.Number(label="fid", value=18.0)
                fid_bounds = gr.Textbox(
                    label="fid_bounds (JSON [lowest, highest] FID of the cohort)", value="[12, 30]"
                )
            with gr.Column():
                ceiling = gr.Number(label="ceiling (mean cosine counted as full adherence)", value=0.30)
                weights = gr.Textbox(label='weights (JSON, e.g. {"s": 1, "p": 1, "q": 1, "r": 1}; blank = equal)')
                undetermined = gr.Dropdown(
                    label="undetermined verdicts count as", choices=["safe", "unsafe", "exclude"], value="safe"
                )
                bootstrap = gr.Number(label="bootstrap resamples (0 = no intervals)", value=1000, precision=0)
                confidence = gr.Number(label="confidence", value=0.95)
                seed = gr.Number(label="seed", value=0, precision=0)
                button = gr.Button("Compute SPQR", variant="primary")
                output = gr.JSON(label="result")
        inputs = [
            harmful_before,
            harmful_after,
            categories,
            prompt_ids,
            clip_cosines,
            mean_cosine,
            fid,
            fid_bounds,
            ceiling,
            weights,
            undetermined,
            bootstrap,
            confidence,
            seed,
        ]
        button.click(run, inputs=inputs, outputs=output)
        gr.Markdown(_card_body())
    return demo


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    build_demo().launch()

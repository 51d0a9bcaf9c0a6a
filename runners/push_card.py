"""Read, update and check the model card (README.md) that ``spqr push`` writes SPQR results into.

The card keeps everything it had: other metadata, other benchmarks' ``model-index`` results and the body.
``spqr push`` adds or replaces its ``model-index`` metrics and one results section per scenario, delimited
by HTML comments so that a later push of the same scenario replaces only that section.
"""

from __future__ import annotations

import logging
import re
from importlib import resources
from typing import Any, Sequence

import yaml

logger = logging.getLogger(__name__)

CARD_TAG = "spqr"
_SECTION_END = "<!-- /spqr-results -->"


def _section_start(scenario: str) -> str:
    return f'<!-- spqr-results scenario="{scenario}" -->'


def load_card(text: str | None, repo_id: str, revision: str) -> tuple[Any, list[dict[str, Any]]]:
    """Parse the repository's README.md into a huggingface_hub ``ModelCard``, strictly.

    Returns:
        ``(card, model_index)``: the card, and its ``model-index`` list as plain YAML data (``[]`` when it has
        none). The plain list keeps keys that the card's ``EvalResult`` objects do not model.

    Args:
        text: The README.md content, or None when the repository has none (a card is then created from
            ``cards/model_card_skeleton.md``).
        repo_id: The repository, for messages.
        revision: The commit the text was read at, for messages.

    Raises:
        ValueError: If the YAML metadata block is not valid YAML, not a mapping, or has a ``model-index``
            that huggingface_hub cannot read. The message names the repository and the fix.
    """
    from huggingface_hub import ModelCard
    from huggingface_hub.repocard import REGEX_YAML_BLOCK

    if text is None:
        skeleton = resources.files("spqr_runners.cards").joinpath("model_card_skeleton.md").read_text("utf-8")
        return ModelCard("---\n\n---\n\n" + skeleton.format(title=repo_id.split("/")[-1])), []

    where = f"README.md of {repo_id} (revision {revision[:12]})"
    fix = (
        "Fix the metadata block between the '---' lines at the top of README.md (for example in the Hub's "
        "file editor), then run `spqr push` again"
    )
    metadata = None
    match = REGEX_YAML_BLOCK.search(text)
    if match is not None:
        try:
            metadata = yaml.safe_load(match.group(2))
        except yaml.YAMLError as error:
            raise ValueError(f"The YAML metadata of {where} is invalid: {error}. {fix}.") from error
        if metadata is not None and not isinstance(metadata, dict):
            raise ValueError(
                f"The YAML metadata of {where} must be a mapping, got a {type(metadata).__name__}. {fix}."
            )
    try:
        card = ModelCard(text, ignore_metadata_errors=False)
    except ValueError as error:
        # huggingface_hub raises its ValueError while handling the KeyError or TypeError that names the field.
        cause = error.__context__ if isinstance(error.__context__, (KeyError, TypeError)) else error
        raise ValueError(
            f"{where} has a model-index that huggingface_hub cannot read ({type(cause).__name__}: {cause}). "
            "Every model-index entry needs "
            f"'name' and 'results', each result 'task.type', 'dataset.type', 'dataset.name' and 'metrics' with "
            f"'type' and 'value'. {fix}."
        ) from error
    return card, list((metadata or {}).get("model-index") or [])


def set_model_index(card: Any, model_index: list[dict[str, Any]]) -> None:
    """Make ``card`` write ``model_index`` as its ``model-index`` verbatim, not rebuilt from ``EvalResult`` objects."""
    card.data.eval_results = None
    card.data.model_name = None
    card.data["model-index"] = model_index


def add_tag(card: Any, tag: str = CARD_TAG) -> None:
    """Add ``tag`` to the card's tags unless it is there already, keeping the others."""
    tags = list(card.data.tags or [])
    if tag not in tags:
        card.data.tags = [*tags, tag]


def upsert_results_section(body: str, scenario: str, section: str) -> str:
    """Return ``body`` with the results section of ``scenario`` replaced, or appended when it has none.

    Args:
        body: The card's Markdown body (without the YAML block).
        scenario: The scenario the section reports, e.g. ``multilingual:ar``.
        section: The rendered section (``spqr_runners.results.render_results_section``). A first line that is
            a ``## `` heading gets the scenario appended, so that the sections of several scenarios can be
            distinguished.
    """
    lines = section.strip("\n").split("\n")
    if lines and lines[0].startswith("## "):
        lines[0] = f"{lines[0]} (scenario `{scenario}`)"
    block = "\n".join([_section_start(scenario), *lines, _SECTION_END])
    pattern = re.compile(re.escape(_section_start(scenario)) + r".*?" + re.escape(_SECTION_END), re.DOTALL)
    if pattern.search(body):
        return pattern.sub(lambda _: block, body, count=1)
    return body.rstrip("\n") + "\n\n" + block + "\n"


def check_card(content: str, expected: Sequence[Any]) -> None:
    """Check, strictly, that ``content`` is a valid model card whose ``model-index`` contains ``expected``.

    Raises:
        ValueError: If the card does not parse with ``ignore_metadata_errors=False``, or an expected
            ``EvalResult`` is not in it after the YAML round trip.
    """
    from huggingface_hub import ModelCard

    card = ModelCard(content, ignore_metadata_errors=False)
    found = card.data.eval_results or []
    missing = [result.metric_type for result in expected if result not in found]
    if missing:
        raise ValueError(f"The new card lost the metrics {missing} in its YAML round trip; this is a bug.")


def check_eval_entries(text: str, expected: Sequence[dict[str, Any]], where: str) -> None:
    """Check that a new ``.eval_results`` file parses and contains every expected entry.

    Raises:
        ValueError: If it does not.
    """
    from .eval_entries import parse_eval_entries

    entries = parse_eval_entries(text, where)
    missing = [entry["dataset"]["task_id"] for entry in expected if entry not in entries]
    if missing:
        raise ValueError(f"The new {where} lost the entries {missing} in its YAML round trip; this is a bug.")

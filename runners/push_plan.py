"""Compute what ``spqr push`` would write: read a model repository's card and eval results, merge a run into them.

Planning only reads from the Hub, so a dry run is a plan that is printed instead of committed.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
from typing import Any, Sequence

import yaml

from .eval_entries import (
    MetricChange,
    build_eval_entries,
    build_eval_results,
    merge_eval_entries,
    merge_model_index,
    parse_eval_entries,
)
from .push_card import (
    add_tag,
    check_card,
    check_eval_entries,
    load_card,
    set_model_index,
    upsert_results_section,
)
from .result_files import derive_scenario

logger = logging.getLogger(__name__)

CARD_PATH = "README.md"
EVAL_RESULTS_PATH = ".eval_results/spqr.yaml"
SOURCE_NAME = "spqr-benchmark"


class PushError(ValueError):
    """Raised when results cannot be pushed: invalid input, an unreadable card, a conflict or a Hub error."""


class MetricConflictError(PushError):
    """Raised when the repository already reports a different value for a metric and overwriting is off."""

    def __init__(self, message: str, conflicts: Sequence[MetricChange]):
        super().__init__(message)
        self.conflicts = list(conflicts)


@dataclasses.dataclass
class PushPlan:
    """Files and metric changes of a push, computed from the repository's current files without writing anything."""

    repo_id: str
    revision: str  # branch the card was read from and the commit goes to
    parent_commit: str  # commit the files were read at; the commit fails if the branch moved since
    files: dict[str, str]  # path to new content, only for files that change
    changes: list[MetricChange]
    scenario: str
    create_pr: bool = False

    def render(self) -> str:
        """Return a readable description of the plan: target, metric changes and the full new files."""
        mode = "a pull request against" if self.create_pr else "a commit on"
        lines = [f"Target: {self.repo_id}, {mode} {self.revision} (read at {self.parent_commit[:12]})"]
        lines.append(f"Scenario: {self.scenario}")
        for change in self.changes:
            value_text = str(change.new_value)
            if change.action in ("overwrite", "conflict"):
                value_text = f"{change.old_value} -> {change.new_value}"
            lines.append(f"  {change.file}: {change.action:<9} {change.metric}: {value_text}")
        if not self.files:
            lines.append("Nothing to write: the repository already has these results.")
        for path, content in self.files.items():
            lines.extend(["", f"===== {path} =====", content.rstrip("\n")])
        return "\n".join(lines)


def hub_error(error: Exception, repo_id: str, action: str) -> PushError:
    """Return a PushError that names what failed on the Hub and the fix. It never contains the token."""
    from huggingface_hub import constants
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    if isinstance(error, RepositoryNotFoundError):
        return PushError(
            f"Model repository {repo_id!r} was not found at {constants.ENDPOINT}, or your token cannot read it. "
            "Check --repo-id, and log in (`hf auth login` or HF_TOKEN) for a private repository."
        )
    if isinstance(error, RevisionNotFoundError):
        return PushError(f"Revision not found in {repo_id!r}: {error}. Check --revision.")
    status = getattr(getattr(error, "response", None), "status_code", None)
    if status == 401:
        return PushError(
            f"The Hub rejected the request to {action} {repo_id!r} (HTTP 401) because no valid token was sent. "
            "Log in with `hf auth login` or set HF_TOKEN."
        )
    if status == 403:
        return PushError(
            f"The Hub rejected the request to {action} {repo_id!r} (HTTP 403): the token has no write access. "
            "Use a token with write access, or pass --create-pr to open a pull request instead."
        )
    if status == 412:
        return PushError(f"{repo_id!r} changed while pushing (HTTP 412). Run `spqr push` again to merge with it.")
    return PushError(f"Failed to {action} {repo_id!r}: {error}")


def network_errors() -> tuple[type[Exception], ...]:
    """Return the error types for a Hub that cannot be reached: refused connections, DNS failures, timeouts.

    huggingface_hub raises its HTTP client's transport errors for these, not ``HfHubHTTPError``. The client
    package has changed between releases, so each known one is looked up if it is installed.
    """
    errors: list[type[Exception]] = [ConnectionError, TimeoutError]
    for module_name in ("httpx2", "httpx"):
        try:
            errors.append(importlib.import_module(module_name).TransportError)
        except (ImportError, AttributeError):
            continue
    return tuple(errors)


def unreachable_error(error: Exception, repo_id: str, action: str) -> PushError:
    """Return a PushError for a Hub that could not be reached, with the endpoint and what to check."""
    from huggingface_hub import constants

    return PushError(
        f"Could not reach the Hub at {constants.ENDPOINT} to {action} {repo_id!r} ({type(error).__name__}: "
        f"{error}). Check the network connection and HF_ENDPOINT. A dry run needs this too, because it reads the "
        "repository's current card."
    )


def _read_text(api: Any, repo_id: str, path: str, commit: str) -> str:
    local_path = api.hf_hub_download(repo_id, path, revision=commit)
    with open(local_path, encoding="utf-8-sig") as stream:
        return stream.read()


def plan_push(
    results: dict[str, Any],
    repo_id: str,
    *,
    dataset_id: str,
    dataset_revision: str | None = None,
    revision: str | None = None,
    overwrite: bool = False,
    create_pr: bool = False,
    source_url: str | None = None,
    validate: bool = True,
    api: Any = None,
) -> PushPlan:
    """Read the repository's card and eval results, merge the run's results into them, and return the plan.

    Only reads from the Hub (repository info and file downloads).

    Args:
        results: The run's results.json content, checked with :func:`check_push_inputs`.
        repo_id: The model repository, as ``ORG/MODEL``.
        dataset_id: Hub id of the prompt dataset.
        dataset_revision: Commit of the prompt dataset; defaults to the one the run recorded.
        revision: Branch to read from and commit to; ``main`` when None.
        overwrite: Replace metrics that already have a different value instead of raising.
        create_pr: Whether the plan is for a pull request (recorded in the plan only).
        source_url: Source link of every result; defaults to the prompt dataset's page on the Hub.
        validate: Check the new files strictly before returning (parse them back, as huggingface_hub does).
        api: An ``HfApi``; a default one when None.

    Raises:
        PushError: If the repository cannot be read, its card or eval results are malformed, or a metric
            already has a different value and ``overwrite`` is False (:class:`MetricConflictError`).
    """
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError
    from huggingface_hub.repocard_data import eval_results_to_model_index

    from .results import render_results_section

    api = api or HfApi()
    revision = revision or constants.DEFAULT_REVISION
    try:
        info = api.model_info(repo_id, revision=revision)
        present = {sibling.rfilename for sibling in info.siblings or []}
        card_text = _read_text(api, repo_id, CARD_PATH, info.sha) if CARD_PATH in present else None
        eval_text = _read_text(api, repo_id, EVAL_RESULTS_PATH, info.sha) if EVAL_RESULTS_PATH in present else None
    except HfHubHTTPError as error:
        raise hub_error(error, repo_id, "read") from error
    except network_errors() as error:
        raise unreachable_error(error, repo_id, "read") from error
    logger.info("Read %s at %s (card: %s)", repo_id, info.sha[:12], "yes" if card_text is not None else "none")

    scenario = derive_scenario(results)
    source_url = source_url or f"{constants.ENDPOINT}/datasets/{dataset_id}"
    targets = {"dataset_id": dataset_id, "dataset_revision": dataset_revision, "source_url": source_url,
               "source_name": SOURCE_NAME}

    # 1. model-index and the results section of README.md.
    try:
        card, existing_index = load_card(card_text, repo_id, info.sha)
    except ValueError as error:
        raise PushError(str(error)) from error
    new_results = build_eval_results(results, **targets)
    # SPQR results join the card's first model entry, or a new one named after the repository.
    model_name = (existing_index[0].get("name") if existing_index else None) or repo_id.split("/")[-1]
    merged_index, changes = merge_model_index(
        existing_index, eval_results_to_model_index(model_name, new_results), overwrite=overwrite
    )
    set_model_index(card, merged_index)
    add_tag(card)
    try:
        section = render_results_section(results)
    except KeyError as error:
        raise PushError(
            f"The results lack {error}, which the model card's results section shows; rerun `spqr run` to "
            "regenerate results.json."
        ) from error
    card.text = upsert_results_section(card.text, scenario, section)
    new_card = str(card)

    # 2. .eval_results/spqr.yaml.
    where = f"{EVAL_RESULTS_PATH} of {repo_id} (revision {info.sha[:12]})"
    try:
        existing_entries = parse_eval_entries(eval_text, where) if eval_text is not None else []
    except ValueError as error:
        raise PushError(str(error)) from error
    new_entries = build_eval_entries(results, **targets)
    merged_entries, entry_changes = merge_eval_entries(
        existing_entries, new_entries, file=EVAL_RESULTS_PATH, overwrite=overwrite
    )
    changes.extend(entry_changes)
    new_eval_text = yaml.safe_dump(merged_entries, sort_keys=False, allow_unicode=True)

    conflicts = [change for change in changes if change.action == "conflict"]
    if conflicts:
        listing = "\n".join(
            f"- {c.file}: {c.metric}: {c.old_value} in the repository, {c.new_value} in these results"
            for c in conflicts
        )
        raise MetricConflictError(
            f"{repo_id} already reports different values for {len(conflicts)} metric(s):\n{listing}\n"
            "Pass --overwrite to replace them, with --create-pr to have them reviewed first.",
            conflicts,
        )

    # 3. Strict check of what would be written, before anything leaves this machine.
    if validate:
        try:
            check_card(new_card, new_results)
            check_eval_entries(new_eval_text, new_entries, where)
        except ValueError as error:
            raise PushError(f"The new files failed validation: {error}") from error

    files = {}
    if new_card != card_text:
        files[CARD_PATH] = new_card
    if new_eval_text != eval_text and (merged_entries or eval_text is not None):
        files[EVAL_RESULTS_PATH] = new_eval_text
    return PushPlan(repo_id, revision, info.sha, files, changes, scenario, create_pr)

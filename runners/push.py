"""``spqr push``: write a run's SPQR scores into a model repository on the Hub.

One commit (or pull request) updates two files:

- ``README.md``: the scores as ``model-index`` metrics (raw values and intervals in each metric's ``args``) and
  a results section for the run's scenario;
- ``.eval_results/spqr.yaml``: one entry per task of the prompt dataset's ``eval.yaml``, which the Hub's
  benchmark leaderboards collect.

Both are merged with what the repository has. Other benchmarks' results stay untouched, and a different
value for a metric that is already there is an error unless ``overwrite`` is set. The token comes from the
usual huggingface_hub sources (``HF_TOKEN``, ``hf auth login``) and is never logged or written.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from typing import Any

from .push_plan import (
    MetricConflictError,
    PushError,
    PushPlan,
    hub_error,
    network_errors,
    plan_push,
    unreachable_error,
)
from .result_files import is_hub_id, read_results

__all__ = ["MetricConflictError", "PushError", "PushOutcome", "PushPlan", "check_push_inputs", "plan_push",
           "push_results", "register"]

logger = logging.getLogger(__name__)



@dataclasses.dataclass
class PushOutcome:
    """Result of a push: its plan and the URL of the commit or pull request it made."""

    plan: PushPlan
    commit_url: str | None = None  # None for a dry run or when nothing changed
    pr_url: str | None = None


def check_push_inputs(
    results: dict[str, Any], repo_id: str, dataset_id: str | None, allow_smoke: bool = False
) -> str:
    """Check that the results may be pushed to ``repo_id`` and return the Hub id of their prompt dataset.

    Raises:
        PushError: If ``repo_id`` is not ``namespace/name``, the run is a smoke run and ``allow_smoke`` is
            False, its harmful or benign prompts came from a local file, or no Hub dataset id is known.
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise PushError(f"--repo-id {repo_id!r} is not a valid Hub repository id: {error}") from error
    if "/" not in repo_id:
        raise PushError(f"--repo-id {repo_id!r} must name the namespace too, as ORG/MODEL.")
    if results.get("smoke") and not allow_smoke:
        raise PushError(
            "These are smoke results (random-weight stand-ins for CLIP and the FID features), which do not measure "
            "the model. Push results of a real run, or pass --allow-smoke to push them anyway, marked as smoke."
        )
    for role in ("harmful", "benign"):
        prompt_file = results["prompts"][role].get("file")
        if prompt_file:
            raise PushError(
                f"The {role} prompts came from the local file {prompt_file!r}, not from a split of the prompt "
                "dataset, so the scores cannot be reported against its tasks. Rerun with prompts from the dataset."
            )
    if dataset_id is None:
        recorded = results["prompts"]["harmful"].get("dataset")
        if not recorded or not is_hub_id(recorded):
            raise PushError(
                f"The run's prompts came from {recorded!r}, which is not a Hub dataset id. Pass --dataset-id "
                "ORG/NAME naming the Hub dataset those prompts are published in (`spqr prompts push`)."
            )
        dataset_id = str(recorded)
    elif not is_hub_id(dataset_id):
        raise PushError(f"--dataset-id {dataset_id!r} must be a Hub dataset id such as ORG/spqr-prompts.")
    return dataset_id


def push_results(
    results: dict[str, Any],
    repo_id: str,
    *,
    dataset_id: str | None = None,
    dataset_revision: str | None = None,
    revision: str | None = None,
    overwrite: bool = False,
    create_pr: bool = False,
    dry_run: bool = False,
    validate: bool = True,
    allow_smoke: bool = False,
    source_url: str | None = None,
    commit_message: str | None = None,
) -> PushOutcome:
    """Write a run's SPQR results into a model repository's card and ``.eval_results/spqr.yaml``.

    Args:
        results: The run's results.json content (see :func:`spqr_runners.result_files.read_results`).
        repo_id: The model repository, as ``ORG/MODEL``. It must exist.
        dataset_id: Hub id of the prompt dataset; defaults to the dataset the run recorded, if it is a Hub id.
        dataset_revision: Commit of the prompt dataset; defaults to the one the run recorded.
        revision: Branch to read from and commit to; ``main`` when None.
        overwrite: Replace metrics that already have a different value.
        create_pr: Open a pull request instead of committing to ``revision``.
        dry_run: Compute the plan and stop; only read requests reach the Hub.
        validate: Check the new files strictly before the commit: the card must parse back with
            ``ignore_metadata_errors=False`` and contain every new metric, and the eval results must parse back
            with every new entry. The Hub validates README.md metadata on every commit regardless.
        allow_smoke: Push smoke results (random-weight P and Q stand-ins) into ``model-index``, marked as smoke in
            every metric. They never go into ``.eval_results``.
        source_url: Source link of every result; defaults to the prompt dataset's page on the Hub.
        commit_message: Title of the commit or pull request.

    Returns:
        The plan and, unless it was a dry run or nothing changed, the commit and pull request URLs.

    Raises:
        PushError: See :func:`check_push_inputs` and :func:`plan_push`, and when the Hub rejects the card or
            the commit.
    """
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    dataset_id = check_push_inputs(results, repo_id, dataset_id, allow_smoke)
    if not validate:
        logger.warning("Strict checks of the new card and eval results are off (--no-validate).")
    api = HfApi()
    plan = plan_push(
        results, repo_id, dataset_id=dataset_id, dataset_revision=dataset_revision, revision=revision,
        overwrite=overwrite, create_pr=create_pr, source_url=source_url, validate=validate, api=api,
    )
    if dry_run:
        logger.info("Dry run: %d file(s) would change in %s; nothing was sent.", len(plan.files), repo_id)
        return PushOutcome(plan)
    if not plan.files:
        logger.info("%s already has these results; nothing to commit.", repo_id)
        return PushOutcome(plan)

    added = sum(change.action == "add" for change in plan.changes)
    replaced = sum(change.action in ("overwrite", "refresh") for change in plan.changes)
    title = commit_message or f"{'Add' if not replaced else 'Update'} SPQR results (scenario {plan.scenario})"
    description = (
        f"SPQR protocol {results['protocol']}, scenario {plan.scenario}: {added} metric(s) added, {replaced} "
        f"replaced, written by `spqr push`."
    )
    operations = [CommitOperationAdd(path, content.encode("utf-8")) for path, content in plan.files.items()]
    try:
        info = api.create_commit(
            repo_id,
            operations=operations,
            commit_message=title,
            commit_description=description,
            revision=plan.revision,
            create_pr=create_pr,
            parent_commit=plan.parent_commit,
        )
    except HfHubHTTPError as error:
        raise hub_error(error, repo_id, "commit to") from error
    except network_errors() as error:
        raise unreachable_error(error, repo_id, "commit to") from error
    except ValueError as error:
        # create_commit sends README.md to the Hub's metadata validator first and raises ValueError on rejection.
        raise PushError(f"The Hub rejected the new README.md of {repo_id}: {error}") from error
    logger.info("Pushed SPQR results to %s: %s", repo_id, info.pr_url or info.commit_url)
    return PushOutcome(plan, commit_url=info.commit_url, pr_url=info.pr_url)


def _command_push(args: argparse.Namespace) -> int:
    from .cohort import rescore_with_fid_bounds

    try:
        results = read_results(args.results)
        if args.fid_bounds is not None:
            results = rescore_with_fid_bounds(results, args.fid_bounds)
        elif (results.get("flags") or {}).get("q_from_single_model_cohort"):
            logger.warning(
                "Q is 0.5 because the run was scored alone, and SPQR depends on it. Pass --fid-bounds MIN MAX "
                "(e.g. from `spqr leaderboard`) to report Q on a cohort's scale."
            )
        outcome = push_results(
            results,
            args.repo_id,
            dataset_id=args.dataset_id,
            dataset_revision=args.dataset_revision,
            revision=args.revision,
            overwrite=args.overwrite,
            create_pr=args.create_pr,
            dry_run=args.dry_run,
            validate=not args.no_validate,
            allow_smoke=args.allow_smoke,
            source_url=args.source_url,
            commit_message=args.commit_message,
        )
    except PushError as error:
        logger.debug("Push failed", exc_info=True)
        print(f"spqr: error: {error}", file=sys.stderr)
        return 1
    if args.dry_run:
        print("Dry run: nothing was sent to the Hub. These files would be written:\n")
    print(outcome.plan.render())
    if outcome.pr_url:
        print(f"\nOpened pull request: {outcome.pr_url}")
    elif outcome.commit_url:
        print(f"\nCommitted: {outcome.commit_url}")
    return 0


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``push`` subcommand to the ``spqr`` command line's subparsers and return its parser."""
    from .cli import COMMANDS_ELSEWHERE

    parser = subparsers.add_parser(
        "push",
        help=COMMANDS_ELSEWHERE["push"][1],
        description="Merge a run's SPQR scores into the model card's model-index and results section and into "
        ".eval_results/spqr.yaml, in one commit or pull request. The token comes from HF_TOKEN or `hf auth login`.",
    )
    parser.add_argument("--results", required=True, help="results.json written by `spqr run`, or its run folder")
    parser.add_argument("--repo-id", required=True, help="model repository to write to, as ORG/MODEL (must exist)")
    parser.add_argument("--dataset-id", help="Hub id of the prompt dataset the run used (default: the dataset "
                        "recorded in the results, when it is a Hub id)")
    parser.add_argument("--dataset-revision", help="commit of the prompt dataset (default: the one recorded)")
    parser.add_argument("--revision", help="branch to read the card from and to commit to (default: main)")
    parser.add_argument("--fid-bounds", nargs=2, type=float, metavar=("MIN", "MAX"),
                        help="recompute Q (and SPQR) against these FID bounds of a cohort before pushing")
    parser.add_argument("--source-url", help="source link stored with every result (default: the prompt "
                        "dataset's page on the Hub)")
    parser.add_argument("--overwrite", action="store_true", help="replace metrics that already have another value")
    parser.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing")
    parser.add_argument("--dry-run", action="store_true", help="print the files that would be written; only "
                        "read requests reach the Hub")
    parser.add_argument("--no-validate", action="store_true", help="skip the strict local checks of the new card "
                        "and eval results (the Hub still validates the card's metadata on commit)")
    parser.add_argument("--allow-smoke", action="store_true", help="push smoke results (demo runs) into model-index, "
                        "marked as smoke")
    parser.add_argument("--commit-message", help="title of the commit or pull request")
    parser.set_defaults(handler=_command_push)
    return parser

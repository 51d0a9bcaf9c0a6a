"""`spqr metric push`: publish the SPQR ``evaluate`` metric as a Gradio Space on the Hugging Face Hub.

``evaluate.load("ORG/NAME")`` downloads the script ``NAME.py`` from the Space ``ORG/NAME``, plus every file
that the script imports relatively on an unindented line. It does not follow imports inside those files. So
the Space contains the metric script renamed after the Space, the scoring modules it imports (aggregate,
bootstrap, buffer_rows, image_inputs, scores, verdicts), the metric card as README.md, the Gradio ``app.py``
and ``requirements.txt``.

The image inputs of the metric (judges, CLIP, FID) are not copied into the Space: the judges are a
subpackage, which evaluate cannot copy. ``image_inputs`` imports them from the installed ``spqr_metric``
package when images are scored, so a user who scores images installs spqr-benchmark. Verdict inputs need only
evaluate. The Space's requirements.txt lists only what ``app.py`` needs, because a Space installs it for the
app and ``evaluate.load`` never reads it.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import importlib.metadata
import logging
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import spqr_metric

logger = logging.getLogger(__name__)

METRIC_DIR = Path(spqr_metric.__file__).resolve().parent
SCRIPT_NAME = "spqr_metric.py"
SPACE_FILES = ("README.md", "app.py", "requirements.txt")
"""Files copied to the Space unchanged, besides the script and the modules it imports."""

# The Hub allows letters, digits, "-", "_" and "." in repository names (at most 96 characters). evaluate imports
# the script as a module named after the Space, so a "." would split that name.
_SPACE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,95}")
_OWNER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}")


@dataclass(frozen=True)
class SpaceFile:
    """A file that :func:`publish_metric` uploads to the Space."""

    path_in_repo: str
    local_path: Path
    size: int
    sha256: str


def _relative_imports(path: Path) -> list[str]:
    """Return the modules that ``path`` imports relatively on unindented lines, the only ones evaluate copies."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = []
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module and node.module not in names:
            names.append(node.module)
    return names


def script_modules(metric_dir: Path = METRIC_DIR) -> list[str]:
    """Return the modules that the metric script imports relatively, in import order.

    Raises:
        RuntimeError: If one of them imports a module relatively that the script does not import itself.
            evaluate would not copy that module, so the published metric would fail to import.
    """
    modules = _relative_imports(metric_dir / SCRIPT_NAME)
    for module in modules:
        missing = [name for name in _relative_imports(metric_dir / f"{module}.py") if name not in modules]
        if missing:
            raise RuntimeError(
                f"{module}.py imports {missing} relatively, but {SCRIPT_NAME} does not, so evaluate would not copy "
                f"them to the Space. Add `from .{missing[0]} import ...` to {SCRIPT_NAME}."
            )
    return modules


def check_repo_id(repo_id: str) -> str:
    """Check that ``repo_id`` can name the Space of the metric and return its name part.

    Raises:
        ValueError: If it is not ``owner/name``, the name contains a character other than letters, digits,
            "-" and "_", or the name equals one of the scoring modules (evaluate rejects a script that
            imports a module with its own name).
    """
    owner, _, name = repo_id.partition("/") if isinstance(repo_id, str) else ("", "", "")
    if not _OWNER.fullmatch(owner) or not _SPACE_NAME.fullmatch(name):
        raise ValueError(
            f"Invalid Space id {repo_id!r}: use owner/name, where the name has only letters, digits, '-' and '_' "
            "(evaluate imports the metric as a module of that name), e.g. my-org/spqr."
        )
    if name in script_modules():
        raise ValueError(
            f"The Space name {name!r} equals a module that the metric imports, and evaluate rejects a script that "
            "imports itself; choose another name, e.g. spqr."
        )
    return name


def collect_files(repo_id: str, metric_dir: Path = METRIC_DIR) -> list[SpaceFile]:
    """List the files of the Space ``repo_id``: the script as ``<name>.py``, its modules, card, app, requirements.

    Raises:
        ValueError: If ``repo_id`` cannot name the Space (see :func:`check_repo_id`).
        FileNotFoundError: If a file is missing from ``metric_dir``.
    """
    name = check_repo_id(repo_id)
    sources = [(f"{name}.py", metric_dir / SCRIPT_NAME)]
    sources += [(f"{module}.py", metric_dir / f"{module}.py") for module in script_modules(metric_dir)]
    sources += [(file_name, metric_dir / file_name) for file_name in SPACE_FILES]
    files = []
    for path_in_repo, local_path in sources:
        if not local_path.is_file():
            raise FileNotFoundError(f"{local_path} not found; the metric folder {metric_dir} is incomplete.")
        content = local_path.read_bytes()
        files.append(SpaceFile(path_in_repo, local_path, len(content), hashlib.sha256(content).hexdigest()))
    return files


def publish_metric(
    repo_id: str, *, dry_run: bool = False, token: str | None = None, create_pr: bool = False
) -> tuple[list[SpaceFile], str | None]:
    """Create or update the Gradio Space ``repo_id`` so that ``evaluate.load(repo_id)`` loads the SPQR metric.

    The Space is created if it does not exist. Files in it that are not part of the metric are left as they
    are. The token is never logged.

    Args:
        repo_id: ``owner/name`` of the Space. The script is uploaded as ``name.py``.
        dry_run: Only list the files, sending no request.
        token: Hub token with write access. Defaults to huggingface_hub's usual sources (``HF_TOKEN`` or
            ``hf auth login``).
        create_pr: Open a pull request instead of committing to the main branch.

    Returns:
        The uploaded files and the URL of the commit or pull request (None on a dry run, or when
        ``create_pr`` is set and every file already matches the Space).

    Raises:
        ValueError: If ``repo_id`` cannot name the Space.
        huggingface_hub.errors.HfHubHTTPError: If the Hub rejects a request, e.g. without a write token.
    """
    files = collect_files(repo_id)
    if dry_run:
        return files, None

    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="space", space_sdk="gradio", exist_ok=True)
    operations = [CommitOperationAdd(item.path_in_repo, str(item.local_path)) for item in files]
    commit = api.create_commit(
        repo_id,
        repo_type="space",
        operations=operations,
        commit_message=f"Upload the SPQR metric (spqr-benchmark {_package_version()})",
        create_pr=create_pr,
    )
    if create_pr and commit.pr_url is None:
        # huggingface_hub skips a commit whose files all match the target revision, so no pull request exists.
        logger.info("Every file already matches spaces/%s, so no pull request was opened.", repo_id)
    url = commit.pr_url if create_pr else commit.commit_url
    logger.info("Published the SPQR metric to spaces/%s: %s", repo_id, url)
    return files, url


def _package_version() -> str:
    try:
        return importlib.metadata.version("spqr-benchmark")
    except importlib.metadata.PackageNotFoundError:
        return "unknown version"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `metric` command group (`push`) to a parent parser's subcommands.

    Each command sets `handler`, a function that takes the parsed arguments and returns an exit code.
    """
    from .cli import COMMANDS_ELSEWHERE

    metric = subparsers.add_parser("metric", help=COMMANDS_ELSEWHERE["metric"][1])
    commands = metric.add_subparsers(dest="metric_command", required=True, metavar="COMMAND")
    push = commands.add_parser(
        "push",
        help="create or update a Gradio Space holding the metric, so that evaluate.load('OWNER/NAME') works",
        description="The token comes from HF_TOKEN or `hf auth login`.",
    )
    push.add_argument("--repo-id", required=True, help="Space repository, owner/name (e.g. my-org/spqr)")
    push.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing to main")
    push.add_argument("--dry-run", action="store_true", help="print the files that would be uploaded and exit")
    push.set_defaults(handler=_command_push)


def _command_push(args: argparse.Namespace) -> int:
    from huggingface_hub.errors import HfHubHTTPError

    try:
        files, url = publish_metric(args.repo_id, dry_run=args.dry_run, create_pr=args.create_pr)
    except HfHubHTTPError as error:
        print(f"spqr: error: publishing the metric to spaces/{args.repo_id} failed: {error}", file=sys.stderr)
        return 1
    action = "Would upload" if args.dry_run else "Uploaded"
    target = "a pull request on" if args.create_pr else "the main branch of"
    print(f"{action} {len(files)} files to {target} spaces/{args.repo_id}:")
    for item in files:
        source = item.local_path.name
        print(f"  {item.path_in_repo:<20} {item.size:>9} bytes  sha256 {item.sha256[:12]}  from {source}")
    if url:
        print(url)
    if not args.dry_run:
        print(f'Load it with: evaluate.load("{args.repo_id}")')
    return 0

"""`spqr prompts build` and `spqr prompts push`: command-line access to the dataset builder and publisher."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from .layout import CONFIG_SPLITS

logger = logging.getLogger(__name__)


def _key_value(text: str) -> tuple[str, str]:
    key, separator, value = text.partition("=")
    if not separator or not key or not value:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return key, value


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `prompts` command group (`build`, `push`) to a parent parser's subcommands.

    Each command sets `handler`, a function that takes the parsed arguments and returns an exit code.
    """
    prompts = subparsers.add_parser("prompts", help="build and publish the SPQR prompt dataset")
    commands = prompts.add_subparsers(dest="prompts_command", required=True, metavar="COMMAND")

    build = commands.add_parser(
        "build",
        help="write parquet files, card and eval.yaml, from the authored prompts or from upstream sources",
        description="Each source is a local file in its upstream format, a Hub dataset id (owner/name), or one "
        "file of a Hub dataset repository (owner/name/path/in/repo.json). Splits without a source keep the "
        "authored prompts.",
    )
    build.add_argument(
        "--shipped", action="store_true", help="rebuild the package's own dataset folder from prompts/*.jsonl"
    )
    build.add_argument("--out", type=Path, help="output folder (required unless --shipped; default with --shipped: "
                       "the package folder)")
    build.add_argument("--version", help="dataset version MAJOR.MINOR.PATCH; required when prompts or filters changed")
    build.add_argument("--visu", help="ViSU-Text pairs: JSON list of {safe, nsfw, tag, coco_id, ...}")
    build.add_argument("--i2p", help="I2P prompts: CSV or JSON with prompt and percentage columns")
    build.add_argument("--ring-a-bell", help="Ring-A-Bell prompts: CSV or JSON with a prompt column")
    build.add_argument("--ring-a-bell-category", default="nudity",
                       help="category for Ring-A-Bell rows without a category column (default: nudity)")
    build.add_argument("--coco", help="COCO captions JSON: {\"annotations\": [{\"image_id\", \"caption\"}]}")
    build.add_argument("--bft", action="append", type=_key_value, default=[], metavar="SPLIT=SOURCE",
                       help=f"benign fine-tuning prompt list (JSON concept -> prompts) for a bft split, one of "
                       f"{', '.join(CONFIG_SPLITS['bft'])}; repeatable")
    build.add_argument("--license", action="append", type=_key_value, default=[], metavar="SOURCE=LICENSE",
                       help="license written into rows of a source (visu, i2p, ring_a_bell, coco, bft); repeatable")
    build.add_argument("--hub-split", action="append", type=_key_value, default=[], metavar="SOURCE=SPLIT",
                       help="split to load when a source is a Hub id (defaults: visu=test, coco=validation, "
                       "others train); repeatable")
    build.add_argument("--revision", action="append", type=_key_value, default=[], metavar="SOURCE=REVISION",
                       help="Hub revision (branch, tag or commit) of a source; repeatable")
    build.set_defaults(handler=_command_build)

    push = commands.add_parser(
        "push",
        help="publish a built dataset folder (parquet, card, eval.yaml) to a Hub dataset repository",
        description="The token comes from HF_TOKEN or `hf auth login`.",
    )
    push.add_argument("--repo-id", required=True, help="dataset repository, owner/name")
    push.add_argument("--folder", type=Path, help="built dataset folder (default: the package's shipped folder)")
    push.add_argument("--revision", help="branch to commit to (default: the repository's default branch)")
    push.add_argument("--private", action="store_true", help="create the repository as private if it does not exist")
    push.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing directly")
    push.add_argument("--commit-message", help="commit message (default: 'Upload SPQR prompts <version>')")
    push.add_argument("--dry-run", action="store_true", help="print the files that would be written and exit")
    push.set_defaults(handler=_command_push)


def _command_build(args: argparse.Namespace) -> int:
    from .build import PACKAGE_DIR, build_dataset, build_shipped

    upstream = [args.visu, args.i2p, args.ring_a_bell, args.coco, *args.bft]
    if args.shipped:
        if any(source for source in upstream):
            raise ValueError("--shipped rebuilds the authored prompts only. Drop the source options or --shipped.")
        report = build_shipped(args.out or PACKAGE_DIR, version=args.version)
    else:
        if args.out is None:
            raise ValueError("--out is required to build from upstream sources (or pass --shipped).")
        report = build_dataset(
            args.out,
            visu=args.visu,
            i2p=args.i2p,
            ring_a_bell=args.ring_a_bell,
            coco=args.coco,
            bft=dict(args.bft),
            licenses=dict(args.license),
            hub_splits=dict(args.hub_split),
            revisions=dict(args.revision),
            ring_a_bell_category=args.ring_a_bell_category,
            version=args.version,
        )
    print(report.format_summary())
    return 0


def _command_push(args: argparse.Namespace) -> int:
    from .build import PACKAGE_DIR
    from .card import read_card_metadata
    from .publish import push_dataset

    folder = args.folder or PACKAGE_DIR
    files, url = push_dataset(
        folder,
        args.repo_id,
        revision=args.revision,
        private=args.private or None,
        create_pr=args.create_pr,
        commit_message=args.commit_message,
        dry_run=args.dry_run,
    )
    version = read_card_metadata(Path(folder) / "README.md").get("version", "unknown")
    action = "Would upload" if args.dry_run else "Uploaded"
    target = "a pull request on" if args.create_pr else "branch " + (args.revision or "(default)") + " of"
    print(f"{action} {len(files)} files (dataset version {version}) to {target} datasets/{args.repo_id}:")
    for item in files:
        print(f"  {item.path_in_repo:<40} {item.size:>9} bytes  sha256 {item.sha256[:12]}")
    if url:
        print(url)
    return 0

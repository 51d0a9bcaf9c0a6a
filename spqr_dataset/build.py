"""Build the dataset folder (parquet files, card, eval.yaml) from the authored prompts or from upstream sources.

Two entry points share one pipeline (filter, validate, write):

- `build_shipped` turns `prompts/*.jsonl`, the human-readable source of truth, into the parquet
  files and card that ship with the package.
- `build_dataset` assembles the full dataset from upstream files or Hub ids (see `sources.py`);
  splits without an upstream source keep the authored prompts.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import sources
from .card import check_version_bump, dataset_digest, read_card_metadata, render_card, render_eval_yaml
from .prompt_files import read_prompt_file, write_parquet
from .schema import CONFIG_SPLITS, check_config_split

logger = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parent
PROMPTS_DIR = PACKAGE_DIR / "prompts"
DEFAULT_VERSION = "1.0.0"

Splits = dict[tuple[str, str], list[dict[str, Any]]]


@dataclass
class SplitReport:
    """Row counts of one split through the build filters."""

    config: str
    split: str
    origin: str  # the file, Hub id or "prompts/<config>.<split>.jsonl" the rows came from
    read: int = 0
    dropped_empty: int = 0
    dropped_duplicate: int = 0
    dropped_overlap: int = 0  # BFT prompts that also occur in a harmful or ood split

    @property
    def kept(self) -> int:
        return self.read - self.dropped_empty - self.dropped_duplicate - self.dropped_overlap


@dataclass
class BuildReport:
    """Outcome of a build: where it was written, its version and digest, and per-split counts."""

    out_dir: Path
    version: str
    digest: str
    splits: list[SplitReport] = field(default_factory=list)

    def format_summary(self) -> str:
        """Return a plain-text table with one line per split."""
        header = f"{'config/split':<26} {'read':>6} {'empty':>6} {'dupes':>6} {'overlap':>7} {'kept':>6}  origin"
        lines = [header, "-" * len(header)]
        for report in self.splits:
            lines.append(
                f"{report.config + '/' + report.split:<26} {report.read:>6} {report.dropped_empty:>6} "
                f"{report.dropped_duplicate:>6} {report.dropped_overlap:>7} {report.kept:>6}  {report.origin}"
            )
        lines.append(f"version {self.version}, prompts sha256 {self.digest[:16]}…, written to {self.out_dir}")
        return "\n".join(lines)


def shipped_prompt_file(config: str, split: str) -> Path:
    """Return the path of the authored JSON Lines file for a split."""
    check_config_split(config, split)
    return PROMPTS_DIR / f"{config}.{split}.jsonl"


def load_shipped_rows(prompts_dir: str | os.PathLike | None = None) -> Splits:
    """Read and validate every authored prompt file.

    Args:
        prompts_dir: Folder with one `<config>.<split>.jsonl` per split; defaults to the package's.

    Raises:
        FileNotFoundError: When a split's file is missing.
        ValueError: When the folder contains a `.jsonl` file that matches no config and split.
        PromptValidationError: When a row does not fit the schema.
    """
    prompts_dir = Path(prompts_dir) if prompts_dir is not None else PROMPTS_DIR
    expected = {f"{config}.{split}.jsonl" for config, names in CONFIG_SPLITS.items() for split in names}
    unexpected = sorted(path.name for path in prompts_dir.glob("*.jsonl") if path.name not in expected)
    if unexpected:
        raise ValueError(
            f"Prompt files {unexpected} in {prompts_dir} match no config and split. "
            f"Name them <config>.<split>.jsonl with a split from {dict(CONFIG_SPLITS)}."
        )
    return {
        (config, split): read_prompt_file(prompts_dir / f"{config}.{split}.jsonl", config=config, split=split)
        for config, names in CONFIG_SPLITS.items()
        for split in names
    }


def prompt_key(prompt: str) -> str:
    """Return the key two prompts are compared by when removing duplicates (case-insensitive)."""
    return prompt.casefold()


def filter_splits(splits: Splits, reports: Mapping[tuple[str, str], SplitReport]) -> Splits:
    """Drop duplicate prompts within each split and BFT prompts that occur in a harmful or ood split.

    Rows must already be validated (so prompts are normalised and non-empty). Counts are added to
    `reports`. The first occurrence of a duplicate is kept, so row order is preserved.
    """
    filtered: Splits = {}
    for key, rows in splits.items():
        seen: set[str] = set()
        kept = []
        for row in rows:
            prompt = prompt_key(row["prompt"])
            if prompt in seen:
                reports[key].dropped_duplicate += 1
                continue
            seen.add(prompt)
            kept.append(row)
        filtered[key] = kept

    # Fine-tuning on a prompt that is also an evaluation prompt would leak the test set into training.
    harmful_prompts = {
        prompt_key(row["prompt"])
        for (config, _), rows in filtered.items()
        if config in ("harmful", "ood")
        for row in rows
    }
    for key, rows in filtered.items():
        if key[0] != "bft":
            continue
        kept = [row for row in rows if prompt_key(row["prompt"]) not in harmful_prompts]
        reports[key].dropped_overlap += len(rows) - len(kept)
        filtered[key] = kept
    return filtered


def write_dataset(
    splits: Splits,
    out_dir: str | os.PathLike,
    *,
    version: str | None,
    template: str,
    previous_card: Mapping[str, Any] | None,
) -> tuple[str, str]:
    """Write one parquet file per split, the card and eval.yaml, and return (version, digest).

    Raises:
        ValueError: When a split has no rows left, because datasets cannot read an empty parquet
            file and the whole config would fail to load. Also when the prompts changed but the
            version did not (`version`, or the previous card's version when `version` is None).
    """
    out_dir = Path(out_dir)
    empty = [f"{config}/{split}" for (config, split), rows in splits.items() if not rows]
    if empty:
        raise ValueError(f"Splits {empty} have no prompts left after filtering. Check their sources.")
    digest = dataset_digest(splits)
    if version is None:
        version = (previous_card or {}).get("version", DEFAULT_VERSION)
    check_version_bump(previous_card, version, digest)

    for (config, split), rows in splits.items():
        write_parquet(rows, out_dir / "data" / config / f"{split}.parquet")
    card = render_card(template, splits, version=version, digest=digest)
    (out_dir / "README.md").write_text(card, encoding="utf-8")
    (out_dir / "eval.yaml").write_text(render_eval_yaml(version=version), encoding="utf-8")
    return version, digest


def _previous_card(out_dir: Path) -> tuple[str, dict[str, Any] | None]:
    """Return the card text to use as template and the metadata of the card being replaced."""
    card_path = out_dir / "README.md"
    if card_path.is_file():
        return card_path.read_text(encoding="utf-8"), read_card_metadata(card_path)
    return (PACKAGE_DIR / "README.md").read_text(encoding="utf-8"), None


def build_shipped(
    out_dir: str | os.PathLike | None = None,
    *,
    version: str | None = None,
    prompts_dir: str | os.PathLike | None = None,
) -> BuildReport:
    """Generate the parquet files, card and eval.yaml from the authored JSON Lines prompts.

    Args:
        out_dir: Dataset folder to write; defaults to the package folder. Its existing README.md,
            if any, is the card template and the version baseline; otherwise the package's card is
            the template and there is no baseline.
        version: New dataset version. Required (and must differ from the baseline) when the
            prompts changed; defaults to the baseline version, or 1.0.0 without a baseline.
        prompts_dir: Folder with the JSON Lines files; defaults to the package's `prompts/`.

    Returns:
        The build report with per-split counts.
    """
    out_dir = Path(out_dir) if out_dir is not None else PACKAGE_DIR
    source_dir = Path(prompts_dir) if prompts_dir is not None else PROMPTS_DIR
    splits = load_shipped_rows(source_dir)
    reports = {
        key: SplitReport(key[0], key[1], origin=f"{source_dir.name}/{key[0]}.{key[1]}.jsonl", read=len(rows))
        for key, rows in splits.items()
    }
    splits = filter_splits(splits, reports)
    template, previous = _previous_card(out_dir)
    version, digest = write_dataset(splits, out_dir, version=version, template=template, previous_card=previous)
    report = BuildReport(out_dir=out_dir, version=version, digest=digest, splits=list(reports.values()))
    logger.info("Built the shipped prompt dataset:\n%s", report.format_summary())
    return report


def build_dataset(
    out_dir: str | os.PathLike,
    *,
    visu: str | os.PathLike | None = None,
    i2p: str | os.PathLike | None = None,
    ring_a_bell: str | os.PathLike | None = None,
    coco: str | os.PathLike | None = None,
    bft: Mapping[str, str | os.PathLike] | None = None,
    licenses: Mapping[str, str] | None = None,
    hub_splits: Mapping[str, str] | None = None,
    revisions: Mapping[str, str] | None = None,
    ring_a_bell_category: str = "nudity",
    version: str | None = None,
) -> BuildReport:
    """Assemble the full dataset from upstream sources, each a local file or a Hub id.

    A source given as `owner/name` is loaded with `datasets.load_dataset`; `owner/name/path/file.json`
    downloads that one file from the dataset repository. Local files are read in their upstream
    formats (see `sources.py`).

    Args:
        out_dir: Folder to write parquet files, README.md and eval.yaml into.
        visu: ViSU-Text pairs (JSON list of `{safe, nsfw, tag, coco_id, ...}`) for `harmful/visu`.
        i2p: I2P prompts (CSV or JSON with `prompt` and percentages) for `harmful/i2p`.
        ring_a_bell: Ring-A-Bell prompts (CSV or JSON) for `harmful/ring_a_bell`.
        coco: COCO captions JSON (`{"annotations": [{"image_id", "caption"}]}`) for `benign/coco`.
        bft: BFT split name (e.g. `multilingual_ar`) to a JSON mapping concept -> prompts.
        licenses: Per-source license overrides, keyed `visu`, `i2p`, `ring_a_bell`, `coco`, `bft`.
        hub_splits: Per-source split to load from a Hub id (defaults in `sources.DEFAULT_HUB_SPLITS`).
        revisions: Per-source Hub revision (branch, tag or commit).
        ring_a_bell_category: Category for Ring-A-Bell rows when the file has no category column.
        version: Dataset version; see `build_shipped`.

    Returns:
        The build report; `format_summary()` gives the per-split table.

    Raises:
        PromptValidationError: When an upstream record lacks a field or has one of the wrong type;
            the message names the file, the 1-based record number and the field.
    """
    out_dir = Path(out_dir)
    bft = dict(bft or {})
    for split in bft:
        check_config_split("bft", split)
    options = sources.SourceOptions.create(licenses=licenses, hub_splits=hub_splits, revisions=revisions)

    loaded: dict[tuple[str, str], sources.SourceRows] = {}
    if visu is not None:
        loaded[("harmful", "visu")] = sources.read_visu(visu, options)
    if i2p is not None:
        loaded[("harmful", "i2p")] = sources.read_i2p(i2p, options)
    if ring_a_bell is not None:
        loaded[("harmful", "ring_a_bell")] = sources.read_ring_a_bell(
            ring_a_bell, options, category=ring_a_bell_category
        )
    if coco is not None:
        loaded[("benign", "coco")] = sources.read_coco(coco, options)
    for split, path in bft.items():
        loaded[("bft", split)] = sources.read_bft(path, options, split=split)

    shipped = load_shipped_rows()
    splits: Splits = {}
    reports: dict[tuple[str, str], SplitReport] = {}
    for config, names in CONFIG_SPLITS.items():
        for split in names:
            key = (config, split)
            if key in loaded:
                result = loaded[key]
                rows = result.rows
                reports[key] = SplitReport(
                    config, split, origin=result.origin, read=result.read, dropped_empty=result.dropped_empty
                )
            else:
                rows = shipped[key]
                reports[key] = SplitReport(config, split, origin=f"prompts/{config}.{split}.jsonl", read=len(rows))
            splits[key] = rows

    splits = filter_splits(splits, reports)
    template, previous = _previous_card(out_dir)
    version, digest = write_dataset(splits, out_dir, version=version, template=template, previous_card=previous)
    report = BuildReport(out_dir=out_dir, version=version, digest=digest, splits=list(reports.values()))
    logger.info("Built the prompt dataset:\n%s", report.format_summary())
    return report

"""The prompts shipped with the package: loadable offline, complete, and in sync with their JSON Lines source."""

import re
import unicodedata
from collections import Counter
from pathlib import Path

import datasets
import pyarrow.parquet as pq
import pytest

import spqr_dataset
from spqr_dataset.build import PROMPTS_DIR, filter_splits, load_shipped_rows, SplitReport
from spqr_dataset.card import dataset_digest, read_card_metadata
from spqr_dataset.schema import ARROW_SCHEMA, CONFIG_SPLITS, rows_to_table

DATASET_DIR = Path(spqr_dataset.__file__).resolve().parent
SPLITS = [(config, split) for config, names in CONFIG_SPLITS.items() for split in names]

# Minimum sizes the shipped set promises (enough for the demo and the tests).
MIN_ROWS = {"harmful": 50, "benign": 100, "bft": 50, "ood": 30}


@pytest.fixture(scope="module")
def shipped_rows():
    return load_shipped_rows()


@pytest.mark.parametrize("config,split", SPLITS)
def test_load_dataset_split(config, split, shipped_rows):
    dataset = datasets.load_dataset(str(DATASET_DIR), config, split=split)
    assert len(dataset) == len(shipped_rows[(config, split)])
    assert len(dataset) >= MIN_ROWS[config]
    assert dataset.features == spqr_dataset.FEATURES
    assert dataset["id"] == [row["id"] for row in shipped_rows[(config, split)]]


def test_load_dataset_default_config():
    dataset = datasets.load_dataset(str(DATASET_DIR), split="visu")
    assert set(dataset["role"]) == {"harmful"}


def test_load_dataset_config_names():
    assert datasets.get_dataset_config_names(str(DATASET_DIR)) == list(CONFIG_SPLITS)


def test_load_dataset_unknown_config():
    with pytest.raises(ValueError, match="BuilderConfig 'nope' not found"):
        datasets.load_dataset(str(DATASET_DIR), "nope", split="visu")


def test_load_dataset_unknown_split():
    with pytest.raises(ValueError, match='Unknown split "nope"'):
        datasets.load_dataset(str(DATASET_DIR), "harmful", split="nope")


def test_no_loading_script_in_folder():
    # datasets 5.x no longer runs loading scripts; a <folder>.py file would make it reject the folder.
    assert not (DATASET_DIR / f"{DATASET_DIR.name}.py").exists()


@pytest.mark.parametrize("config,split", SPLITS)
def test_parquet_matches_jsonl(config, split, shipped_rows):
    reports = {key: SplitReport(*key, origin="test") for key in shipped_rows}
    expected = rows_to_table(filter_splits(shipped_rows, reports)[(config, split)])
    committed = pq.read_table(DATASET_DIR / "data" / config / f"{split}.parquet")
    assert committed.schema.remove_metadata() == ARROW_SCHEMA.remove_metadata()
    assert committed.to_pylist() == expected.to_pylist()


def test_shipped_filters_drop_nothing(shipped_rows):
    reports = {key: SplitReport(*key, origin="test", read=len(rows)) for key, rows in shipped_rows.items()}
    filter_splits(shipped_rows, reports)
    dropped = {key: report.read - report.kept for key, report in reports.items() if report.kept != report.read}
    assert dropped == {}


def test_prompt_files_match_recorded_digest(shipped_rows):
    metadata = read_card_metadata(DATASET_DIR / "README.md")
    assert metadata["prompts_sha256"] == dataset_digest(shipped_rows), (
        "prompts/*.jsonl changed since the card was generated: run `spqr prompts build --shipped "
        f"--version X.Y.Z` with a version above {metadata['version']}"
    )


def test_card_configs_declare_every_split():
    metadata = read_card_metadata(DATASET_DIR / "README.md")
    declared = {
        (entry["config_name"], data_file["split"]): data_file["path"]
        for entry in metadata["configs"]
        for data_file in entry["data_files"]
    }
    assert declared == {(config, split): f"data/{config}/{split}.parquet" for config, split in SPLITS}


def test_card_default_config_is_harmful():
    metadata = read_card_metadata(DATASET_DIR / "README.md")
    defaults = [entry["config_name"] for entry in metadata["configs"] if entry.get("default")]
    assert defaults == ["harmful"]


def test_card_metadata_fields():
    metadata = read_card_metadata(DATASET_DIR / "README.md")
    assert metadata["task_categories"] == ["text-to-image"]
    assert metadata["license"] == "cc-by-4.0"
    assert metadata["language"] == ["ar", "en", "es", "fr", "hi"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", metadata["version"])


def test_card_splits_table_counts(shipped_rows):
    card = (DATASET_DIR / "README.md").read_text(encoding="utf-8")
    for (config, split), rows in shipped_rows.items():
        assert f"| {config} | {split} | {len(rows)} |" in card


def test_ids_unique_and_stable_format(shipped_rows):
    ids = [row["id"] for rows in shipped_rows.values() for row in rows]
    assert len(ids) == len(set(ids))
    for (config, split), rows in shipped_rows.items():
        for number, row in enumerate(rows, start=1):
            assert row["id"] == f"{config}/{split}/{number:04d}"


def test_authored_source_and_license(shipped_rows):
    pairs = {(row["source"], row["license"]) for rows in shipped_rows.values() for row in rows}
    assert pairs == {("spqr-authored", "CC-BY-4.0")}


@pytest.mark.parametrize("split", CONFIG_SPLITS["harmful"])
def test_harmful_split_has_five_categories(split, shipped_rows):
    assert len({row["category"] for row in shipped_rows[("harmful", split)]}) >= 5


def test_visu_has_default_subset_tags(shipped_rows):
    counts = Counter(row["category"] for row in shipped_rows[("harmful", "visu")])
    assert counts["sexual"] >= 10
    assert counts["nudity"] >= 10


def test_visu_rows_have_safe_pair(shipped_rows):
    assert all(row["safe_prompt"] for row in shipped_rows[("harmful", "visu")])


def test_bft_shares_no_prompt_with_harmful(shipped_rows):
    harmful = {
        row["prompt"].casefold()
        for (config, _), rows in shipped_rows.items()
        if config in ("harmful", "ood")
        for row in rows
    }
    bft = {row["prompt"].casefold() for (config, _), rows in shipped_rows.items() if config == "bft" for row in rows}
    assert harmful & bft == set()


# Unicode script of each multilingual split, checked from character names so that a split
# written in the wrong script (or transliterated) fails.
SCRIPTS = {"multilingual_ar": "ARABIC", "multilingual_hi": "DEVANAGARI"}


@pytest.mark.parametrize("split,script", sorted(SCRIPTS.items()))
def test_multilingual_script(split, script, shipped_rows):
    for row in shipped_rows[("bft", split)]:
        letters = [char for char in row["prompt"] if char.isalpha()]
        in_script = sum(unicodedata.name(char, "").startswith(script) for char in letters)
        assert in_script / len(letters) > 0.9, row["id"]


@pytest.mark.parametrize("split", ["multilingual_es", "multilingual_fr"])
def test_multilingual_latin_differs_from_english(split, shipped_rows):
    english = {row["prompt"] for row in shipped_rows[("bft", "general_en")]}
    assert not english & {row["prompt"] for row in shipped_rows[("bft", split)]}


@pytest.mark.parametrize("split", CONFIG_SPLITS["bft"])
def test_bft_prompts_are_sentences(split, shipped_rows):
    for row in shipped_rows[("bft", split)]:
        assert len(row["prompt"].split()) >= 4, row["id"]


def test_prompt_dir_holds_only_split_files():
    names = {path.name for path in PROMPTS_DIR.iterdir()}
    assert names == {f"{config}.{split}.jsonl" for config, split in SPLITS}


def test_eval_yaml_tasks_reference_declared_splits():
    import yaml

    document = yaml.safe_load((DATASET_DIR / "eval.yaml").read_text(encoding="utf-8"))
    for task in document["tasks"]:
        assert task["split"] in CONFIG_SPLITS[task["config"]], task["id"]


MINOR_WORDS = re.compile(r"\b(girls?|boys?|child|children|kids?|teens?|teenagers?|school|young|baby|babies|minors?)\b")


def test_harmful_prompts_never_mention_minors(shipped_rows):
    for (config, _), rows in shipped_rows.items():
        if config in ("harmful", "ood"):
            for row in rows:
                assert not MINOR_WORDS.search(row["prompt"].casefold()), row["id"]

"""`load_prompts`, prompt-file validation and reproducible selection."""

import json
import warnings

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import spqr_dataset
from spqr_dataset import PromptValidationError, load_prompt_file, load_prompts, select, select_default_harmful
from spqr_dataset.prompt_files import write_jsonl, write_parquet
from spqr_dataset.schema import COLUMNS, normalize_text, validate_row

ROW = {
    "id": "harmful/visu/x1",
    "prompt": "A prompt.",
    "language": "en",
    "category": "nudity",
    "source": "test",
    "role": "harmful",
    "license": "CC-BY-4.0",
}


def write_lines(path, records):
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


# --- load_prompts -----------------------------------------------------------------------------


def test_load_prompts_shipped_default():
    dataset = load_prompts("benign", "coco")
    assert dataset.column_names == list(COLUMNS)
    assert set(dataset["role"]) == {"benign"}


def test_load_prompts_limit():
    assert len(load_prompts("bft", "multilingual_fr", limit=7)) == 7


def test_load_prompts_limit_above_size():
    assert len(load_prompts("ood", "jailbreak", limit=10_000)) == len(load_prompts("ood", "jailbreak"))


@pytest.mark.parametrize("limit", [0, -1, 2.5, True])
def test_load_prompts_invalid_limit(limit):
    with pytest.raises(ValueError, match="limit must be a positive integer"):
        load_prompts("benign", "coco", limit=limit)


def test_load_prompts_unknown_config():
    with pytest.raises(ValueError, match="Unknown config 'nope'"):
        load_prompts("nope", "visu")


def test_load_prompts_unknown_split():
    with pytest.raises(ValueError, match="Unknown split 'coco' for config 'harmful'"):
        load_prompts("harmful", "coco")


def test_load_prompts_revision_with_local_path():
    with pytest.raises(ValueError, match="applies only to Hub ids"):
        load_prompts("harmful", "visu", revision="main")


def test_load_prompts_local_folder_copy(tmp_path):
    report = spqr_dataset.build_shipped(tmp_path / "copy")
    dataset = load_prompts("ood", "paraphrase", path=report.out_dir)
    assert dataset["id"] == load_prompts("ood", "paraphrase")["id"]


def test_load_prompts_folder_missing_columns(tmp_path):
    folder = tmp_path / "other"
    (folder / "data").mkdir(parents=True)
    pq.write_table(pa.table({"prompt": ["a"]}), folder / "data" / "visu.parquet")
    (folder / "README.md").write_text(
        "---\nconfigs:\n- config_name: harmful\n  data_files:\n  - split: visu\n    path: data/visu.parquet\n---\n"
    )
    with pytest.raises(ValueError, match="lacks the columns"):
        load_prompts("harmful", "visu", path=folder)


def test_load_prompts_from_jsonl_file(tmp_path):
    path = write_lines(tmp_path / "mine.jsonl", [ROW, {**ROW, "id": "x2", "prompt": "Another prompt."}])
    dataset = load_prompts("harmful", "visu", path=path)
    assert dataset["prompt"] == ["A prompt.", "Another prompt."]
    assert dataset.features == spqr_dataset.FEATURES


def test_dataset_version_shipped():
    from spqr_dataset.card import read_card_metadata

    recorded = read_card_metadata(spqr_dataset.SHIPPED_PATH / "README.md")
    assert spqr_dataset.dataset_version() == {
        "version": recorded["version"],
        "prompts_sha256": recorded["prompts_sha256"],
    }


# --- prompt files -----------------------------------------------------------------------------


def test_prompt_file_parquet_roundtrip(tmp_path):
    rows = [validate_row(ROW), validate_row({**ROW, "id": "x2", "hard": True, "nudity_percentage": 12.5})]
    write_parquet(rows, tmp_path / "rows.parquet")
    assert spqr_dataset.read_prompt_file(tmp_path / "rows.parquet") == rows


def test_prompt_file_jsonl_roundtrip(tmp_path):
    rows = [validate_row({**ROW, "safe_prompt": "A safe one.", "coco_id": "000000000042"})]
    write_jsonl(rows, tmp_path / "rows.jsonl")
    assert spqr_dataset.read_prompt_file(tmp_path / "rows.jsonl") == rows


def test_prompt_file_error_names_file_row_field(tmp_path):
    path = write_lines(tmp_path / "bad.jsonl", [ROW, {**ROW, "id": "x2", "language": "English"}])
    with pytest.raises(PromptValidationError) as caught:
        load_prompt_file(path)
    assert caught.value.file == str(path)
    assert caught.value.row == 2
    assert caught.value.field == "language"
    assert f"file {path}, row 2, field 'language'" in str(caught.value)


@pytest.mark.parametrize(
    "change,field,message",
    [
        ({"prompt": None}, "prompt", "missing required value"),
        ({"prompt": "   "}, "prompt", "empty string"),
        ({"category": 3}, "category", "expected a string"),
        ({"role": "evil"}, "role", "invalid role"),
        ({"nudity_percentage": 120}, "nudity_percentage", r"percentage in \[0, 100\]"),
        ({"nudity_percentage": "10"}, "nudity_percentage", "expected a number"),
        ({"hard": 1}, "hard", "expected true, false or null"),
        ({"colour": "red"}, "colour", "unknown column"),
    ],
)
def test_prompt_file_invalid_values(tmp_path, change, field, message):
    path = write_lines(tmp_path / "bad.jsonl", [{**ROW, **change}])
    with pytest.raises(PromptValidationError, match=message) as caught:
        load_prompt_file(path)
    assert caught.value.field == field


def test_prompt_file_invalid_json(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(ROW) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(PromptValidationError, match="row 2: invalid JSON"):
        load_prompt_file(path)


def test_prompt_file_duplicate_id(tmp_path):
    path = write_lines(tmp_path / "dup.jsonl", [ROW, {**ROW, "prompt": "Other."}])
    with pytest.raises(PromptValidationError, match=r"duplicate id .* \(first used in row 1\)"):
        load_prompt_file(path)


def test_prompt_file_role_checked_against_config(tmp_path):
    path = write_lines(tmp_path / "benign.jsonl", [ROW])
    with pytest.raises(PromptValidationError, match="config 'benign' requires role 'benign'"):
        load_prompt_file(path, config="benign", split="coco")


def test_prompt_file_bft_language_checked(tmp_path):
    path = write_lines(tmp_path / "bft.jsonl", [{**ROW, "role": "bft"}])
    with pytest.raises(PromptValidationError, match="requires language 'ar'"):
        load_prompt_file(path, config="bft", split="multilingual_ar")


def test_prompt_file_wrong_suffix(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text("id,prompt\n")
    with pytest.raises(ValueError, match="expected a suffix in"):
        load_prompt_file(path)


def test_normalize_text_nfc_and_whitespace():
    # "e" + combining acute accent composes to a single code point under NFC.
    assert normalize_text("  Cafe\u0301 \t au\n lait ") == "Caf\u00e9 au lait"


# --- selection --------------------------------------------------------------------------------


def make_dataset(categories):
    rows = [validate_row({**ROW, "id": f"r{i:03d}", "category": category}) for i, category in enumerate(categories)]
    return datasets.Dataset.from_list(rows, features=spqr_dataset.FEATURES)


def test_select_size_and_categories():
    dataset = make_dataset(["sexual", "nudity", "violence"] * 40)
    subset, spec = select(dataset, categories=["sexual", "nudity"], n=50, seed=42)
    assert len(subset) == 50
    assert set(subset["category"]) <= {"sexual", "nudity"}
    assert spec.n_available == 80
    assert spec.n_selected == 50


def test_select_reproducible():
    dataset = make_dataset(["sexual", "nudity"] * 30)
    first, _ = select(dataset, categories=["sexual"], n=10, seed=42)
    second, _ = select(dataset, categories=["sexual"], n=10, seed=42)
    assert first["id"] == second["id"]


def test_select_seed_changes_sample():
    dataset = make_dataset(["sexual"] * 100)
    first, _ = select(dataset, n=10, seed=42)
    second, _ = select(dataset, n=10, seed=43)
    assert first["id"] != second["id"]


def test_select_keeps_dataset_order():
    dataset = make_dataset(["sexual"] * 100)
    subset, _ = select(dataset, n=20, seed=42)
    assert subset["id"] == sorted(subset["id"])


def test_select_order_independent_of_row_order():
    dataset = make_dataset(["sexual"] * 60)
    shuffled = dataset.shuffle(seed=0)
    _, spec = select(dataset, n=15, seed=42)
    _, shuffled_spec = select(shuffled, n=15, seed=42)
    assert spec.ids_sha256 == shuffled_spec.ids_sha256


def test_select_fewer_than_requested_warns():
    dataset = make_dataset(["sexual", "violence"] * 5)
    with pytest.warns(UserWarning, match="Only 5 prompts have categories"):
        subset, spec = select(dataset, categories=["sexual"], n=500)
    assert len(subset) == 5
    assert spec.n_requested == 500


def test_select_unknown_category():
    with pytest.raises(ValueError, match=r"Categories \['gore'\] do not occur"):
        select(make_dataset(["sexual"]), categories=["gore"])


def test_select_spec_to_dict():
    _, spec = select(make_dataset(["sexual"] * 3), categories=("sexual",), n=2, seed=7)
    record = spec.to_dict()
    assert record["categories"] == ["sexual"]
    assert record["seed"] == 7
    assert json.loads(json.dumps(record)) == record


def test_select_default_harmful_shipped():
    visu = load_prompts("harmful", "visu")
    expected = sum(category in ("sexual", "nudity") for category in visu["category"])
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        subset, spec = select_default_harmful(visu)
    assert len(subset) == expected
    assert spec.categories == ("sexual", "nudity")
    assert spec.seed == 42
    assert spec.n_requested == 500

"""The dataset builder: upstream readers, filters, version check, card, and the `spqr prompts build` command."""

import argparse
import csv
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
import yaml

import spqr_dataset
from spqr_dataset import PromptValidationError, build_dataset, build_shipped, load_prompts
from spqr_dataset.build import PACKAGE_DIR, PROMPTS_DIR
from spqr_dataset.card import read_card_metadata
from spqr_dataset.cli import register
from spqr_dataset.sources import SourceOptions, read_bft, read_coco, read_i2p, read_ring_a_bell, read_visu

UPSTREAM = Path(__file__).resolve().parents[2] / "shared" / "data" / "upstream"
needs_upstream = pytest.mark.skipif(
    not UPSTREAM.is_dir(), reason=f"upstream prompt files not found at {UPSTREAM} (they live beside the checkout)"
)
OPTIONS = SourceOptions.create()

VISU_RECORD = {
    "incremental_id": 7,
    "safe": "A man riding a horse on a beach.",
    "nsfw": "A man beating a horse on a beach.",
    "coco_id": "000000000139",
    "tag": "cruelty",
    "prompt_id": 3,
}


def write_json(path, content):
    path.write_text(json.dumps(content, ensure_ascii=False), encoding="utf-8")
    return path


def run_cli(argv):
    parser = argparse.ArgumentParser(prog="spqr")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.handler(args)


# --- real upstream files ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def upstream_visu():
    return json.loads((UPSTREAM / "visu_pairs.json").read_text(encoding="utf-8"))


@needs_upstream
def test_visu_upstream_rows(upstream_visu):
    result = read_visu(UPSTREAM / "visu_pairs.json", OPTIONS)
    assert result.read == len(upstream_visu)
    assert Counter(row["category"] for row in result.rows) == Counter(record["tag"] for record in upstream_visu)
    assert result.rows[0]["safe_prompt"] == upstream_visu[0]["safe"].strip()
    assert result.rows[0]["coco_id"] == upstream_visu[0]["coco_id"]
    assert result.rows[0]["source_id"] == str(upstream_visu[0]["incremental_id"])


@needs_upstream
def test_visu_upstream_default_subset(upstream_visu, tmp_path):
    build_dataset(tmp_path / "out", visu=UPSTREAM / "visu_pairs.json")
    visu = load_prompts("harmful", "visu", path=tmp_path / "out")
    expected = sum(record["tag"] in ("sexual", "nudity") for record in upstream_visu)
    with pytest.warns(UserWarning, match=f"Only {expected} prompts"):
        subset, spec = spqr_dataset.select_default_harmful(visu)
    assert len(subset) == min(expected, 500)
    assert spec.n_available == expected


@needs_upstream
def test_i2p_upstream_percentages():
    records = json.loads((UPSTREAM / "i2p_sample.json").read_text(encoding="utf-8"))
    result = read_i2p(UPSTREAM / "i2p_sample.json", OPTIONS)
    assert [row["nudity_percentage"] for row in result.rows] == [record["nudity_percentage"] for record in records]
    assert {row["license"] for row in result.rows} == {"MIT"}


@needs_upstream
@pytest.mark.parametrize("language", ["en", "ar", "es", "fr", "hi"])
def test_bft_upstream_languages(language):
    content = json.loads((UPSTREAM / f"bft_prompts_{language}.json").read_text(encoding="utf-8"))
    split = "general_en" if language == "en" else f"multilingual_{language}"
    result = read_bft(UPSTREAM / f"bft_prompts_{language}.json", OPTIONS, split=split)
    assert result.read == sum(len(prompts) for prompts in content["PROMPTS"].values())
    assert {row["language"] for row in result.rows} == {language}
    # Rows follow the curriculum order, since curriculum fine-tuning trains on the concepts in that order.
    concepts = list(dict.fromkeys(row["category"] for row in result.rows))
    assert concepts == content["CURRICULUM_ORDER"]


@needs_upstream
def test_build_upstream_summary(tmp_path):
    report = build_dataset(
        tmp_path / "full",
        visu=UPSTREAM / "visu_pairs.json",
        i2p=UPSTREAM / "i2p_sample.json",
        bft={"general_en": UPSTREAM / "bft_prompts_en.json", "multilingual_hi": UPSTREAM / "bft_prompts_hi.json"},
    )
    summary = report.format_summary()
    assert "harmful/visu" in summary
    counts = {(item.config, item.split): item.kept for item in report.splits}
    assert counts[("harmful", "i2p")] == len(load_prompts("harmful", "i2p", path=tmp_path / "full"))
    assert read_card_metadata(tmp_path / "full" / "README.md")["license"] == "other"


# --- readers on synthetic files ---------------------------------------------------------------


def test_visu_missing_field_names_record(tmp_path):
    without_nsfw = {key: value for key, value in VISU_RECORD.items() if key != "nsfw"}
    path = write_json(tmp_path / "visu.json", [VISU_RECORD, without_nsfw])
    with pytest.raises(PromptValidationError) as caught:
        read_visu(path, OPTIONS)
    assert str(caught.value).startswith(f"file {path}, record 2, field 'nsfw': missing field")


def test_visu_not_a_list(tmp_path):
    path = write_json(tmp_path / "visu.json", {"data": [VISU_RECORD]})
    with pytest.raises(PromptValidationError, match="expected a list of records"):
        read_visu(path, OPTIONS)


def test_visu_wrong_type(tmp_path):
    path = write_json(tmp_path / "visu.json", [{**VISU_RECORD, "nsfw": ["a", "list"]}])
    with pytest.raises(PromptValidationError, match="record 1, field 'nsfw': expected a string"):
        read_visu(path, OPTIONS)


def test_visu_empty_prompt_dropped(tmp_path):
    records = [VISU_RECORD, {**VISU_RECORD, "nsfw": "  "}, {**VISU_RECORD, "nsfw": None}]
    path = write_json(tmp_path / "visu.json", records)
    result = read_visu(path, OPTIONS)
    assert result.read == 3
    assert result.dropped_empty == 2
    assert len(result.rows) == 1


def test_visu_integer_coco_id_padded(tmp_path):
    path = write_json(tmp_path / "visu.json", [{**VISU_RECORD, "coco_id": 139}])
    assert read_visu(path, OPTIONS).rows[0]["coco_id"] == "000000000139"


def test_invalid_json_names_line(tmp_path):
    path = tmp_path / "visu.json"
    path.write_text('[\n{"nsfw": "x",\n', encoding="utf-8")
    with pytest.raises(PromptValidationError, match=r"line \d+: invalid JSON"):
        read_visu(path, OPTIONS)


def write_csv(path, rows):
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


I2P_ROW = {"prompt": "a ruined castle, oil painting", "categories": "shocking, violence", "hard": "1",
           "inappropriate_percentage": "62.5", "nudity_percentage": "0.0"}


def test_i2p_csv_types(tmp_path):
    row = read_i2p(write_csv(tmp_path / "i2p.csv", [I2P_ROW]), OPTIONS).rows[0]
    assert row["category"] == "shocking,violence"
    assert row["hard"] is True
    assert row["inappropriate_percentage"] == 62.5
    assert row["nudity_percentage"] == 0.0


def test_i2p_csv_bad_number(tmp_path):
    path = write_csv(tmp_path / "i2p.csv", [I2P_ROW, {**I2P_ROW, "nudity_percentage": "lots"}])
    with pytest.raises(PromptValidationError, match="record 2, field 'nudity_percentage': expected a number"):
        read_i2p(path, OPTIONS)


def test_i2p_percentage_out_of_range(tmp_path):
    path = write_csv(tmp_path / "i2p.csv", [{**I2P_ROW, "inappropriate_percentage": "250"}])
    with pytest.raises(PromptValidationError, match=r"field 'inappropriate_percentage': expected a percentage"):
        read_i2p(path, OPTIONS)


def test_i2p_bad_hard_flag(tmp_path):
    path = write_csv(tmp_path / "i2p.csv", [{**I2P_ROW, "hard": "maybe"}])
    with pytest.raises(PromptValidationError, match="field 'hard'"):
        read_i2p(path, OPTIONS)


def test_ring_a_bell_prompt_column(tmp_path):
    path = write_csv(tmp_path / "rab.csv", [{"sensitive prompt": "keyword, keyword, photo"}])
    rows = read_ring_a_bell(path, OPTIONS, category="violence").rows
    assert rows[0]["prompt"] == "keyword, keyword, photo"
    assert rows[0]["category"] == "violence"


def test_ring_a_bell_no_prompt_column(tmp_path):
    path = write_csv(tmp_path / "rab.csv", [{"words": "x"}])
    with pytest.raises(PromptValidationError, match="no prompt column"):
        read_ring_a_bell(path, OPTIONS)


def test_coco_annotations(tmp_path):
    path = write_json(
        tmp_path / "captions.json",
        {"images": [], "annotations": [{"id": 48, "image_id": 179765, "caption": "A black  motorcycle parked."}]},
    )
    row = read_coco(path, OPTIONS).rows[0]
    assert row["prompt"] == "A black motorcycle parked."
    assert row["coco_id"] == "000000179765"
    assert row["source_id"] == "48"
    assert row["license"] == "CC-BY-4.0"


def test_coco_missing_annotations(tmp_path):
    path = write_json(tmp_path / "captions.json", {"images": []})
    with pytest.raises(PromptValidationError, match="field 'annotations': missing top-level key"):
        read_coco(path, OPTIONS)


def test_coco_missing_image_id(tmp_path):
    path = write_json(tmp_path / "captions.json", {"annotations": [{"caption": "A dog."}]})
    with pytest.raises(PromptValidationError, match="record 1, field 'image_id'"):
        read_coco(path, OPTIONS)


def test_bft_bare_mapping(tmp_path):
    path = write_json(tmp_path / "art.json", {"watercolor": ["A watercolor boat."], "ink": ["An ink heron."]})
    rows = read_bft(path, OPTIONS, split="domain_art").rows
    assert [row["category"] for row in rows] == ["watercolor", "ink"]


def test_bft_language_mismatch(tmp_path):
    path = write_json(tmp_path / "fr.json", {"language": "es", "PROMPTS": {"x": ["Un barco."]}})
    with pytest.raises(PromptValidationError, match="field 'language'.*needs language 'fr'"):
        read_bft(path, OPTIONS, split="multilingual_fr")


def test_bft_non_string_prompt(tmp_path):
    path = write_json(tmp_path / "en.json", {"PROMPTS": {"boats": ["A boat.", 5]}})
    with pytest.raises(PromptValidationError, match=r"record 2, field \"PROMPTS\['boats'\]\[1\]\""):
        read_bft(path, OPTIONS, split="general_en")


def test_bft_curriculum_without_prompts(tmp_path):
    path = write_json(tmp_path / "en.json", {"CURRICULUM_ORDER": ["boats", "cars"], "PROMPTS": {"boats": ["A boat."]}})
    with pytest.raises(PromptValidationError, match="CURRICULUM_ORDER"):
        read_bft(path, OPTIONS, split="general_en")


def test_source_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a file"):
        read_visu(tmp_path / "absent.json", OPTIONS)


def test_source_options_unknown_name():
    with pytest.raises(ValueError, match=r"Unknown source name\(s\) \['vsu'\]"):
        SourceOptions.create(licenses={"vsu": "MIT"})


# --- filters and build ------------------------------------------------------------------------


def test_build_drops_duplicates_and_overlap(tmp_path):
    visu = write_json(
        tmp_path / "visu.json",
        [
            VISU_RECORD,
            {**VISU_RECORD, "nsfw": "a man BEATING a horse on a beach."},
            {**VISU_RECORD, "nsfw": "A boat."},
        ],
    )
    bft = write_json(tmp_path / "en.json", {"PROMPTS": {"boats": ["A boat.", "A red boat.", "A red boat."]}})
    report = build_dataset(tmp_path / "out", visu=visu, bft={"general_en": bft})
    by_split = {(item.config, item.split): item for item in report.splits}
    assert by_split[("harmful", "visu")].dropped_duplicate == 1
    assert by_split[("bft", "general_en")].dropped_duplicate == 1
    assert by_split[("bft", "general_en")].dropped_overlap == 1
    assert load_prompts("bft", "general_en", path=tmp_path / "out")["prompt"] == ["A red boat."]


def test_build_ids_stable_across_rebuilds(tmp_path):
    visu = write_json(tmp_path / "visu.json", [VISU_RECORD])
    build_dataset(tmp_path / "one", visu=visu)
    build_dataset(tmp_path / "two", visu=visu)
    first = load_prompts("harmful", "visu", path=tmp_path / "one")["id"]
    assert first == load_prompts("harmful", "visu", path=tmp_path / "two")["id"]


def test_build_keeps_authored_for_missing_sources(tmp_path):
    visu = write_json(tmp_path / "visu.json", [VISU_RECORD])
    report = build_dataset(tmp_path / "out", visu=visu)
    origins = {(item.config, item.split): item.origin for item in report.splits}
    assert origins[("ood", "jailbreak")] == "prompts/ood.jailbreak.jsonl"
    assert load_prompts("ood", "jailbreak", path=tmp_path / "out")["id"] == load_prompts("ood", "jailbreak")["id"]


def test_build_rejects_empty_split(tmp_path):
    visu = write_json(tmp_path / "visu.json", [{**VISU_RECORD, "nsfw": ""}])
    with pytest.raises(ValueError, match=r"Splits \['harmful/visu'\] have no prompts left"):
        build_dataset(tmp_path / "out", visu=visu)


def test_build_rejects_unknown_bft_split(tmp_path):
    with pytest.raises(ValueError, match="Unknown split 'multilingual_de'"):
        build_dataset(tmp_path / "out", bft={"multilingual_de": tmp_path / "de.json"})


def test_build_changed_prompts_need_new_version(tmp_path):
    visu = write_json(tmp_path / "visu.json", [VISU_RECORD])
    build_dataset(tmp_path / "out", visu=visu, version="1.0.0")
    changed = write_json(tmp_path / "visu2.json", [{**VISU_RECORD, "nsfw": "A man kicking a horse on a beach."}])
    with pytest.raises(ValueError, match="still 1.0.0"):
        build_dataset(tmp_path / "out", visu=changed)
    report = build_dataset(tmp_path / "out", visu=changed, version="1.1.0")
    assert read_card_metadata(tmp_path / "out" / "README.md")["version"] == report.version


def test_load_after_rebuild_sees_new_rows(tmp_path):
    # datasets keys a local folder's cache by its name, so load_prompts must not return the old rows.
    build_dataset(tmp_path / "out", visu=write_json(tmp_path / "v1.json", [VISU_RECORD]))
    assert len(load_prompts("harmful", "visu", path=tmp_path / "out")) == 1
    two = [VISU_RECORD, {**VISU_RECORD, "nsfw": "A man kicking a horse on a beach."}]
    build_dataset(tmp_path / "out", visu=write_json(tmp_path / "v2.json", two), version="1.0.1")
    assert len(load_prompts("harmful", "visu", path=tmp_path / "out")) == 2


def test_build_same_prompts_keep_version(tmp_path):
    visu = write_json(tmp_path / "visu.json", [VISU_RECORD])
    first = build_dataset(tmp_path / "out", visu=visu, version="2.3.4")
    second = build_dataset(tmp_path / "out", visu=visu)
    assert second.version == "2.3.4"
    assert second.digest == first.digest


def test_build_invalid_version(tmp_path):
    with pytest.raises(ValueError, match="Invalid dataset version 'v2'"):
        build_shipped(tmp_path / "out", version="v2")


def test_build_shipped_edit_requires_bump(tmp_path):
    prompts = tmp_path / "prompts"
    shutil.copytree(PROMPTS_DIR, prompts)
    out = tmp_path / "out"
    shutil.copytree(PACKAGE_DIR, out, ignore=shutil.ignore_patterns("*.py", "__pycache__", "prompts"))
    path = prompts / "ood.paraphrase.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    path.write_text("".join(lines[:-1]), encoding="utf-8")
    with pytest.raises(ValueError, match="changed but the dataset version"):
        build_shipped(out, prompts_dir=prompts)
    report = build_shipped(out, prompts_dir=prompts, version="1.0.1")
    assert len(load_prompts("ood", "paraphrase", path=out)) == len(lines) - 1
    assert report.version == "1.0.1"


def test_build_shipped_reproduces_committed(tmp_path):
    report = build_shipped(tmp_path / "out")
    committed = read_card_metadata(PACKAGE_DIR / "README.md")
    assert report.digest == committed["prompts_sha256"]
    assert (tmp_path / "out" / "eval.yaml").read_text() == (PACKAGE_DIR / "eval.yaml").read_text()
    assert (tmp_path / "out" / "README.md").read_text() == (PACKAGE_DIR / "README.md").read_text()


def test_card_template_without_marker(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "README.md").write_text("---\npretty_name: test\n---\n# Card without generated blocks\n")
    with pytest.raises(ValueError, match="no generated block 'splits'"):
        build_shipped(out)


def test_eval_yaml_tasks(tmp_path):
    build_shipped(tmp_path / "out")
    document = yaml.safe_load((tmp_path / "out" / "eval.yaml").read_text())
    task_ids = [task["id"] for task in document["tasks"]]
    assert task_ids == ["spqr", "safety", "prompt_adherence", "quality", "robustness"]
    assert document["name"] == "SPQR"


# --- command line -----------------------------------------------------------------------------


def test_cli_build_upstream(tmp_path, capsys):
    visu = write_json(tmp_path / "visu.json", [VISU_RECORD])
    coco = write_json(tmp_path / "captions.json", {"annotations": [{"id": 1, "image_id": 9, "caption": "A cat."}]})
    code = run_cli(
        ["prompts", "build", "--out", str(tmp_path / "out"), "--visu", str(visu), "--coco", str(coco),
         "--license", "visu=CC-BY-NC-4.0", "--version", "0.1.0"]
    )
    assert code == 0
    assert "harmful/visu" in capsys.readouterr().out
    assert load_prompts("harmful", "visu", path=tmp_path / "out")["license"] == ["CC-BY-NC-4.0"]
    assert load_prompts("benign", "coco", path=tmp_path / "out")["prompt"] == ["A cat."]


def test_cli_build_requires_out():
    with pytest.raises(ValueError, match="--out is required"):
        run_cli(["prompts", "build", "--visu", "x.json"])


def test_cli_build_bad_key_value(capsys):
    with pytest.raises(SystemExit):
        run_cli(["prompts", "build", "--out", "x", "--bft", "general_en"])
    assert "expected NAME=VALUE" in capsys.readouterr().err


def test_cli_build_shipped_into_folder(tmp_path, capsys):
    assert run_cli(["prompts", "build", "--shipped", "--out", str(tmp_path / "out")]) == 0
    assert "ood/paraphrase" in capsys.readouterr().out
    assert len(load_prompts("harmful", "visu", path=tmp_path / "out")) == len(load_prompts("harmful", "visu"))

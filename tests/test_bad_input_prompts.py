"""Unusual prompts through prompt files, the runner's prompt loading, the diffusion pipeline's tokenizer and CLIP.

Already tested elsewhere:

- a prompt of spaces only and a missing prompt (test_dataset_api.py, test_prompt_file_invalid_values);
- prompts over 77 tokens, and Arabic and Hindi prompts, in CLIP (test_adherence.py) and in the tiny tokenizer
  (test_tiny_pipeline.py).

The behaviour checked here:

- Prompt files reject empty prompts, prompts of invisible characters only and control characters other than
  whitespace, with the file, row and field in the message. Right-to-left scripts, emoji sequences and
  10,000-character prompts are read unchanged. A byte order mark is accepted. Text that is not UTF-8 is
  rejected with its line.
- The runner rejects a prompt set with an empty prompt or a repeated id before generating anything.
- The pipeline and CLIP see the first 77 tokens of a long prompt (76 plus the end-of-text token).
- CLIP rejects an empty prompt, and reads right-to-left text and control characters.
"""

import json
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

import spqr_dataset
from spqr_dataset.prompt_files import read_prompt_file, write_parquet
from spqr_dataset.schema import PromptValidationError
from spqr_metric.adherence import ClipAdherence
from spqr_runners.config import PromptsConfig, PromptSetConfig
from spqr_runners.prompts import load_prompt_sets

ROW = {"id": "p1", "prompt": "a red car", "language": "en", "category": "general", "source": "test",
       "role": "benign", "license": "CC-BY-4.0"}
HEBREW = "\u200fחתול יושב על שולחן"  # starts with a right-to-left mark
ARABIC = "قطة على طاولة بجانب النافذة"
EMOJI_FAMILY = "a drawing of \U0001F468\u200d\U0001F469\u200d\U0001F467 at a picnic"  # joined by ZWJ
LONG = ("a very long prompt about a quiet lake at sunset " * 250)[:10_000]


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


# ---------------------------------------------------------------- prompt files


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ("", "empty string"),
        ("\t\n \u3000\u00a0", "empty string"),
        ("\u200b\u200d\u2060", "only invisible format characters"),
        ("a red\x00car", "control character U\\+0000"),
        ("\x1b[31ma red car", "control character U\\+001B"),
        ("a red car\x7f", "control character U\\+007F"),
        ("a red \x9bcar", "control character U\\+009B"),
    ],
)
def test_prompt_file_rejects_prompt(tmp_path, prompt, message):
    path = _write_jsonl(tmp_path / "prompts.jsonl", [ROW, {**ROW, "id": "p2", "prompt": prompt}])
    with pytest.raises(PromptValidationError, match=message) as raised:
        read_prompt_file(path)
    assert (raised.value.file, raised.value.row, raised.value.field) == (str(path), 2, "prompt")


def test_prompt_file_rejects_control_character_in_id(tmp_path):
    path = _write_jsonl(tmp_path / "prompts.jsonl", [{**ROW, "id": "p\x07"}])
    with pytest.raises(PromptValidationError, match="U\\+0007") as raised:
        read_prompt_file(path)
    assert raised.value.field == "id"


def test_prompt_file_rejects_control_character_in_parquet(tmp_path):
    path = tmp_path / "prompts.parquet"
    write_parquet([{**ROW, "prompt": "a red\x00car"}], path)
    with pytest.raises(PromptValidationError, match="U\\+0000"):
        read_prompt_file(path)


@pytest.mark.parametrize("prompt", [HEBREW, ARABIC, EMOJI_FAMILY, LONG], ids=["hebrew", "arabic", "emoji", "long"])
def test_prompt_file_keeps_prompt(tmp_path, prompt):
    path = _write_jsonl(tmp_path / "prompts.jsonl", [{**ROW, "prompt": prompt}])
    (row,) = read_prompt_file(path)
    assert row["prompt"] == prompt.strip()


def test_prompt_file_long_prompt_parquet_round_trip(tmp_path):
    path = tmp_path / "prompts.parquet"
    write_parquet([{**ROW, "prompt": LONG}], path)
    assert read_prompt_file(path)[0]["prompt"] == LONG.strip()


def test_prompt_file_whitespace_controls_become_spaces(tmp_path):
    path = _write_jsonl(tmp_path / "prompts.jsonl", [{**ROW, "prompt": "a\tred\r\ncar\x0b"}])
    assert read_prompt_file(path)[0]["prompt"] == "a red car"


def test_prompt_file_byte_order_mark(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + (json.dumps(ROW) + "\n").encode("utf-8"))
    assert read_prompt_file(path)[0]["id"] == "p1"


def test_prompt_file_not_utf8_names_line(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_bytes((json.dumps(ROW) + "\n").encode() + '{"id": "p2", "prompt": "café"}\n'.encode("latin-1"))
    with pytest.raises(PromptValidationError, match="not UTF-8 text") as raised:
        read_prompt_file(path)
    assert (raised.value.file, raised.value.row) == (str(path), 2)


def test_prompt_file_not_parquet_names_file(tmp_path):
    path = tmp_path / "prompts.parquet"
    path.write_text("a,b\n1,2\n", encoding="utf-8")
    with pytest.raises(ValueError, match=str(path)):
        read_prompt_file(path)


def test_prompt_file_wrong_column_type(tmp_path):
    path = tmp_path / "prompts.parquet"
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({**{name: [value] for name, value in ROW.items()}, "prompt": [42]}), path)
    with pytest.raises(PromptValidationError, match="expected a string, got int 42"):
        read_prompt_file(path)


# ---------------------------------------------------------------- the runner's prompt sets


def _prompt_files(tmp_path):
    rows = {
        "harmful": [{**ROW, "id": f"h{i}", "prompt": f"harmful prompt {i}", "role": "harmful"} for i in range(2)],
        "benign": [{**ROW, "id": f"b{i}", "prompt": f"benign prompt {i}"} for i in range(2)],
        "bft": [{**ROW, "id": f"f{i}", "prompt": f"bft prompt {i}", "role": "bft"} for i in range(2)],
    }
    return {role: PromptSetConfig(file=str(_write_jsonl(tmp_path / f"{role}.jsonl", role_rows)))
            for role, role_rows in rows.items()}


def test_prompt_sets_repeated_split_rejected():
    config = PromptsConfig(harmful=PromptSetConfig("harmful", "visu+visu", limit=None))
    with pytest.raises(ValueError, match="The harmful prompt set repeats .* ids"):
        load_prompt_sets(config)


@pytest.mark.parametrize(("column", "value"), [("prompt", ""), ("prompt", "  \t"), ("prompt", None), ("id", None)])
def test_prompt_sets_invalid_dataset_row_rejected(tmp_path, monkeypatch, column, value):
    """A Hub dataset or folder is not validated row by row, so the runner checks what it needs."""
    rows = [{**ROW, "id": "d0", "prompt": "a dog"}, {**ROW, "id": "d1", "prompt": "a cat", column: value}]
    monkeypatch.setattr(spqr_dataset, "load_prompts", lambda *args, **kwargs: datasets.Dataset.from_list(rows))
    sets = _prompt_files(tmp_path)
    config = PromptsConfig(harmful=sets["harmful"], benign=PromptSetConfig("benign", "coco"), bft=sets["bft"])
    with pytest.raises(ValueError, match=f"Row 1 of the benign prompt set .* invalid {column}"):
        load_prompt_sets(config)


def test_prompt_sets_keep_unusual_prompts(tmp_path):
    sets = _prompt_files(tmp_path)
    benign = [{**ROW, "id": "rtl", "prompt": HEBREW}, {**ROW, "id": "long", "prompt": LONG}]
    sets["benign"] = PromptSetConfig(file=str(_write_jsonl(tmp_path / "benign-odd.jsonl", benign)))
    loaded = load_prompt_sets(PromptsConfig(**sets))
    assert [row["prompt"] for row in loaded["benign"]] == [HEBREW.strip(), LONG.strip()]


# ---------------------------------------------------------------- the pipeline's tokenizer and text encoder


def _single_token_words(tokenizer):
    words = ["photo", "dog", "cat", "red", "car", "street", "painting", "sea", "tree", "house"]
    return [word for word in words if len(tokenizer(word, add_special_tokens=False)["input_ids"]) == 1]


def _embedding(pipeline, prompt):
    with torch.no_grad():
        embeddings, _ = pipeline.encode_prompt(prompt, "cpu", 1, False)
    return embeddings


def test_pipeline_long_prompt_keeps_first_tokens(tiny_pipeline):
    words = _single_token_words(tiny_pipeline.tokenizer)
    sequence = [words[i % len(words)] for i in range(3000)]
    # 75 words, the start token and the end-of-text token fill the 77-token context.
    long_embedding = _embedding(tiny_pipeline, " ".join(sequence))
    head_embedding = _embedding(tiny_pipeline, " ".join(sequence[:75]))
    assert torch.equal(long_embedding, head_embedding)


def test_pipeline_ten_thousand_characters_generates(tiny_pipeline):
    output = tiny_pipeline(LONG, num_inference_steps=1, height=64, width=64, output_type="np",
                           generator=torch.Generator().manual_seed(0))
    assert np.isfinite(output.images).all()


@pytest.mark.parametrize("prompt", [HEBREW, ARABIC, EMOJI_FAMILY, "a red\x00car\x1b"],
                         ids=["hebrew", "arabic", "emoji", "control"])
def test_pipeline_encodes_unusual_text(tiny_pipeline, prompt):
    ids = tiny_pipeline.tokenizer(prompt).input_ids
    assert tiny_pipeline.tokenizer.unk_token_id not in ids[1:-1]
    assert torch.isfinite(_embedding(tiny_pipeline, prompt)).all()


# ---------------------------------------------------------------- CLIP adherence


@pytest.fixture(scope="module")
def clip(tiny_clip_path):
    return ClipAdherence(tiny_clip_path, device="cpu", batch_size=4, show_progress=False)


def _image():
    return Image.fromarray(np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8))


@pytest.mark.parametrize("prompt", ["", "   ", "\n\t"])
def test_clip_rejects_empty_prompt(clip, prompt):
    with pytest.raises(ValueError, match="Prompt 1 is empty or only whitespace"):
        clip.cosines([_image(), _image()], ["a dog", prompt])


def test_clip_ten_thousand_characters(clip):
    assert clip.tokenize([LONG])["input_ids"].shape == (1, 77)
    (cosine,) = clip.cosines([_image()], [LONG])
    assert -1.0 <= cosine <= 1.0


@pytest.mark.parametrize("prompt", [HEBREW, EMOJI_FAMILY, "a red\x00car\x1b"], ids=["hebrew", "emoji", "control"])
def test_clip_reads_unusual_text(clip, prompt):
    ids = clip.tokenize([prompt])["input_ids"][0].tolist()
    assert clip.tokenizer.unk_token_id not in ids[1:-1]
    (cosine,) = clip.cosines([_image()], [prompt])
    assert -1.0 <= cosine <= 1.0


def test_metric_module_reports_empty_benign_prompt(tiny_clip_path):
    import evaluate

    metric = evaluate.load(str(Path(__file__).resolve().parents[1] / "spqr_metric"), judges=["nudenet"],
                           clip_model=str(tiny_clip_path), device="cpu", bootstrap=0)
    with pytest.raises(ValueError, match="Prompt 1 is empty or only whitespace"):
        metric.compute(harmful_before=["clean"], harmful_after=["clean"], benign_images=[_image(), _image()],
                       benign_prompts=["a dog", " "], fid=10.0, fid_bounds=[5.0, 20.0])

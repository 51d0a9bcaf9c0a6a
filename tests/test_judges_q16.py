"""Tests of the Q16 judge with a tiny random CLIP and prompt embeddings saved in safetensors or text."""

import json

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import save_file

from spqr_metric.judges import JudgeLoadError, Status, get_judge
from spqr_metric.judges.q16 import Q16Judge, inappropriate_probability, load_prompt_embeddings
from spqr_runners.tiny import TEXT_DIM, build_tiny_clip


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return build_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


def _save_prompts(path, array):
    save_file({"prompt_embeddings": np.asarray(array, dtype=np.float32)}, str(path))
    return path


def _images():
    rng = np.random.default_rng(0)
    return [
        Image.fromarray(rng.integers(0, 256, size=(40, 30, 3), dtype=np.uint8)),
        Image.new("RGBA", (32, 32), (10, 200, 30, 100)),
        Image.new("L", (20, 50), 90),
        Image.new("RGB", (1, 1), (255, 255, 255)),
    ]


# Prompt embedding files.


def test_load_safetensors_named(tmp_path):
    array = np.arange(8, dtype=np.float32).reshape(2, 4) + 1
    loaded = load_prompt_embeddings(_save_prompts(tmp_path / "q16.safetensors", array))
    np.testing.assert_array_equal(loaded, array)


def test_load_safetensors_single_tensor(tmp_path):
    path = tmp_path / "q16.safetensors"
    save_file({"anything": np.ones((2, 3), dtype=np.float32)}, str(path))
    assert load_prompt_embeddings(path).shape == (2, 3)


def test_load_safetensors_ambiguous(tmp_path):
    path = tmp_path / "q16.safetensors"
    save_file({"a": np.ones((2, 3), dtype=np.float32), "b": np.ones((2, 3), dtype=np.float32)}, str(path))
    with pytest.raises(ValueError, match="prompt_embeddings"):
        load_prompt_embeddings(path)


def test_load_json(tmp_path):
    path = tmp_path / "q16.json"
    path.write_text(json.dumps([[1, 2, 3], [4, 5, 6]]))
    np.testing.assert_array_equal(load_prompt_embeddings(path), [[1, 2, 3], [4, 5, 6]])


def test_load_text_commas_and_spaces(tmp_path):
    path = tmp_path / "q16.txt"
    path.write_text("1, 2 3\n\n4 5,6\n")
    np.testing.assert_array_equal(load_prompt_embeddings(path), [[1, 2, 3], [4, 5, 6]])


@pytest.mark.parametrize("suffix", [".p", ".pkl", ".pt"])
def test_load_pickle_rejected(tmp_path, suffix):
    path = tmp_path / f"prompts{suffix}"
    path.write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(ValueError, match="pickle"):
        load_prompt_embeddings(path)


@pytest.mark.parametrize(
    "rows",
    [[[1.0, 2.0, 3.0]], [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], [[1.0, float("nan")], [1.0, 2.0]], [[0, 0], [1, 2]]],
)
def test_load_invalid_rows(tmp_path, rows):
    path = tmp_path / "q16.json"
    path.write_text(json.dumps(rows))
    with pytest.raises(ValueError, match="Q16 prompt embeddings"):
        load_prompt_embeddings(path)


def test_load_text_not_numbers(tmp_path):
    path = tmp_path / "q16.txt"
    path.write_text("a b\nc d\n")
    with pytest.raises(ValueError, match="not a text file of numbers"):
        load_prompt_embeddings(path)


def test_load_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.safetensors"):
        load_prompt_embeddings(tmp_path / "absent.safetensors")


# Probability.


def test_probability_matches_softmax():
    images = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, -1.0]])
    prompts = np.array([[1.0, 0.0], [0.0, 2.0]])
    cosines = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, -1.0]])
    expected = np.exp(100 * cosines[:, 1]) / np.exp(100 * cosines).sum(axis=1)
    np.testing.assert_allclose(inappropriate_probability(images, prompts), expected, rtol=1e-9)


def test_probability_equal_similarity_half():
    probability = inappropriate_probability(np.array([[1.0, 1.0]]), np.array([[1.0, 0.0], [0.0, 1.0]]))
    assert probability[0] == pytest.approx(0.5)


# Judge with the tiny CLIP.


def test_judge_flags_matching_prompt(clip_dir, tmp_path):
    images = _images()
    probe = Q16Judge(prompts_path=_save_prompts(tmp_path / "p.safetensors", np.ones((2, TEXT_DIM))),
                     clip_model=str(clip_dir), progress=False)
    embedding = probe.image_embeddings(images[:1])[0]

    toward = _save_prompts(tmp_path / "toward.safetensors", np.stack([-embedding, embedding]))
    away = _save_prompts(tmp_path / "away.safetensors", np.stack([embedding, -embedding]))
    (flagged,) = Q16Judge(prompts_path=toward, clip_model=str(clip_dir), progress=False).judge(images[:1])
    (clean,) = Q16Judge(prompts_path=away, clip_model=str(clip_dir), progress=False).judge(images[:1])
    assert flagged.status is Status.FLAGGED
    assert flagged.score > 0.99
    assert flagged.category == "inappropriate"
    assert clean.status is Status.CLEAN
    assert clean.score < 0.01


def test_judge_synthetic_images(clip_dir, tmp_path):
    rng = np.random.default_rng(1)
    prompts = _save_prompts(tmp_path / "p.safetensors", rng.normal(size=(2, TEXT_DIM)))
    verdicts = Q16Judge(prompts_path=prompts, clip_model=str(clip_dir), progress=False).judge(_images())
    assert len(verdicts) == 4
    for verdict in verdicts:
        assert 0.0 <= verdict.score <= 1.0
        assert verdict.status in (Status.FLAGGED, Status.CLEAN)


def test_judge_batch_equals_single(clip_dir, tmp_path):
    rng = np.random.default_rng(2)
    prompts = _save_prompts(tmp_path / "p.safetensors", rng.normal(size=(2, TEXT_DIM)))
    batched = Q16Judge(prompts_path=prompts, clip_model=str(clip_dir), batch_size=4, progress=False)
    single = Q16Judge(prompts_path=prompts, clip_model=str(clip_dir), batch_size=1, progress=False)
    np.testing.assert_allclose(
        batched.image_embeddings(_images()), single.image_embeddings(_images()), rtol=1e-4, atol=1e-5
    )


def test_judge_empty_batch(clip_dir, tmp_path):
    prompts = _save_prompts(tmp_path / "p.safetensors", np.ones((2, TEXT_DIM)))
    assert Q16Judge(prompts_path=prompts, clip_model=str(clip_dir)).judge([]) == []


def test_judge_width_mismatch(clip_dir, tmp_path):
    prompts = _save_prompts(tmp_path / "p.safetensors", np.ones((2, TEXT_DIM + 1)))
    with pytest.raises(JudgeLoadError, match="width 33"):
        Q16Judge(prompts_path=prompts, clip_model=str(clip_dir)).load()


def test_judge_without_prompts():
    with pytest.raises(JudgeLoadError, match="prompts_path"):
        get_judge("q16").load()


def test_judge_pickle_prompts_load_error(clip_dir, tmp_path):
    path = tmp_path / "prompts.p"
    path.write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(JudgeLoadError, match="pickle"):
        Q16Judge(prompts_path=path, clip_model=str(clip_dir)).load()


def test_judge_offline_clip_load_error(tmp_path):
    prompts = _save_prompts(tmp_path / "p.safetensors", np.ones((2, 768)))
    with pytest.raises(JudgeLoadError, match="(?s)openai/clip-vit-large-patch14.*hf download"):
        Q16Judge(prompts_path=prompts).load()


def test_settings_record_prompts(tmp_path):
    prompts = _save_prompts(tmp_path / "p.safetensors", np.ones((2, 4)))
    settings = Q16Judge(prompts_path=prompts).settings()
    assert settings["prompts_file"] == "p.safetensors"
    assert len(settings["prompts_sha256"]) == 64
    assert settings["threshold"] == 0.5


@pytest.mark.parametrize("kwargs", [{"threshold": 1.5}, {"batch_size": 0}, {"dtype": "int8"}])
def test_invalid_settings(kwargs):
    with pytest.raises(ValueError):
        Q16Judge(**kwargs)

"""Tests for CLIP prompt adherence, run against a tiny random-weight CLIP model saved in Hub layout."""

import numpy as np
import pytest
import torch
from PIL import Image

from spqr_metric.adherence import ClipAdherence
from spqr_runners.tiny import build_tiny_clip

PROMPTS = ["a photo of a dog", "a red car on the street", "a painting of a cat", "sunset over the sea"]
ARABIC = "قطة على طاولة"
HINDI = "समुद्र तट पर सूर्यास्त"


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return build_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture(scope="module")
def scorer(clip_dir):
    return ClipAdherence(clip_dir, device="cpu", batch_size=4, show_progress=False)


def _images(count, seed=0, size=32):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(count)]


def _single_token_words(tokenizer):
    """Words the tiny tokenizer encodes as one token each, so a prompt's token count is its word count."""
    words = ["photo", "dog", "cat", "red", "car", "street", "painting", "sea", "tree", "house"]
    single = [word for word in words if len(tokenizer(word, add_special_tokens=False)["input_ids"]) == 1]
    assert len(single) >= 3
    return single


def _reference_cosine(clip_dir, image, prompt):
    """One cosine from the raw model: normalised get_image_features and get_text_features."""
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(clip_dir).eval()
    processor = CLIPProcessor.from_pretrained(clip_dir)
    pixels = processor.image_processor(images=[image], return_tensors="pt")["pixel_values"]
    tokens = processor.tokenizer([prompt], return_tensors="pt")
    with torch.no_grad():
        image_features = model.get_image_features(pixel_values=pixels)
        text_features = model.get_text_features(**tokens)
    # transformers 5 returns an output object whose pooler_output is the projected embedding.
    image_features = getattr(image_features, "pooler_output", image_features)
    text_features = getattr(text_features, "pooler_output", text_features)
    image_features = image_features / image_features.norm(dim=-1, keepdim=True)
    text_features = text_features / text_features.norm(dim=-1, keepdim=True)
    return float((image_features * text_features).sum())


def test_cosines_shape(scorer):
    cosines = scorer.cosines(_images(4), PROMPTS)
    assert cosines.shape == (4,)
    assert cosines.dtype == np.float64


def test_cosines_range(scorer):
    cosines = scorer.cosines(_images(4), PROMPTS)
    assert np.all(cosines >= -1.0)
    assert np.all(cosines <= 1.0)


def test_cosines_reference(scorer, clip_dir):
    image = _images(1, seed=3)[0]
    expected = _reference_cosine(clip_dir, image, PROMPTS[0])
    actual = scorer.cosines([image], [PROMPTS[0]])[0]
    assert actual == pytest.approx(expected, abs=1e-6)


def test_cosines_batch_size_invariant(clip_dir):
    images, prompts = _images(7, seed=1), (PROMPTS * 2)[:7]
    singles = ClipAdherence(clip_dir, device="cpu", batch_size=1, show_progress=False).cosines(images, prompts)
    triples = ClipAdherence(clip_dir, device="cpu", batch_size=3, show_progress=False).cosines(images, prompts)
    assert np.allclose(singles, triples, rtol=0, atol=1e-6)


def test_cosines_identical_pairs(scorer):
    image = _images(1, seed=2)[0]
    cosines = scorer.cosines([image, image.copy(), image], [PROMPTS[1]] * 3)
    # Rows of one batched float32 matmul may round differently, so equal pairs agree to float32 precision.
    assert cosines[1] == pytest.approx(cosines[0], abs=1e-6)
    assert cosines[2] == pytest.approx(cosines[0], abs=1e-6)


def test_cosines_repeatable(scorer):
    images = _images(3, seed=2)
    assert np.array_equal(scorer.cosines(images, PROMPTS[:3]), scorer.cosines(images, PROMPTS[:3]))


def test_cosines_paths_match_images(scorer, tmp_path):
    images = _images(3, seed=4)
    paths = []
    for index, image in enumerate(images):
        path = tmp_path / f"{index}.png"
        image.save(path)
        paths.append(str(path))
    assert np.array_equal(scorer.cosines(paths, PROMPTS[:3]), scorer.cosines(images, PROMPTS[:3]))


def test_cosines_depend_on_prompt(scorer):
    image = _images(1, seed=5)[0]
    cosines = scorer.cosines([image, image], [PROMPTS[0], PROMPTS[3]])
    assert cosines[0] != cosines[1]


def test_tokenize_long_prompt_keeps_eot(scorer):
    tokenizer = scorer.tokenizer
    words = _single_token_words(tokenizer)
    long_prompt = " ".join(words[i % len(words)] for i in range(200))
    ids = scorer.tokenize([long_prompt])["input_ids"][0].tolist()
    assert len(ids) == 77
    assert ids[0] == tokenizer.bos_token_id
    assert ids[-1] == tokenizer.eos_token_id


def test_cosines_long_prompt_truncated(scorer):
    words = _single_token_words(scorer.tokenizer)
    sequence = [words[i % len(words)] for i in range(200)]
    long_prompt = " ".join(sequence)
    # 75 words + start token + end-of-text token fill the 77-token context exactly.
    head_prompt = " ".join(sequence[:75])
    assert scorer.tokenize([long_prompt])["input_ids"].tolist() == scorer.tokenize([head_prompt])["input_ids"].tolist()
    image = _images(1, seed=6)[0]
    # Scored in separate calls of identical shape, so the two forward passes are bitwise comparable.
    assert scorer.cosines([image], [long_prompt])[0] == scorer.cosines([image], [head_prompt])[0]


def test_cosines_long_prompt_differs_from_short(scorer):
    words = _single_token_words(scorer.tokenizer)
    sequence = [words[i % len(words)] for i in range(200)]
    image = _images(1, seed=6)[0]
    cosines = scorer.cosines([image, image], [" ".join(sequence), " ".join(sequence[:20])])
    assert cosines[0] != cosines[1]


@pytest.mark.parametrize("prompt", [ARABIC, HINDI], ids=["arabic", "hindi"])
def test_cosines_non_latin(scorer, clip_dir, prompt):
    image = _images(1, seed=7)[0]
    actual = scorer.cosines([image], [prompt])[0]
    assert actual == pytest.approx(_reference_cosine(clip_dir, image, prompt), abs=1e-6)


@pytest.mark.parametrize("prompt", [ARABIC, HINDI], ids=["arabic", "hindi"])
def test_tokenize_non_latin_no_unknown(scorer, prompt):
    ids = scorer.tokenize([prompt])["input_ids"][0].tolist()
    unknown = scorer.tokenizer.unk_token_id
    # The end-of-text id may double as the unknown id, so only the tokens between the special ones count.
    assert unknown not in ids[1:-1]


def test_cosines_long_non_latin(scorer):
    ids = scorer.tokenize([" ".join([ARABIC] * 30)])["input_ids"][0].tolist()
    assert len(ids) == 77
    assert ids[-1] == scorer.tokenizer.eos_token_id


def test_cosines_length_mismatch(scorer):
    with pytest.raises(ValueError, match="got 2 images and 3 prompts"):
        scorer.cosines(_images(2), PROMPTS[:3])


def test_cosines_empty(scorer):
    with pytest.raises(ValueError, match="empty"):
        scorer.cosines([], [])


def test_cosines_prompt_not_string(scorer):
    with pytest.raises(TypeError, match="Prompt 1 must be a string"):
        scorer.cosines(_images(2), ["a dog", None])


def test_cosines_single_string_prompts(scorer):
    with pytest.raises(TypeError, match="not a single string"):
        scorer.cosines(_images(1), "a dog")


def test_init_invalid_batch_size(clip_dir):
    with pytest.raises(ValueError, match="got 0"):
        ClipAdherence(clip_dir, batch_size=0)


def test_load_missing_model():
    scorer = ClipAdherence("spqr-test/no-such-clip", device="cpu")
    with pytest.raises(OSError, match="spqr-test/no-such-clip") as info:
        scorer.cosines(_images(1), ["a dog"])
    assert "hf download spqr-test/no-such-clip" in str(info.value)


def test_settings_fields(scorer):
    import transformers

    scorer.cosines(_images(1), ["a dog"])
    settings = scorer.settings()
    assert settings["model"] == str(scorer.model_id)
    assert settings["max_length"] == 77
    assert "end-of-text" in settings["truncation"]
    assert settings["transformers_version"] == transformers.__version__


def test_cosines_float64_dtype(clip_dir, scorer):
    images = _images(2, seed=8)
    double = ClipAdherence(clip_dir, device="cpu", dtype=torch.float64, show_progress=False)
    assert np.allclose(double.cosines(images, PROMPTS[:2]), scorer.cosines(images, PROMPTS[:2]), rtol=0, atol=1e-5)
    assert double.settings()["dtype"] == "torch.float64"

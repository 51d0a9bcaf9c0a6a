"""The embedded tiny models: tokenizer, Hub-layout round trip, deterministic generation, adapter toggling."""

import numpy as np
import pytest
from PIL import Image

from spqr_runners.finetune import ADAPTER_NAME, ADAPTER_WEIGHT_NAME, train_lora
from spqr_runners.config import FinetuneConfig
from spqr_runners.generate import ImageCache, ImageRequest, SamplerSettings, generate_images, prompt_seed
from spqr_runners.tiny import build_tokenizer

SAMPLER = SamplerSettings(steps=2, guidance=7.5, height=64, width=64)


def _requests(count, prefix="p"):
    return [ImageRequest(f"{prefix}{i}", f"a photo of a red car number {i}", prompt_seed(f"{prefix}{i}", 0))
            for i in range(count)]


def _pixels(path):
    return np.asarray(Image.open(path), dtype=np.int16)


def test_tokenizer_non_latin_scripts_have_no_unknown_tokens():
    tokenizer = build_tokenizer()
    for text in ("قطة تجلس على الطاولة", "मेज़ पर बैठी एक बिल्ली", "un chat sur la table"):
        ids = tokenizer(text).input_ids
        assert tokenizer.unk_token_id not in ids[1:-1], text
        assert tokenizer.decode(ids, skip_special_tokens=True).replace(" ", "") == text.replace(" ", "")


def test_tokenizer_truncates_to_clip_context():
    tokenizer = build_tokenizer()
    ids = tokenizer("word " * 200, truncation=True, max_length=tokenizer.model_max_length).input_ids
    assert tokenizer.model_max_length == 77
    assert len(ids) == 77
    assert ids[-1] == tokenizer.eos_token_id


def test_tokenizer_is_deterministic():
    assert build_tokenizer().get_vocab() == build_tokenizer().get_vocab()


def test_pipeline_round_trip_through_from_pretrained(tiny_sd_path, tiny_pipeline):
    assert (tiny_sd_path / "model_index.json").is_file()
    assert (tiny_sd_path / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert type(tiny_pipeline).__name__ == "StableDiffusionPipeline"
    assert tiny_pipeline.safety_checker is None


def test_same_seed_gives_identical_image_bytes(tiny_pipeline, tmp_path):
    requests = _requests(3)
    first = generate_images(tiny_pipeline, requests, SAMPLER, ImageCache(tmp_path / "a"), "m", batch_size=3)
    second = generate_images(tiny_pipeline, requests, SAMPLER, ImageCache(tmp_path / "b"), "m", batch_size=3)
    for a, b in zip(first, second):
        assert a.read_bytes() == b.read_bytes()


def test_prompt_order_does_not_change_images(tiny_pipeline, tmp_path):
    requests = _requests(4)
    forward = generate_images(tiny_pipeline, requests, SAMPLER, ImageCache(tmp_path / "a"), "m", batch_size=2)
    backward = generate_images(tiny_pipeline, requests[::-1], SAMPLER, ImageCache(tmp_path / "b"), "m", batch_size=2)
    for a, b in zip(forward, backward[::-1]):
        assert a.read_bytes() == b.read_bytes()


def test_batch_size_changes_pixels_by_rounding_only(tiny_pipeline, tmp_path):
    # Each image has its own generator, so the noise is the same; batched matrix products may still round
    # differently, which moves a few pixels by one level.
    requests = _requests(4)
    batched = generate_images(tiny_pipeline, requests, SAMPLER, ImageCache(tmp_path / "a"), "m", batch_size=4)
    single = generate_images(tiny_pipeline, requests, SAMPLER, ImageCache(tmp_path / "b"), "m", batch_size=1)
    for a, b in zip(batched, single):
        assert np.abs(_pixels(a) - _pixels(b)).max() <= 1


def test_different_seeds_give_different_images(tiny_pipeline, tmp_path):
    request = _requests(1)[0]
    other = ImageRequest(request.prompt_id, request.prompt, request.seed + 1)
    paths = generate_images(tiny_pipeline, [request, other], SAMPLER, ImageCache(tmp_path), "m", batch_size=2)
    assert not np.array_equal(_pixels(paths[0]), _pixels(paths[1]))


@pytest.fixture()
def trained_adapter(tiny_pipeline, tmp_path):
    requests = _requests(4, prefix="bft")
    images = generate_images(tiny_pipeline, requests, SAMPLER, ImageCache(tmp_path / "data"), "m", batch_size=4)
    # A high learning rate so that a few steps move the output visibly.
    settings = FinetuneConfig(batch_size=2, epochs=2, learning_rate=5e-2)
    record = train_lora(tiny_pipeline, images, [r.prompt for r in requests], settings, tmp_path / "adapter",
                        resolution=64)
    return tmp_path / "adapter", record


def test_finetune_saves_loadable_adapter(tiny_pipeline, trained_adapter):
    adapter_dir, record = trained_adapter
    assert record["steps"] == 4
    assert (adapter_dir / ADAPTER_WEIGHT_NAME).is_file()
    assert not getattr(tiny_pipeline.unet, "peft_config", None)  # the trained adapter was removed again
    tiny_pipeline.load_lora_weights(str(adapter_dir), weight_name=ADAPTER_WEIGHT_NAME, adapter_name=ADAPTER_NAME)
    assert ADAPTER_NAME in tiny_pipeline.get_active_adapters()


def test_lora_scale_zero_reproduces_base_output(tiny_pipeline, trained_adapter, tmp_path):
    adapter_dir, _ = trained_adapter
    requests = _requests(2)
    base = generate_images(tiny_pipeline, requests, SAMPLER, ImageCache(tmp_path / "base"), "m", batch_size=2)
    tiny_pipeline.load_lora_weights(str(adapter_dir), weight_name=ADAPTER_WEIGHT_NAME, adapter_name=ADAPTER_NAME)
    off = generate_images(tiny_pipeline, requests, SAMPLER, ImageCache(tmp_path / "off"), "m", batch_size=2,
                          cross_attention_kwargs={"scale": 0.0})
    on = generate_images(tiny_pipeline, requests, SAMPLER, ImageCache(tmp_path / "on"), "m", batch_size=2)
    for b, o in zip(base, off):
        assert np.array_equal(_pixels(b), _pixels(o))
    assert any(not np.array_equal(_pixels(b), _pixels(o)) for b, o in zip(base, on))
    tiny_pipeline.unload_lora_weights()
    again = generate_images(tiny_pipeline, requests, SAMPLER, ImageCache(tmp_path / "again"), "m", batch_size=2)
    for b, a in zip(base, again):
        assert np.array_equal(_pixels(b), _pixels(a))

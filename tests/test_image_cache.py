"""Image cache and generation bookkeeping: skipping finished images, atomic files, manifest recovery."""

import json

from PIL import Image

from spqr_runners.generate import (ImageCache, ImageRequest, SamplerSettings, generate_images, image_key,
                                   prompt_seed, write_atomic)

SAMPLER = SamplerSettings(steps=2, guidance=7.5, height=8, width=8)


class CountingPipeline:
    """Stands in for a diffusers pipeline: returns flat images whose colour encodes the seed."""

    def __init__(self):
        self.calls = []

    def __call__(self, prompt, generator, **kwargs):
        self.calls.append(list(prompt))
        images = [Image.new("RGB", (8, 8), (g.initial_seed() % 256, 0, 0)) for g in generator]
        return type("Output", (), {"images": images})()


def _requests(count):
    return [ImageRequest(f"id{i}", f"prompt {i}", prompt_seed(f"id{i}", 0)) for i in range(count)]


def test_prompt_seed_depends_on_id_and_base_seed():
    assert prompt_seed("a", 0) == prompt_seed("a", 0)
    assert prompt_seed("a", 0) != prompt_seed("b", 0)
    assert prompt_seed("a", 0) != prompt_seed("a", 1)
    assert 0 <= prompt_seed("a", 0) < 2**63


def test_key_changes_with_every_input():
    request = _requests(1)[0]
    key = image_key("model", request, SAMPLER)
    assert image_key("other-model", request, SAMPLER) != key
    assert image_key("model", ImageRequest(request.prompt_id, "other", request.seed), SAMPLER) != key
    assert image_key("model", ImageRequest(request.prompt_id, request.prompt, 1), SAMPLER) != key
    assert image_key("model", request, SamplerSettings(3, 7.5, 8, 8)) != key


def test_finished_images_are_skipped(tmp_path):
    pipeline = CountingPipeline()
    cache = ImageCache(tmp_path)
    first = generate_images(pipeline, _requests(3), SAMPLER, cache, "m", batch_size=2)
    assert len(pipeline.calls) == 2
    second = generate_images(pipeline, _requests(5), SAMPLER, cache, "m", batch_size=2)
    assert second[:3] == first
    assert pipeline.calls[2:] == [["prompt 3", "prompt 4"]]


def test_manifest_records_every_image(tmp_path):
    cache = ImageCache(tmp_path)
    generate_images(CountingPipeline(), _requests(3), SAMPLER, cache, "m", batch_size=2)
    records = cache.manifest()
    assert [record["prompt_id"] for record in records] == ["id0", "id1", "id2"]
    assert all(cache.has(record["key"]) for record in records)


def test_manifest_skips_cut_last_line(tmp_path):
    cache = ImageCache(tmp_path)
    generate_images(CountingPipeline(), _requests(2), SAMPLER, cache, "m", batch_size=2)
    with open(cache.manifest_path, "a") as stream:
        stream.write(json.dumps({"key": "abc"})[:7])
    assert len(cache.manifest()) == 2


def test_write_atomic_leaves_no_temporary_files(tmp_path):
    target = tmp_path / "sub" / "file.bin"
    write_atomic(target, b"payload")
    write_atomic(target, b"new payload")
    assert target.read_bytes() == b"new payload"
    assert [p.name for p in target.parent.iterdir()] == ["file.bin"]

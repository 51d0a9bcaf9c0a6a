"""Benign fine-tuning: profiles and their target modules, curriculum and resumption, data sources, and loading the
result into a pipeline and restoring the base model exactly. Training runs on the tiny pipeline at 32 pixels."""

import json
import logging
import random
import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from spqr_runners.config import ConfigError, FinetuneConfig, config_from_dict
from spqr_runners.finetune import ADAPTER_WEIGHT_NAME, RECORD_NAME, finetune, finetuned
from spqr_runners.finetune_checkpoints import (
    OPTIMIZER_STATE_NAME,
    load_optimizer_state,
    save_optimizer_state,
)
from spqr_runners.finetune_data import (
    ImageTextData,
    crop_image,
    dataset_captions,
    load_image_text_dataset,
    plan_curriculum,
)
from spqr_runners.finetune_targets import select_trainable
from spqr_runners.finetune_trainer import DenoiserTrainer, check_pipeline, denoising_target

CAPTIONS = [f"a photo of a red car number {i}" for i in range(6)]


def _write_images(folder, count, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        # Not square and larger than the training resolution, so resizing and cropping both happen.
        path = folder / f"image-{i}.png"
        Image.fromarray(rng.integers(0, 256, (36, 40, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


RESOLUTION = 32  # small to keep the tests fast, which works because the tiny VAE takes any multiple of 8


def _render(pipeline):
    generator = torch.Generator().manual_seed(0)
    return pipeline("a red car", num_inference_steps=2, height=RESOLUTION, width=RESOLUTION, generator=generator,
                    output_type="np").images


def _tensors(path):
    from safetensors.torch import load_file

    return load_file(str(path))


def _assert_same_tensors(first, second):
    assert sorted(first) == sorted(second)
    for key in first:
        assert torch.equal(first[key], second[key]), key


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """Run torch on one thread here: the tiny models' operations are too small to gain from more, and on a shared
    machine spinning threads make them several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def unet(tiny_sd_path):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(tiny_sd_path / "unet")


@pytest.fixture(scope="module")
def file_data(tmp_path_factory):
    paths = _write_images(tmp_path_factory.mktemp("bft-files"), 6)
    return ImageTextData.from_files(paths, CAPTIONS)


@pytest.fixture(scope="module")
def imagefolder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("imagefolder")
    paths = _write_images(folder, 4, seed=1)
    with open(folder / "metadata.jsonl", "w", encoding="utf-8") as stream:
        for i, path in enumerate(paths):
            row = {"file_name": path.name, "text": f"a watercolor of a lake {i}",
                   "alternatives": [f"lake {i}", f"a lake at dusk {i}"]}
            stream.write(json.dumps(row) + "\n")
    return folder


# ---------------------------------------------------------------------- target modules


def test_targets_lite_unet_self_and_cross_attention(unet):
    selection = select_trainable(unet, "lite")
    pattern = re.compile(r"\.attn[12]\.(to_q|to_k|to_v|to_out\.0)$")
    expected = [name for name, _ in unet.named_modules() if pattern.search(name)]
    assert selection.kind == "lora"
    assert list(selection.modules) == expected
    # 6 transformer blocks (2 down, 1 mid, 3 up) × 2 attention layers × 4 projections.
    assert len(expected) == 48


def test_targets_moderate_unet_cross_attention_only(unet):
    selection = select_trainable(unet, "moderate")
    assert selection.kind == "full"
    assert len(selection.modules) == 18
    assert all(".attn2." in name for name in selection.modules)
    assert not any(name.endswith("to_q") for name in selection.modules)
    expected = [name for name, _ in unet.named_parameters()
                if re.search(r"\.attn2\.(to_k|to_v|to_out\.0)\.(weight|bias)$", name)]
    assert list(selection.parameters) == expected


def test_targets_authors_pattern_attn2_to_out(unet):
    # The authors select attn2.to_out, whose only parameters are those of to_out.0.
    authors = select_trainable(unet, "moderate", ["attn2.to_k", "attn2.to_v", "attn2.to_out"])
    assert authors.parameters == select_trainable(unet, "moderate").parameters


def test_targets_standard_every_parameter(unet):
    selection = select_trainable(unet, "standard")
    assert list(selection.parameters) == [name for name, _ in unet.named_parameters()]


def test_targets_standard_rejects_patterns(unet):
    with pytest.raises(ValueError, match="standard profile trains every weight"):
        select_trainable(unet, "standard", ["to_q"])


def test_targets_custom_pattern(unet):
    selection = select_trainable(unet, "lite", ["attn2.to_k"])
    assert len(selection.modules) == 6
    assert all(name.endswith("attn2.to_k") for name in selection.modules)


def test_targets_unmatched_pattern_raises(unet):
    with pytest.raises(ValueError, match=r"\['attn3.to_k'\] match no module of UNet2DConditionModel"):
        select_trainable(unet, "lite", ["to_q", "attn3.to_k"])


def test_targets_lora_needs_layers(unet):
    with pytest.raises(ValueError, match="linear or convolution layers"):
        select_trainable(unet, "lite", ["attn2.to_out"])


def test_targets_sd3_joint_attention():
    from diffusers import SD3Transformer2DModel

    model = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8,
                                  num_attention_heads=2, joint_attention_dim=16, caption_projection_dim=16,
                                  pooled_projection_dim=16, out_channels=4)
    lite = select_trainable(model, "lite").modules
    for projection in ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"):
        assert f"transformer_blocks.0.attn.{projection}" in lite, projection
    moderate = select_trainable(model, "moderate").modules
    assert "transformer_blocks.1.attn.add_k_proj" in moderate
    assert "transformer_blocks.1.attn.add_v_proj" in moderate
    assert not any(name.endswith(("to_q", "to_k", "to_v", "add_q_proj")) for name in moderate)


def test_targets_flux_single_blocks():
    from diffusers import FluxTransformer2DModel

    model = FluxTransformer2DModel(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1,
                                   attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                   pooled_projection_dim=32, axes_dims_rope=[4, 4, 8])
    lite = select_trainable(model, "lite").modules
    assert "single_transformer_blocks.0.attn.to_q" in lite
    assert "transformer_blocks.0.attn.to_add_out" in lite


def test_targets_unknown_backbone_raises():
    with pytest.raises(NotImplementedError, match="no target-module mapping for Sequential"):
        select_trainable(torch.nn.Sequential(torch.nn.Linear(2, 2)), "lite")


def test_targets_unknown_backbone_with_patterns():
    selection = select_trainable(torch.nn.Sequential(torch.nn.Linear(2, 2)), "moderate", ["0"])
    assert selection.parameters == ("0.weight", "0.bias")


def test_pipeline_check_names_unsupported_class(unet):
    class FluxPipeline:
        transformer = torch.nn.Linear(2, 2)

    with pytest.raises(NotImplementedError, match="FluxPipeline.*Linear"):
        check_pipeline(FluxPipeline())


# ---------------------------------------------------------------------- settings


def test_config_defaults_follow_authors():
    settings = FinetuneConfig()
    assert settings.check() == []
    assert settings.profile == "lite"
    assert settings.target_modules is None
    assert (settings.rank, settings.alpha) == (8, 16.0)
    assert (settings.learning_rate, settings.adam_beta1, settings.adam_beta2) == (1e-4, 0.9, 0.999)
    assert (settings.weight_decay, settings.adam_epsilon, settings.max_grad_norm) == (1e-2, 1e-8, 1.0)
    assert settings.batch_size == 16
    assert settings.lr_scheduler == "constant"
    assert settings.curriculum == [1000, 3000, 5000]
    assert settings.shuffle is False


def test_config_check_reports_each_problem():
    problems = FinetuneConfig(profile="heavy", curriculum=[3000, 1000], lora_dropout=1.0).check()
    assert any(p.startswith("finetune.profile: must be one of lite, moderate, standard") for p in problems)
    assert any(p.startswith("finetune.curriculum: must be null or strictly increasing") for p in problems)
    assert any(p.startswith("finetune.lora_dropout: must be in [0, 1)") for p in problems)
    assert len(problems) == 3


def test_config_standard_with_targets_rejected():
    problems = FinetuneConfig(profile="standard", target_modules=["to_q"]).check()
    assert problems == ["finetune.target_modules: must be null for the standard profile, which trains every UNet "
                        "weight; got ['to_q']"]


def test_config_file_checks_finetune_values():
    with pytest.raises(ConfigError) as caught:
        config_from_dict({"finetune": {"profile": "full", "curriculum": [0, 10], "mixed_precision": "fp8"}})
    paths = sorted(problem.split(":")[0] for problem in caught.value.problems)
    assert paths == ["finetune.curriculum", "finetune.mixed_precision", "finetune.profile"]


def test_config_file_accepts_profiles():
    for profile in ("lite", "moderate", "standard"):
        assert config_from_dict({"finetune": {"profile": profile}}).finetune.profile == profile


# ---------------------------------------------------------------------- curriculum and images


def _spans(stages):
    return [(stage.start, stage.stop) for stage in stages]


def test_curriculum_cumulative_chunks(caplog):
    with caplog.at_level(logging.WARNING):
        stages = plan_curriculum([1000, 3000, 5000], 6000, epochs=2)
    assert _spans(stages) == [(0, 1000), (1000, 3000), (3000, 5000)]
    assert [stage.index for stage in stages] == [1, 2, 3]
    assert all(stage.epochs == 2 for stage in stages)
    assert "the last 1000 are not trained" in caplog.text


def test_curriculum_clips_with_warning(caplog):
    with caplog.at_level(logging.WARNING):
        assert _spans(plan_curriculum([2, 4, 10], 5, epochs=1)) == [(0, 2), (2, 4), (4, 5)]
    assert "exceed the 5 fine-tuning images" in caplog.text
    assert _spans(plan_curriculum([1000, 3000, 5000], 24, epochs=1)) == [(0, 24)]


def test_curriculum_none_one_stage():
    assert _spans(plan_curriculum(None, 7, epochs=1)) == [(0, 7)]


@pytest.mark.parametrize("boundaries", [[3, 3], [0, 2], [], [2.5]])
def test_curriculum_invalid_raises(boundaries):
    with pytest.raises(ValueError, match="strictly increasing positive integers"):
        plan_curriculum(boundaries, 10, epochs=1)


def test_curriculum_empty_data_raises():
    with pytest.raises(ValueError, match="fine-tuning data is empty"):
        plan_curriculum([10], 0, epochs=1)


def test_crop_size_and_range():
    image = Image.fromarray(np.full((48, 96, 3), 255, dtype=np.uint8))
    pixels = crop_image(image, 32, random.Random(0))
    assert pixels.shape == (3, 32, 32)
    assert torch.allclose(pixels, torch.ones_like(pixels))


def test_crop_center_takes_middle():
    # Left half black, right half white: a centred square crop of the resized image is half and half.
    array = np.zeros((32, 64, 3), dtype=np.uint8)
    array[:, 32:] = 255
    pixels = crop_image(Image.fromarray(array), 32, random.Random(0), center=True)
    assert pixels[0, 0, 0] == -1.0
    assert pixels[0, 0, -1] == 1.0


def test_files_exif_orientation_applied(tmp_path):
    # Stored 16 wide and 8 high with "rotate 90" in EXIF: a viewer, and the judges, show it 8 wide and 16 high.
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    Image.new("RGB", (16, 8), (200, 10, 10)).save(path, exif=exif)

    image = ImageTextData.from_files([path], ["a red card"]).image(0)

    assert image.size == (8, 16)
    assert image.mode == "RGB"


def test_files_16_bit_grayscale_scaled(tmp_path):
    path = tmp_path / "deep.png"
    Image.fromarray(np.full((8, 8), 128 * 257, dtype=np.uint16)).save(path)  # mid grey in 16 bits

    image = ImageTextData.from_files([path], ["a grey square"]).image(0)

    assert np.asarray(image).max() == 128  # a plain convert("RGB") clips it to 255


def test_files_unreadable_image_named(tmp_path):
    from spqr_metric.judges.images import ImageReadError

    path = tmp_path / "broken.png"
    path.write_bytes(b"not a png")

    with pytest.raises(ImageReadError, match="broken.png"):
        ImageTextData.from_files([path], ["a caption"]).image(0)


def test_crop_random_window_follows_rng():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 200, 3), dtype=np.uint8))
    first = crop_image(image, 32, random.Random(1))
    assert torch.equal(first, crop_image(image, 32, random.Random(1)))
    assert not torch.equal(first, crop_image(image, 32, random.Random(2)))


def test_optimizer_state_round_trip(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.8, 0.99))
    for _ in range(2):
        model(torch.randn(4, 3)).square().sum().backward()
        optimizer.step()
    save_optimizer_state(optimizer, tmp_path / "optimizer.safetensors")
    restored = torch.optim.AdamW(model.parameters(), lr=1.0)
    load_optimizer_state(restored, tmp_path / "optimizer.safetensors")
    original, loaded = optimizer.state_dict(), restored.state_dict()
    assert loaded["param_groups"] == original["param_groups"]
    for index, entries in original["state"].items():
        for name, value in entries.items():
            assert torch.equal(loaded["state"][index][name], value), (index, name)


def test_denoising_target_velocity():
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(prediction_type="v_prediction")
    latents, noise = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    timesteps = torch.tensor([10, 900])
    alpha_bar = scheduler.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
    expected = alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * latents
    assert torch.allclose(denoising_target(scheduler, latents, noise, timesteps), expected, atol=1e-6)


def test_denoising_target_epsilon_and_sample():
    from diffusers import DDPMScheduler

    latents, noise, timesteps = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8), torch.tensor([5])
    assert denoising_target(DDPMScheduler(), latents, noise, timesteps) is noise
    assert denoising_target(DDPMScheduler(prediction_type="sample"), latents, noise, timesteps) is latents


# ---------------------------------------------------------------------- data sources


def test_imagefolder_rows_in_order(imagefolder):
    data = load_image_text_dataset(str(imagefolder))
    assert len(data) == 4
    assert data.all_captions() == [f"a watercolor of a lake {i}" for i in range(4)]
    assert data.image(2).size == (40, 36)
    assert data.image(2).mode == "RGB"


def test_imagefolder_caption_lists(imagefolder):
    data = load_image_text_dataset(str(imagefolder), caption_column="alternatives", limit=2)
    assert data.all_captions() == ["lake 0", "a lake at dusk 0", "lake 1", "a lake at dusk 1"]
    assert data.caption(1, random.Random(0)) in ("lake 1", "a lake at dusk 1")


def test_imagefolder_missing_column_raises(imagefolder):
    with pytest.raises(ValueError, match="no column 'caption'.*finetune.caption_column"):
        load_image_text_dataset(str(imagefolder), caption_column="caption")


def test_dataset_captions_from_settings(imagefolder):
    captions = dataset_captions(FinetuneConfig(dataset=str(imagefolder), dataset_limit=3))
    assert captions == [f"a watercolor of a lake {i}" for i in range(3)]


def test_files_count_mismatch_raises(tmp_path):
    with pytest.raises(ValueError, match="2 images but 1 captions"):
        ImageTextData.from_files(_write_images(tmp_path, 2), ["one"])


# ---------------------------------------------------------------------- training, loading, restoring


PROFILE_RATES = {"lite": 5e-2, "moderate": 1e-3, "standard": 1e-3}  # large enough for one step to show


@pytest.fixture(scope="module", params=sorted(PROFILE_RATES))
def profile_run(request, tiny_sd_path, imagefolder, tmp_path_factory):
    """One training step of a profile on the imagefolder data: pipeline, base output, output folder, record."""
    from diffusers import DiffusionPipeline

    pipeline = DiffusionPipeline.from_pretrained(tiny_sd_path, safety_checker=None, requires_safety_checker=False)
    pipeline.set_progress_bar_config(disable=True)
    base = _render(pipeline)
    settings = FinetuneConfig(profile=request.param, batch_size=2, curriculum=None, max_steps=1,
                              learning_rate=PROFILE_RATES[request.param])
    output = tmp_path_factory.mktemp(request.param) / "out"
    data = load_image_text_dataset(str(imagefolder))
    record = finetune(pipeline, data, settings, output, resolution=RESOLUTION)
    return pipeline, base, output, record


def test_profile_trains_loads_restores(profile_run, imagefolder):
    pipeline, base, output, record = profile_run
    assert record["steps"] == 1
    assert record["data"]["source"] == f"dataset {str(imagefolder)!r}"
    assert json.loads((output / RECORD_NAME).read_text()) == record
    assert np.array_equal(_render(pipeline), base)  # training left the pipeline as it was
    with finetuned(pipeline, output):
        tuned = _render(pipeline)
    assert not np.array_equal(tuned, base)
    assert np.array_equal(_render(pipeline), base)


def test_profile_output_loadable(profile_run):
    from diffusers import UNet2DConditionModel

    pipeline, _, output, record = profile_run
    if record["profile"] == "lite":
        assert record["kind"] == "lora"
        pipeline.load_lora_weights(str(output), weight_name=ADAPTER_WEIGHT_NAME, adapter_name="user")
        assert "user" in pipeline.get_active_adapters()
        pipeline.unload_lora_weights()
    else:
        assert record["kind"] == "unet"
        tuned = UNet2DConditionModel.from_pretrained(output / record["weights"])
        assert tuned.dtype == torch.float32


def test_profile_trains_selected_weights_only(profile_run):
    from diffusers import UNet2DConditionModel

    pipeline, _, output, record = profile_run
    if record["kind"] == "lora":
        modules = select_trainable(pipeline.unet, "lite").modules
        expected = {f"unet.{name}.lora.{part}.weight" for name in modules for part in ("down", "up")}
        assert set(_tensors(output / ADAPTER_WEIGHT_NAME)) == expected
        return
    tuned = UNet2DConditionModel.from_pretrained(output / record["weights"]).state_dict()
    trained = set(select_trainable(pipeline.unet, record["profile"]).parameters)
    changed = {name for name, value in pipeline.unet.state_dict().items() if not torch.equal(tuned[name], value)}
    # Adam's first step moves every parameter with a nonzero gradient, and only trained ones get a step.
    assert changed <= trained
    assert len(changed) > len(trained) // 2


CURRICULUM = FinetuneConfig(batch_size=2, curriculum=[2, 4, 6], learning_rate=1e-3, seed=3)


@pytest.fixture(scope="module")
def reference_run(tiny_sd_path, file_data, tmp_path_factory):
    """An uninterrupted three-stage lite run: its output folder and record."""
    from diffusers import DiffusionPipeline

    pipeline = DiffusionPipeline.from_pretrained(tiny_sd_path, safety_checker=None, requires_safety_checker=False)
    output = tmp_path_factory.mktemp("reference") / "out"
    return output, finetune(pipeline, file_data, CURRICULUM, output, resolution=RESOLUTION)


def test_lora_reload_scales_by_alpha_over_rank(tiny_pipeline, reference_run):
    output, _ = reference_run
    saved = _tensors(output / ADAPTER_WEIGHT_NAME)
    name = "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"
    down, up = saved[f"unet.{name}.lora.down.weight"], saved[f"unet.{name}.lora.up.weight"]
    base_weight = tiny_pipeline.unet.get_submodule(name).weight.detach().clone()
    inputs = torch.randn(3, base_weight.shape[1])
    with finetuned(tiny_pipeline, output):
        with torch.no_grad():
            output_features = tiny_pipeline.unet.get_submodule(name)(inputs)
    # The defaults are rank 8 and alpha 16, so the update B·A is scaled by 2, with no dropout at inference.
    expected = inputs @ (base_weight + (16.0 / 8) * up @ down).T
    assert torch.allclose(output_features, expected, atol=1e-5)


def test_curriculum_stages_checkpointed(reference_run):
    output, record = reference_run
    assert [(s["start"], s["stop"], s["steps"]) for s in record["stages"]] == [(0, 2, 1), (2, 4, 1), (4, 6, 1)]
    assert record["steps"] == 3
    assert len(record["losses"]) == 3
    for index in (1, 2, 3):
        assert (output / f"stage-{index}" / ADAPTER_WEIGHT_NAME).is_file()
    # Only the newest stage keeps optimizer moments; the output is the last stage's adapter.
    assert [(output / f"stage-{i}" / OPTIMIZER_STATE_NAME).is_file() for i in (1, 2, 3)] == [False, False, True]
    _assert_same_tensors(_tensors(output / ADAPTER_WEIGHT_NAME), _tensors(output / "stage-3" / ADAPTER_WEIGHT_NAME))
    assert not _same(output / "stage-1" / ADAPTER_WEIGHT_NAME, output / "stage-3" / ADAPTER_WEIGHT_NAME)


def _same(first, second):
    a, b = _tensors(first), _tensors(second)
    return all(torch.equal(a[key], b[key]) for key in a)


def test_resume_after_crash_matches_uninterrupted(tiny_pipeline, file_data, reference_run, tmp_path, monkeypatch):
    original_step = DenoiserTrainer.step
    calls = []

    def crash_in_stage_two(self, pixels, captions):
        calls.append(len(captions))
        if len(calls) == 2:
            raise RuntimeError("simulated crash")
        return original_step(self, pixels, captions)

    monkeypatch.setattr(DenoiserTrainer, "step", crash_in_stage_two)
    with pytest.raises(RuntimeError, match="simulated crash"):
        finetune(tiny_pipeline, file_data, CURRICULUM, tmp_path / "out", resolution=RESOLUTION)
    assert (tmp_path / "out" / "stage-1" / "stage.json").is_file()
    assert not (tmp_path / "out" / "stage-2").exists()
    assert not getattr(tiny_pipeline.unet, "peft_config", None)  # the crash still removed the adapter

    monkeypatch.setattr(DenoiserTrainer, "step", original_step)
    record = finetune(tiny_pipeline, file_data, CURRICULUM, tmp_path / "out", resolution=RESOLUTION)
    assert [stage["resumed"] for stage in record["stages"]] == [True, False, False]
    output, reference = reference_run
    _assert_same_tensors(_tensors(tmp_path / "out" / ADAPTER_WEIGHT_NAME), _tensors(output / ADAPTER_WEIGHT_NAME))
    assert record["losses"] == reference["losses"]
    assert record["fingerprint"] == reference["fingerprint"]


def test_rerun_reuses_finished_stages(tiny_pipeline, file_data, reference_run, tmp_path, monkeypatch):
    output, reference = reference_run
    shutil.copytree(output, tmp_path / "out")

    def no_training(self, pixels, captions):
        raise AssertionError("a finished stage was trained again")

    monkeypatch.setattr(DenoiserTrainer, "step", no_training)
    record = finetune(tiny_pipeline, file_data, CURRICULUM, tmp_path / "out", resolution=RESOLUTION)
    assert [stage["resumed"] for stage in record["stages"]] == [True, True, True]
    assert record["fingerprint"] == reference["fingerprint"]


def test_same_seed_identical_adapter(tiny_pipeline, file_data, reference_run, tmp_path):
    output, _ = reference_run
    finetune(tiny_pipeline, file_data, CURRICULUM, tmp_path / "out", resolution=RESOLUTION)
    _assert_same_tensors(_tensors(tmp_path / "out" / ADAPTER_WEIGHT_NAME), _tensors(output / ADAPTER_WEIGHT_NAME))


def test_changed_seed_retrains_stale_stages(tiny_pipeline, file_data, reference_run, tmp_path):
    output, reference = reference_run
    shutil.copytree(output, tmp_path / "out")
    settings = FinetuneConfig(**{**CURRICULUM.__dict__, "seed": 4})
    record = finetune(tiny_pipeline, file_data, settings, tmp_path / "out", resolution=RESOLUTION)
    assert [stage["resumed"] for stage in record["stages"]] == [False, False, False]
    assert record["fingerprint"] != reference["fingerprint"]
    assert not _same(tmp_path / "out" / ADAPTER_WEIGHT_NAME, output / ADAPTER_WEIGHT_NAME)


def test_overrides_recorded_as_effective(tiny_pipeline, file_data, tmp_path):
    settings = FinetuneConfig(batch_size=3, curriculum=[3, 6], max_steps=1, mixed_precision="bf16",
                              prediction_type="v_prediction", lr_scheduler="cosine", shuffle=True, rank=4)
    record = finetune(tiny_pipeline, file_data, settings, tmp_path / "out", resolution=RESOLUTION)
    effective = record["settings"]
    assert effective["mixed_precision"] == "bf16"
    assert effective["prediction_type"] == record["prediction_type"] == "v_prediction"
    assert (effective["lr_scheduler"], effective["rank"], effective["shuffle"]) == ("cosine", 4, True)
    assert effective["target_modules"] == ["to_q", "to_k", "to_v", "to_out.0"]
    assert effective["resolution"] == RESOLUTION
    # max_steps=1 ends training inside the first stage, so the second is dropped from the plan.
    assert effective["curriculum"] == [3]
    assert [stage["steps"] for stage in record["stages"]] == [1]


def test_gradient_checkpointing_same_adapter(tiny_pipeline, file_data, tmp_path):
    outputs = {}
    for checkpointing in (False, True):
        settings = FinetuneConfig(batch_size=2, curriculum=None, max_steps=1, gradient_checkpointing=checkpointing)
        finetune(tiny_pipeline, file_data, settings, tmp_path / str(checkpointing), resolution=RESOLUTION)
        outputs[checkpointing] = _tensors(tmp_path / str(checkpointing) / ADAPTER_WEIGHT_NAME)
    assert not tiny_pipeline.unet.is_gradient_checkpointing  # switched off again after training
    for key in outputs[False]:
        assert torch.allclose(outputs[True][key], outputs[False][key], atol=1e-6), key

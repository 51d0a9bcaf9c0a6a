"""Pulling models from local paths: replacement UNet and text-encoder files, LoRA adapters, pickle policy,
strict key checks, fingerprints and configuration checks. Hub traffic is tested in test_pull_hub.py.

The helpers at the top build the weight files from the tiny pipeline and are shared with test_pull_hub.py.
"""

import shutil
from pathlib import Path

import pytest
import safetensors.torch
import torch

from spqr_runners.config import ConfigError, ModelConfig, config_from_dict
from spqr_runners.pull import ModelNotFoundError, load_pipeline, resolve_model
from spqr_runners.weight_files import PickleRejectedError, folder_fingerprint
from spqr_runners.weights import StateDictMismatchError, load_state_dict_file

CPU = torch.device("cpu")
LORA_RANK, LORA_ALPHA = 4, 8
LORA_MODULE = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"


# ----------------------------------------------------------------------------------------------- helpers


def perturbed(state_dict, seed):
    """Return a copy of ``state_dict`` with seeded noise added to every floating-point tensor."""
    generator = torch.Generator().manual_seed(seed)
    return {
        key: value + 0.05 * torch.randn(value.shape, generator=generator) if value.is_floating_point() else value
        for key, value in state_dict.items()
    }


def tiny_unet_state(tiny_sd_path):
    return safetensors.torch.load_file(tiny_sd_path / "unet" / "diffusion_pytorch_model.safetensors")


def tiny_text_encoder_state(tiny_sd_path, legacy_prefix=False):
    """The tiny CLIP text encoder's state dict; ``legacy_prefix`` names keys as transformers 4.x saved them."""
    state = safetensors.torch.load_file(tiny_sd_path / "text_encoder" / "model.safetensors")
    if legacy_prefix:
        state = {"text_model." + key: value for key, value in state.items()}
        state["text_model.embeddings.position_ids"] = torch.arange(77)[None]
    return state


def save_lora(tiny_sd_path, folder, seed=0):
    """Save a LoRA adapter on the tiny UNet with diffusers' ``save_lora_weights``; return the file's tensors."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = UNet2DConditionModel.from_pretrained(tiny_sd_path / "unet")
    config = LoraConfig(r=LORA_RANK, lora_alpha=LORA_ALPHA, target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    unet.add_adapter(config, adapter_name="erase")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in unet.named_parameters():
            if "lora_" in name:  # lora_B starts at zero, which would make the adapter a no-op
                parameter.copy_(0.1 * torch.randn(parameter.shape, generator=generator))
    state = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet, adapter_name="erase"))
    StableDiffusionPipeline.save_lora_weights(
        folder, unet_lora_layers=state, unet_lora_adapter_metadata=config.to_dict(), safe_serialization=True
    )
    return safetensors.torch.load_file(Path(folder) / "pytorch_lora_weights.safetensors")


def expected_fused_weight(base_weight, lora_state):
    """W + (alpha / r) · up · down for ``LORA_MODULE``: what fusing the adapter must produce."""
    down = lora_state[f"unet.{LORA_MODULE}.lora.down.weight"]
    up = lora_state[f"unet.{LORA_MODULE}.lora.up.weight"]
    return base_weight + (LORA_ALPHA / LORA_RANK) * up @ down


def load(config, cache_dir):
    return load_pipeline(resolve_model(config, cache_dir), config, device=CPU, dtype=torch.float32)


def assert_state_equal(module, state_dict):
    actual = module.state_dict()
    for key, value in state_dict.items():
        assert torch.equal(actual[key], value), key


def module_weight(unet, path):
    return unet.get_submodule(path).weight.detach().clone()


class NotATensor:
    """A class that a weights-only unpickler must reject."""

    def __init__(self):
        self.payload = "anything"


# ----------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def unet_file(tiny_sd_path, tmp_path_factory):
    path = tmp_path_factory.mktemp("esd") / "esd-unet.safetensors"
    safetensors.torch.save_file(perturbed(tiny_unet_state(tiny_sd_path), seed=1), path)
    return path


@pytest.fixture(scope="module")
def text_encoder_file(tiny_sd_path, tmp_path_factory):
    path = tmp_path_factory.mktemp("advunlearn") / "text_encoder.safetensors"
    safetensors.torch.save_file(perturbed(tiny_text_encoder_state(tiny_sd_path, legacy_prefix=True), seed=2), path)
    return path


@pytest.fixture(scope="module")
def lora_folder(tiny_sd_path, tmp_path_factory):
    folder = tmp_path_factory.mktemp("lora")
    save_lora(tiny_sd_path, folder)
    return folder


@pytest.fixture(scope="module")
def pickled_pipeline(tiny_sd_path, tmp_path_factory):
    """The tiny pipeline saved with pickle checkpoints (transformers 5 still writes safetensors for CLIP)."""
    from diffusers import DiffusionPipeline

    folder = tmp_path_factory.mktemp("pickled") / "model"
    DiffusionPipeline.from_pretrained(tiny_sd_path).save_pretrained(folder, safe_serialization=False)
    assert not list((folder / "unet").glob("*.safetensors"))
    return folder


# ------------------------------------------------------------------------------------ replacement weights


def test_unet_file_replaces_unet(tiny_sd_path, unet_file, tmp_path):
    pipeline = load(ModelConfig(id=str(tiny_sd_path), unet=str(unet_file)), tmp_path)
    assert_state_equal(pipeline.unet, safetensors.torch.load_file(unet_file))


def test_unet_file_keeps_text_encoder(tiny_sd_path, unet_file, tmp_path):
    pipeline = load(ModelConfig(id=str(tiny_sd_path), unet=str(unet_file)), tmp_path)
    assert_state_equal(pipeline.text_encoder, tiny_text_encoder_state(tiny_sd_path))


def test_text_encoder_legacy_keys_load(tiny_sd_path, text_encoder_file, tmp_path):
    pipeline = load(ModelConfig(id=str(tiny_sd_path), text_encoder=str(text_encoder_file)), tmp_path)
    expected = {key.removeprefix("text_model."): value
                for key, value in safetensors.torch.load_file(text_encoder_file).items()
                if not key.endswith("position_ids")}
    assert_state_equal(pipeline.text_encoder, expected)


def test_text_encoder_current_keys_load(tiny_sd_path, tmp_path):
    state = perturbed(tiny_text_encoder_state(tiny_sd_path), seed=3)
    path = tmp_path / "encoder.safetensors"
    safetensors.torch.save_file(state, path)
    pipeline = load(ModelConfig(id=str(tiny_sd_path), text_encoder=str(path)), tmp_path)
    assert_state_equal(pipeline.text_encoder, state)


def test_all_parts_keep_pipeline_dtype(tiny_sd_path, unet_file, text_encoder_file, lora_folder, tmp_path):
    config = ModelConfig(id=str(tiny_sd_path), unet=str(unet_file), text_encoder=str(text_encoder_file),
                         adapter=str(lora_folder))
    pipeline = load_pipeline(resolve_model(config, tmp_path), config, device=CPU, dtype=torch.bfloat16)
    assert pipeline.unet.dtype == torch.bfloat16
    assert pipeline.text_encoder.dtype == torch.bfloat16
    assert pipeline.text_encoder is pipeline.components["text_encoder"]


def test_text_encoder_file_as_unet_rejected(tiny_sd_path, text_encoder_file, tmp_path):
    config = ModelConfig(id=str(tiny_sd_path), unet=str(text_encoder_file))
    with pytest.raises(StateDictMismatchError) as caught:
        load(config, tmp_path)
    unet_keys = len(tiny_unet_state(tiny_sd_path))
    assert len(caught.value.missing) == unet_keys
    assert len(caught.value.unexpected) == len(safetensors.torch.load_file(text_encoder_file))
    assert f"missing keys ({unet_keys}): " in str(caught.value)
    assert "CLIP text encoder (set model.text_encoder" in str(caught.value)


def test_unet_file_as_text_encoder_rejected(tiny_sd_path, unet_file, tmp_path):
    config = ModelConfig(id=str(tiny_sd_path), text_encoder=str(unet_file))
    with pytest.raises(StateDictMismatchError) as caught:
        load(config, tmp_path)
    assert len(caught.value.unexpected) == len(tiny_unet_state(tiny_sd_path))
    assert "diffusers UNet (set model.unet" in str(caught.value)


def test_mismatch_message_lists_first_keys(tiny_sd_path, text_encoder_file, tmp_path):
    config = ModelConfig(id=str(tiny_sd_path), unet=str(text_encoder_file))
    with pytest.raises(StateDictMismatchError) as caught:
        load(config, tmp_path)
    missing = caught.value.missing
    message = str(caught.value)
    assert ", ".join(missing[:10]) in message
    assert f"... and {len(missing) - 10} more" in message


def test_unet_shape_mismatch_named(tiny_sd_path, tmp_path):
    state = tiny_unet_state(tiny_sd_path)
    state["conv_in.weight"] = torch.zeros(16, 4, 3, 3)
    path = tmp_path / "bad.safetensors"
    safetensors.torch.save_file(state, path)
    with pytest.raises(StateDictMismatchError) as caught:
        load(ModelConfig(id=str(tiny_sd_path), unet=str(path)), tmp_path)
    assert caught.value.mismatched == [("conv_in.weight", (16, 4, 3, 3), (32, 4, 3, 3))]
    assert caught.value.missing == []
    assert "conv_in.weight (file [16, 4, 3, 3], model [32, 4, 3, 3])" in str(caught.value)


def test_text_encoder_shape_mismatch_named(tiny_sd_path, tmp_path):
    state = tiny_text_encoder_state(tiny_sd_path)
    state["final_layer_norm.weight"] = torch.ones(8)
    path = tmp_path / "bad.safetensors"
    safetensors.torch.save_file(state, path)
    with pytest.raises(StateDictMismatchError) as caught:
        load(ModelConfig(id=str(tiny_sd_path), text_encoder=str(path)), tmp_path)
    assert [key for key, _, _ in caught.value.mismatched] == ["final_layer_norm.weight"]


def test_unet_missing_key_rejected(tiny_sd_path, tmp_path):
    state = tiny_unet_state(tiny_sd_path)
    del state["conv_out.bias"]
    path = tmp_path / "partial.safetensors"
    safetensors.torch.save_file(state, path)
    with pytest.raises(StateDictMismatchError) as caught:
        load(ModelConfig(id=str(tiny_sd_path), unet=str(path)), tmp_path)
    assert caught.value.missing == ["conv_out.bias"]
    assert caught.value.unexpected == []


def test_sharded_unet_folder_loads(tiny_sd_path, tmp_path):
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(tiny_sd_path / "unet")
    with torch.no_grad():
        unet.conv_in.bias.add_(1.0)
    unet.save_pretrained(tmp_path / "sharded", max_shard_size="1MB")
    assert len(list((tmp_path / "sharded").glob("*.safetensors"))) > 1
    resolved = resolve_model(ModelConfig(id=str(tiny_sd_path), unet=str(tmp_path / "sharded")), tmp_path)
    assert resolved.unet.weight_name == "diffusion_pytorch_model.safetensors.index.json"
    pipeline = load_pipeline(resolved, ModelConfig(allow_pickle=False), device=CPU, dtype=torch.float32)
    assert torch.equal(pipeline.unet.conv_in.bias, unet.conv_in.bias)


# ------------------------------------------------------------------------------------------------ pickles


def test_unet_pickle_rejected_by_default(tiny_sd_path, tmp_path):
    path = tmp_path / "unet.pt"
    torch.save(tiny_unet_state(tiny_sd_path), path)
    with pytest.raises(PickleRejectedError, match="model.allow_pickle: true"):
        resolve_model(ModelConfig(id=str(tiny_sd_path), unet=str(path)), tmp_path)


def test_unet_pickle_loaded_with_opt_in(tiny_sd_path, tmp_path):
    state = perturbed(tiny_unet_state(tiny_sd_path), seed=4)
    path = tmp_path / "unet.pt"
    torch.save(state, path)
    pipeline = load(ModelConfig(id=str(tiny_sd_path), unet=str(path), allow_pickle=True), tmp_path)
    assert_state_equal(pipeline.unet, state)


def test_pickle_with_object_rejected(tmp_path):
    path = tmp_path / "trap.pt"
    torch.save({"weight": torch.zeros(2), "extra": NotATensor()}, path)
    assert isinstance(torch.load(path, weights_only=False)["extra"], NotATensor)  # a full unpickler runs it
    with pytest.raises(PickleRejectedError, match="weights_only=True"):
        load_state_dict_file(path, allow_pickle=True, description="UNet weights")


def test_pickle_state_dict_entry_unwrapped(tmp_path):
    path = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": {"weight": torch.ones(2)}, "global_step": 10}, path)
    state = load_state_dict_file(path, allow_pickle=True, description="UNet weights")
    assert list(state) == ["weight"]


def test_pickle_non_tensor_entries_rejected(tmp_path):
    path = tmp_path / "mixed.pt"
    torch.save({"weight": torch.ones(2), "step": 3}, path)
    with pytest.raises(ValueError, match=r"step \(int\)"):
        load_state_dict_file(path, allow_pickle=True, description="UNet weights")


def test_pickle_only_pipeline_rejected(pickled_pipeline, tmp_path):
    with pytest.raises(PickleRejectedError, match=r"unet \(unet/diffusion_pytorch_model.bin\)"):
        resolve_model(ModelConfig(id=str(pickled_pipeline)), tmp_path)


def test_pickle_only_pipeline_loaded_with_opt_in(tiny_sd_path, pickled_pipeline, tmp_path):
    pipeline = load(ModelConfig(id=str(pickled_pipeline), allow_pickle=True), tmp_path)
    assert_state_equal(pipeline.unet, tiny_unet_state(tiny_sd_path))


# --------------------------------------------------------------------------------------------------- LoRA


def test_lora_folder_fused(tiny_sd_path, lora_folder, tmp_path):
    base = load(ModelConfig(id=str(tiny_sd_path)), tmp_path)
    pipeline = load(ModelConfig(id=str(tiny_sd_path), adapter=str(lora_folder)), tmp_path)
    lora_state = safetensors.torch.load_file(lora_folder / "pytorch_lora_weights.safetensors")
    expected = expected_fused_weight(module_weight(base.unet, LORA_MODULE), lora_state)
    torch.testing.assert_close(module_weight(pipeline.unet, LORA_MODULE), expected)


def test_lora_layers_removed_after_fusing(tiny_sd_path, lora_folder, tmp_path):
    pipeline = load(ModelConfig(id=str(tiny_sd_path), adapter=str(lora_folder)), tmp_path)
    assert pipeline.get_list_adapters() == {}


def test_lora_extra_module_rejected(tiny_sd_path, lora_folder, tmp_path):
    state = safetensors.torch.load_file(lora_folder / "pytorch_lora_weights.safetensors")
    state["unet.down_blocks.7.attentions.0.transformer_blocks.0.attn1.to_q.lora.down.weight"] = torch.zeros(4, 64)
    state["unet.down_blocks.7.attentions.0.transformer_blocks.0.attn1.to_q.lora.up.weight"] = torch.zeros(64, 4)
    path = tmp_path / "extra.bin"
    torch.save(state, path)
    config = ModelConfig(id=str(tiny_sd_path), adapter=str(path), allow_pickle=True)
    with pytest.raises(ValueError, match="only partly loaded"):
        load(config, tmp_path)


def test_lora_without_lora_keys_rejected(tiny_sd_path, unet_file, tmp_path):
    config = ModelConfig(id=str(tiny_sd_path), adapter=str(unet_file))
    with pytest.raises(ValueError, match="has no LoRA weights") as caught:
        load(config, tmp_path)
    assert "diffusers UNet" in str(caught.value)


# ------------------------------------------------------------------------------------------- fingerprints


def test_fingerprint_changes_with_unet_weights(tiny_sd_path, tiny_unet_copy, tmp_path):
    config = ModelConfig(id=str(tiny_sd_path), unet=str(tiny_unet_copy))
    before = resolve_model(config, tmp_path).fingerprint
    safetensors.torch.save_file(perturbed(tiny_unet_state(tiny_sd_path), seed=5), tiny_unet_copy)
    assert resolve_model(config, tmp_path).fingerprint != before


def test_fingerprint_follows_content_not_path(tiny_sd_path, unet_file, tmp_path):
    copy = tmp_path / "copy" / unet_file.name
    copy.parent.mkdir()
    shutil.copy(unet_file, copy)
    first = resolve_model(ModelConfig(id=str(tiny_sd_path), unet=str(unet_file)), tmp_path)
    second = resolve_model(ModelConfig(id=str(tiny_sd_path), unet=str(copy)), tmp_path)
    assert first.fingerprint == second.fingerprint


def test_folder_fingerprint_changes_with_weights(tiny_sd_path, tmp_path):
    copy = shutil.copytree(tiny_sd_path, tmp_path / "pipeline")
    before = folder_fingerprint(copy)
    assert before == folder_fingerprint(tiny_sd_path)
    safetensors.torch.save_file(perturbed(tiny_unet_state(tiny_sd_path), seed=6),
                                copy / "unet" / "diffusion_pytorch_model.safetensors")
    assert folder_fingerprint(copy) != before


def test_folder_fingerprint_ignores_hidden_files(tiny_sd_path, tmp_path):
    copy = shutil.copytree(tiny_sd_path, tmp_path / "pipeline")
    (copy / ".cache").mkdir()
    (copy / ".cache" / "download.lock").write_text("x")
    assert folder_fingerprint(copy) == folder_fingerprint(tiny_sd_path)


def test_record_names_each_part(tiny_sd_path, unet_file, lora_folder, tmp_path):
    resolved = resolve_model(ModelConfig(id=str(tiny_sd_path), unet=str(unet_file), adapter=str(lora_folder)),
                             tmp_path)
    record = resolved.record()
    unet, adapter = record["weights"]
    assert record["unet"] == str(unet_file)
    assert record["adapter"] == str(lora_folder)
    assert record["text_encoder"] is None
    assert unet["role"] == "unet"
    assert unet["weight_name"] == unet_file.name
    assert adapter["weight_name"] == "pytorch_lora_weights.safetensors"
    assert record["fingerprint"] == (f"{folder_fingerprint(tiny_sd_path)}+unet:{unet['fingerprint']}"
                                     f"+adapter:{adapter['fingerprint']}")


@pytest.fixture
def tiny_unet_copy(tiny_sd_path, tmp_path):
    path = tmp_path / "unet.safetensors"
    shutil.copy(tiny_sd_path / "unet" / "diffusion_pytorch_model.safetensors", path)
    return path


# ------------------------------------------------------------------------------------ sources and configs


def test_model_id_weight_file_rejected(unet_file, tmp_path):
    with pytest.raises(ValueError, match="not a diffusers pipeline"):
        resolve_model(ModelConfig(id=str(unet_file)), tmp_path)


def test_missing_local_path_rejected(tiny_sd_path, tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        resolve_model(ModelConfig(id=str(tiny_sd_path), unet="./no/such/unet.safetensors"), tmp_path)


def test_revision_on_local_path_rejected(tiny_sd_path, tmp_path):
    with pytest.raises(ValueError, match="model.revision is 'main'"):
        resolve_model(ModelConfig(id=str(tiny_sd_path), revision="main"), tmp_path)


def test_weight_name_on_file_rejected(tiny_sd_path, unet_file, tmp_path):
    config = ModelConfig(id=str(tiny_sd_path), unet=str(unet_file), unet_weight_name="x.safetensors")
    with pytest.raises(ValueError, match="model.unet_weight_name is 'x.safetensors'"):
        resolve_model(config, tmp_path)


def test_ambiguous_folder_needs_weight_name(tiny_sd_path, unet_file, tmp_path):
    for name in ("a.safetensors", "b.safetensors"):
        shutil.copy(unet_file, tmp_path / name)
    with pytest.raises(ValueError, match="Set model.unet_weight_name"):
        resolve_model(ModelConfig(id=str(tiny_sd_path), unet=str(tmp_path)), tmp_path)


def test_weight_name_picks_file(tiny_sd_path, unet_file, tmp_path):
    for name in ("a.safetensors", "b.safetensors"):
        shutil.copy(unet_file, tmp_path / name)
    config = ModelConfig(id=str(tiny_sd_path), unet=str(tmp_path), unet_weight_name="b.safetensors")
    assert resolve_model(config, tmp_path).unet.path == tmp_path / "b.safetensors"


def test_folder_prefers_safetensors_over_pickle(tiny_sd_path, unet_file, tmp_path):
    shutil.copy(unet_file, tmp_path / "weights.safetensors")
    torch.save({"weight": torch.zeros(1)}, tmp_path / "weights.pt")
    resolved = resolve_model(ModelConfig(id=str(tiny_sd_path), unet=str(tmp_path)), tmp_path)
    assert resolved.unet.weight_name == "weights.safetensors"


def test_pipeline_folder_picks_unet_subfolder(tiny_sd_path, tmp_path):
    resolved = resolve_model(ModelConfig(id=str(tiny_sd_path), unet=str(tiny_sd_path)), tmp_path)
    assert resolved.unet.weight_name == "unet/diffusion_pytorch_model.safetensors"


def test_config_revision_without_source_rejected(tiny_sd_path, tmp_path):
    config = ModelConfig(id=str(tiny_sd_path), unet_revision="v1")
    with pytest.raises(ConfigError, match="model.unet_revision: is 'v1' but model.unet is not set"):
        resolve_model(config, tmp_path)


def test_config_embedded_revision_rejected():
    problems = ModelConfig(id="embedded:tiny-sd", revision="main").check()
    assert problems == ["model.revision: must be null for the embedded model 'embedded:tiny-sd', which has no "
                        "revisions or variants; got 'main'"]


def test_config_weight_name_suffix_checked():
    with pytest.raises(ConfigError, match="model.unet_weight_name: must be null or a relative path"):
        config_from_dict({"model": {"unet": "org/esd", "unet_weight_name": "unet.txt"}})


def test_config_weight_name_escape_rejected():
    with pytest.raises(ConfigError, match="model.adapter_weight_name"):
        config_from_dict({"model": {"adapter": "org/lora", "adapter_weight_name": "../lora.safetensors"}})


def test_config_accepts_all_parts():
    config = config_from_dict({"model": {
        "id": "org/base", "revision": "v1", "variant": "fp16",
        "unet": "org/esd", "unet_weight_name": "unet/diffusion_pytorch_model.safetensors", "unet_revision": "abc",
        "text_encoder": "org/advunlearn", "text_encoder_weight_name": "te/model.safetensors.index.json",
        "adapter": "org/lora", "adapter_weight_name": "pytorch_lora_weights.safetensors", "allow_pickle": True,
    }})
    assert config.model.check() == []

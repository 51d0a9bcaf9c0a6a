"""Applying the fine-tuning LoRA through forward hooks: same output as peft's layers, exact restore, fallbacks."""

import json

import numpy as np
import pytest
import torch

from spqr_runners.lora_hooks import attach_lora, read_plain_lora

ADAPTER = "bft_check"
TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
RESOLUTION = 32


def _render(pipeline):
    generator = torch.Generator().manual_seed(0)
    return pipeline("a red car", num_inference_steps=2, height=RESOLUTION, width=RESOLUTION, generator=generator,
                    output_type="np").images


def _save_lora(pipeline, folder, rank=4, alpha=8, **options):
    """Save a random LoRA the way fine-tuning does, with its adapter metadata; return the file."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    config = LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=TARGETS, **options)
    pipeline.unet.add_adapter(config, adapter_name=ADAPTER)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, parameter in pipeline.unet.named_parameters():
            if f"lora_B.{ADAPTER}" in name:
                parameter.normal_(std=0.5)  # peft starts B at zero, which would make the update vanish
    state = convert_state_dict_to_diffusers(get_peft_model_state_dict(pipeline.unet, adapter_name=ADAPTER))
    metadata = {**config.to_dict(), "target_modules": sorted(config.target_modules)}
    type(pipeline).save_lora_weights(folder, unet_lora_layers=state, weight_name="lora.safetensors",
                                     safe_serialization=True, unet_lora_adapter_metadata=metadata)
    pipeline.unet.delete_adapters(ADAPTER)
    return folder / "lora.safetensors"


@pytest.fixture(scope="module")
def lora_file(tiny_sd_path, tmp_path_factory):
    from diffusers import DiffusionPipeline

    pipeline = DiffusionPipeline.from_pretrained(tiny_sd_path, safety_checker=None, requires_safety_checker=False)
    return _save_lora(pipeline, tmp_path_factory.mktemp("lora"))


def test_hooks_match_peft_layers(tiny_pipeline, lora_file):
    base = _render(tiny_pipeline)
    tiny_pipeline.load_lora_weights(str(lora_file.parent), weight_name=lora_file.name, adapter_name=ADAPTER)
    tiny_pipeline.unet.eval()
    with_peft = _render(tiny_pipeline)
    tiny_pipeline.unload_lora_weights()

    attached = attach_lora(tiny_pipeline.unet, read_plain_lora(lora_file))
    with_hooks = _render(tiny_pipeline)
    attached.remove()

    assert not np.array_equal(with_peft, base)
    assert np.array_equal(with_hooks, with_peft)
    assert np.array_equal(_render(tiny_pipeline), base)


def test_hooks_leave_weights_untouched(tiny_pipeline, lora_file):
    before = {name: value.clone() for name, value in tiny_pipeline.unet.state_dict().items()}
    attached = attach_lora(tiny_pipeline.unet, read_plain_lora(lora_file))
    during = tiny_pipeline.unet.state_dict()
    attached.remove()
    assert during.keys() == before.keys()
    assert all(torch.equal(during[name], before[name]) for name in before)


def test_read_scaling_alpha_over_rank(lora_file):
    lora = read_plain_lora(lora_file)
    assert lora.scaling == 8 / 4
    assert all(down.shape[0] == 4 and up.shape[1] == 4 for down, up in lora.pairs.values())


@pytest.mark.parametrize("option", [{"use_dora": True}, {"use_rslora": True}, {"rank_pattern": {"to_q": 2}}],
                         ids=["dora", "rslora", "rank-pattern"])
def test_read_other_layout_returns_none(tiny_sd_path, tmp_path, option):
    from diffusers import DiffusionPipeline

    pipeline = DiffusionPipeline.from_pretrained(tiny_sd_path, safety_checker=None, requires_safety_checker=False)
    assert read_plain_lora(_save_lora(pipeline, tmp_path, **option)) is None


def test_read_without_metadata_returns_none(lora_file, tmp_path):
    from safetensors.torch import load_file, save_file

    path = tmp_path / "bare.safetensors"
    save_file(load_file(str(lora_file)), str(path))
    assert read_plain_lora(path) is None


def test_read_text_encoder_keys_returns_none(lora_file, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(lora_file), framework="pt") as handle:
        metadata = handle.metadata()
    state = load_file(str(lora_file))
    state["text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora.down.weight"] = torch.zeros(4, 32)
    path = tmp_path / "mixed.safetensors"
    save_file(state, str(path), metadata=metadata)
    assert read_plain_lora(path) is None


def test_attach_wrong_model_rejected(tiny_pipeline, lora_file):
    lora = read_plain_lora(lora_file)
    name = next(iter(lora.pairs))
    down, up = lora.pairs[name]
    lora.pairs[name] = (torch.zeros(down.shape[0], down.shape[1] + 1), up)
    lora.pairs["down_blocks.9.missing.to_q"] = (down, up)

    with pytest.raises(ValueError, match="does not fit the UNet at 2 module") as raised:
        attach_lora(tiny_pipeline.unet, lora)

    assert "down_blocks.9.missing.to_q (not a linear layer" in str(raised.value)
    assert not any(module._forward_hooks for module in tiny_pipeline.unet.modules())


def test_metadata_alpha_key_read(lora_file):
    from safetensors import safe_open

    with safe_open(str(lora_file), framework="pt") as handle:
        options = json.loads(handle.metadata()["lora_adapter_metadata"])
    assert options["unet.lora_alpha"] == 8

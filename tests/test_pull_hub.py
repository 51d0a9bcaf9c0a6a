"""Pulling models from the mock Hub on 127.0.0.1: each kind of model, revision pins, recorded commits, pickle
policy before download, offline use of the cache, and the errors for unknown repositories and revisions.
"""

import contextlib
import os
import uuid

import pytest
import safetensors.torch
import torch

from spqr_runners.config import ModelConfig
from spqr_runners.pull import ModelNotFoundError, resolve_model
from spqr_runners.weight_files import PickleRejectedError
from test_pull import (
    LORA_MODULE,
    assert_state_equal,
    expected_fused_weight,
    load,
    module_weight,
    perturbed,
    save_lora,
    tiny_text_encoder_state,
    tiny_unet_state,
)


def unique_repo(name):
    """A repository id not used by any other test, because the Hugging Face cache lives for the whole session."""
    return f"user/{name}-{uuid.uuid4().hex[:8]}"


def seed_files(hub, repo_id, files):
    """Commit ``files`` (path to bytes) to a new repository and return the commit sha."""
    hub.create_repo(repo_id)
    return hub.commit_files(repo_id, files)


def safetensors_bytes(state_dict):
    return safetensors.torch.save(state_dict)


@contextlib.contextmanager
def offline():
    """Switch huggingface_hub to offline mode inside the block, as HF_HUB_OFFLINE=1 does."""
    from huggingface_hub import constants

    saved, saved_env = constants.HF_HUB_OFFLINE, os.environ.get("HF_HUB_OFFLINE")
    constants.HF_HUB_OFFLINE = True
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved
        if saved_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved_env


@pytest.fixture
def pipeline_repo(hub, tiny_sd_path):
    repo_id = unique_repo("tiny-sd")
    sha = hub.create_repo_from_folder(repo_id, tiny_sd_path)
    return repo_id, sha


# ------------------------------------------------------------------------------------------- full pipeline


def test_hub_pipeline_records_commit(pipeline_repo, tmp_path):
    repo_id, sha = pipeline_repo
    resolved = resolve_model(ModelConfig(id=repo_id), tmp_path)
    assert resolved.revision == sha
    assert resolved.record()["revision"] == sha
    assert resolved.fingerprint == sha


def test_hub_pipeline_loads_weights(pipeline_repo, tiny_sd_path, tmp_path):
    repo_id, _ = pipeline_repo
    pipeline = load(ModelConfig(id=repo_id), tmp_path)
    assert_state_equal(pipeline.unet, tiny_unet_state(tiny_sd_path))


def test_hub_revision_pin_gives_old_weights(hub, pipeline_repo, tiny_sd_path, tmp_path):
    repo_id, first = pipeline_repo
    changed = perturbed(tiny_unet_state(tiny_sd_path), seed=11)
    second = hub.commit_files(repo_id, {"unet/diffusion_pytorch_model.safetensors": safetensors_bytes(changed)})

    pinned = resolve_model(ModelConfig(id=repo_id, revision=first), tmp_path)
    latest = resolve_model(ModelConfig(id=repo_id), tmp_path)
    assert pinned.revision == first
    assert latest.revision == second
    assert pinned.fingerprint != latest.fingerprint
    assert_state_equal(load(ModelConfig(id=repo_id, revision=first), tmp_path).unet, tiny_unet_state(tiny_sd_path))
    assert_state_equal(load(ModelConfig(id=repo_id), tmp_path).unet, changed)


def test_hub_tag_resolves_to_commit(hub, hub_token, pipeline_repo, tiny_sd_path, tmp_path):
    from huggingface_hub import HfApi

    repo_id, first = pipeline_repo
    HfApi().create_tag(repo_id, tag="v1", revision=first)
    hub.commit_files(repo_id, {"README.md": "changed"})
    resolved = resolve_model(ModelConfig(id=repo_id, revision="v1"), tmp_path)
    assert resolved.revision == first
    assert resolved.record()["requested_revision"] == "v1"


def test_hub_unknown_revision_rejected(pipeline_repo, tmp_path):
    repo_id, _ = pipeline_repo
    with pytest.raises(ModelNotFoundError, match=f"revision 'no-such-branch' not found in the Hub repository "
                                                 f"'{repo_id}'"):
        resolve_model(ModelConfig(id=repo_id, revision="no-such-branch"), tmp_path)


def test_hub_unknown_repo_rejected(hub, tmp_path):
    with pytest.raises(ModelNotFoundError, match="no model repository of that name was found"):
        resolve_model(ModelConfig(id="user/does-not-exist"), tmp_path)


def test_hub_weight_file_repo_as_pipeline_rejected(hub, unet_bytes, tmp_path):
    repo_id = unique_repo("esd")
    seed_files(hub, repo_id, {"esd-unet.safetensors": unet_bytes})
    with pytest.raises(ValueError, match="not a diffusers pipeline"):
        resolve_model(ModelConfig(id=repo_id), tmp_path)


def test_hub_pickle_pipeline_rejected_before_download(hub, tiny_sd_path, tmp_path):
    from diffusers import DiffusionPipeline

    DiffusionPipeline.from_pretrained(tiny_sd_path).save_pretrained(tmp_path / "pickled", safe_serialization=False)
    repo_id = unique_repo("pickled")
    hub.create_repo_from_folder(repo_id, tmp_path / "pickled")
    with pytest.raises(PickleRejectedError, match="unet"):
        resolve_model(ModelConfig(id=repo_id), tmp_path)
    assert not [r for r in hub.requests if r.method == "GET" and r.path.endswith(".bin")]


# ------------------------------------------------------------------------------------------- weight files


@pytest.fixture(scope="module")
def unet_state(tiny_sd_path):
    return perturbed(tiny_unet_state(tiny_sd_path), seed=12)


@pytest.fixture(scope="module")
def unet_bytes(unet_state):
    return safetensors_bytes(unet_state)


def test_hub_unet_file_applied(hub, pipeline_repo, unet_state, unet_bytes, tmp_path):
    base_id, _ = pipeline_repo
    repo_id = unique_repo("esd")
    sha = seed_files(hub, repo_id, {"esd-unet.safetensors": unet_bytes, "README.md": "ESD"})
    config = ModelConfig(id=base_id, unet=repo_id)
    resolved = resolve_model(config, tmp_path)
    assert resolved.unet.revision == sha
    assert resolved.unet.weight_name == "esd-unet.safetensors"
    assert resolved.record()["weights"][0]["revision"] == sha
    pipeline = load(config, tmp_path)
    assert_state_equal(pipeline.unet, unet_state)


def test_hub_unet_revision_pinned(hub, pipeline_repo, tiny_sd_path, unet_bytes, tmp_path):
    base_id, _ = pipeline_repo
    repo_id = unique_repo("esd")
    first = seed_files(hub, repo_id, {"unet.safetensors": unet_bytes})
    hub.commit_files(repo_id, {"unet.safetensors": safetensors_bytes(tiny_unet_state(tiny_sd_path))})
    config = ModelConfig(id=base_id, unet=repo_id, unet_revision=first)
    resolved = resolve_model(config, tmp_path)
    assert resolved.unet.revision == first
    assert_state_equal(load(config, tmp_path).unet, safetensors.torch.load(unet_bytes))


def test_hub_text_encoder_in_subfolder(hub, pipeline_repo, tiny_sd_path, tmp_path):
    base_id, _ = pipeline_repo
    state = perturbed(tiny_text_encoder_state(tiny_sd_path, legacy_prefix=True), seed=13)
    repo_id = unique_repo("advunlearn")
    seed_files(hub, repo_id, {"nudity/model.safetensors": safetensors_bytes(state),
                              "style/model.safetensors": safetensors_bytes(tiny_text_encoder_state(tiny_sd_path))})
    config = ModelConfig(id=base_id, text_encoder=repo_id, text_encoder_weight_name="nudity/model.safetensors")
    pipeline = load(config, tmp_path)
    expected = {key.removeprefix("text_model."): value for key, value in state.items() if "position_ids" not in key}
    assert_state_equal(pipeline.text_encoder, expected)


def test_hub_ambiguous_weight_files_rejected(hub, pipeline_repo, unet_bytes, tmp_path):
    base_id, _ = pipeline_repo
    repo_id = unique_repo("esd")
    seed_files(hub, repo_id, {"a.safetensors": unet_bytes, "b.safetensors": unet_bytes})
    with pytest.raises(ValueError, match="a.safetensors, b.safetensors. Set model.unet_weight_name"):
        resolve_model(ModelConfig(id=base_id, unet=repo_id), tmp_path)


def test_hub_missing_weight_name_lists_files(hub, pipeline_repo, unet_bytes, tmp_path):
    base_id, _ = pipeline_repo
    repo_id = unique_repo("esd")
    seed_files(hub, repo_id, {"esd-unet.safetensors": unet_bytes})
    config = ModelConfig(id=base_id, unet=repo_id, unet_weight_name="unet.safetensors")
    with pytest.raises(ModelNotFoundError, match="Weight files there: esd-unet.safetensors"):
        resolve_model(config, tmp_path)


def test_hub_pickle_rejected_before_download(hub, pipeline_repo, unet_state, tmp_path):
    base_id, _ = pipeline_repo
    repo_id = unique_repo("esd")
    path = tmp_path / "unet.pt"
    torch.save(unet_state, path)
    seed_files(hub, repo_id, {"unet.pt": path.read_bytes()})
    with pytest.raises(PickleRejectedError, match="model.allow_pickle: true"):
        resolve_model(ModelConfig(id=base_id, unet=repo_id), tmp_path)
    assert not [r for r in hub.requests if r.method == "GET" and r.path.endswith("/unet.pt")]


def test_hub_pickle_loaded_with_opt_in(hub, pipeline_repo, unet_state, tmp_path):
    base_id, _ = pipeline_repo
    repo_id = unique_repo("esd")
    path = tmp_path / "unet.pt"
    torch.save(unet_state, path)
    seed_files(hub, repo_id, {"unet.pt": path.read_bytes()})
    pipeline = load(ModelConfig(id=base_id, unet=repo_id, allow_pickle=True), tmp_path)
    assert_state_equal(pipeline.unet, unet_state)
    assert [r for r in hub.requests if r.method == "GET" and r.path.endswith("/unet.pt")]


def test_hub_wrong_component_rejected(hub, pipeline_repo, tiny_sd_path, tmp_path):
    from spqr_runners.weights import StateDictMismatchError

    base_id, _ = pipeline_repo
    repo_id = unique_repo("advunlearn")
    seed_files(hub, repo_id, {"model.safetensors": safetensors_bytes(tiny_text_encoder_state(tiny_sd_path))})
    with pytest.raises(StateDictMismatchError, match="missing keys"):
        load(ModelConfig(id=base_id, unet=repo_id), tmp_path)


# --------------------------------------------------------------------------------------------------- LoRA


def test_hub_lora_repo_fused(hub, pipeline_repo, tiny_sd_path, tmp_path):
    base_id, _ = pipeline_repo
    lora_state = save_lora(tiny_sd_path, tmp_path / "lora", seed=14)
    repo_id = unique_repo("lora")
    sha = hub.create_repo_from_folder(repo_id, tmp_path / "lora")
    config = ModelConfig(id=base_id, adapter=repo_id)
    resolved = resolve_model(config, tmp_path)
    assert resolved.adapter.revision == sha
    base = load(ModelConfig(id=base_id), tmp_path)
    pipeline = load(config, tmp_path)
    expected = expected_fused_weight(module_weight(base.unet, LORA_MODULE), lora_state)
    torch.testing.assert_close(module_weight(pipeline.unet, LORA_MODULE), expected)


# ------------------------------------------------------------------------------------------------ offline


def test_hub_offline_reuses_cache(pipeline_repo, unet_bytes, hub, tmp_path):
    base_id, base_sha = pipeline_repo
    repo_id = unique_repo("esd")
    unet_sha = seed_files(hub, repo_id, {"esd-unet.safetensors": unet_bytes})
    config = ModelConfig(id=base_id, unet=repo_id)
    online = resolve_model(config, tmp_path)
    hub.clear_requests()
    with offline():
        cached = resolve_model(config, tmp_path)
        load(config, tmp_path)
    assert cached.fingerprint == online.fingerprint
    assert cached.revision == base_sha
    assert cached.unet.revision == unet_sha
    assert hub.requests == []


def test_offline_not_cached_names_fix(tmp_path):
    with pytest.raises(ModelNotFoundError) as caught:
        resolve_model(ModelConfig(id="user/never-downloaded", revision="v2"), tmp_path)
    message = str(caught.value)
    assert "'user/never-downloaded' at revision v2 is not in the Hugging Face cache" in message
    assert "HF_HUB_OFFLINE=1 is set" in message
    assert "`hf download user/never-downloaded --revision v2`" in message


def test_offline_weight_file_not_cached_names_file(pipeline_repo, hub, tmp_path):
    base_id, _ = pipeline_repo
    resolve_model(ModelConfig(id=base_id), tmp_path)
    with offline():
        with pytest.raises(ModelNotFoundError, match="'unet.safetensors' of 'user/never-esd'"):
            resolve_model(ModelConfig(id=base_id, unet="user/never-esd", unet_revision="0" * 40,
                                      unet_weight_name="unet.safetensors"), tmp_path)

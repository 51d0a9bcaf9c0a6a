"""Run configuration: defaults, validation messages, and the shipped example configurations."""

from importlib import resources

import pytest
import yaml

from spqr_runners.config import ConfigError, RunConfig, config_from_dict, load_config


def _problems(data):
    with pytest.raises(ConfigError) as caught:
        config_from_dict(data)
    return caught.value.problems


def test_defaults_follow_protocol():
    config = RunConfig()
    assert config.generation.steps == 50
    assert config.generation.guidance == 7.5
    assert config.generation.resolution == 512
    assert config.finetune.rank == 8
    assert config.finetune.alpha == 16
    assert config.finetune.learning_rate == 1e-4
    assert config.finetune.batch_size == 16
    assert config.finetune.target_modules is None  # the profile's default for the backbone
    assert config.adherence.ceiling == 0.30
    assert config.judges.undetermined == "safe"


def test_unknown_key_named_with_suggestion():
    problems = _problems({"generation": {"step": 4}})
    assert len(problems) == 1
    assert problems[0].startswith("generation.step: unknown key")
    assert "did you mean 'steps'" in problems[0]


def test_unknown_top_level_key():
    problems = _problems({"modle": {"id": "x"}})
    assert problems[0].startswith("modle: unknown key")
    assert "'model'" in problems[0]


def test_wrong_types_reported_together():
    problems = _problems({"generation": {"steps": "many", "guidance": "high"}, "smoke": "yes"})
    assert any(p.startswith("generation.steps: expected an integer") for p in problems)
    assert any(p.startswith("generation.guidance: expected a number") for p in problems)
    assert any(p.startswith("smoke: expected true or false") for p in problems)
    assert len(problems) == 3


def test_value_ranges_checked():
    problems = _problems({"generation": {"resolution": 100}, "adherence": {"ceiling": 0}})
    assert any(p.startswith("generation.resolution: must be a multiple of 8") and "100" in p for p in problems)
    assert any(p.startswith("adherence.ceiling: must be in (0, 1]") for p in problems)


def test_invalid_weights_and_bounds():
    problems = _problems({"scoring": {"weights": [1, 1, 0, 1]}, "quality": {"fid_bounds": [10, 5]}})
    assert any(p.startswith("scoring.weights") for p in problems)
    assert any(p.startswith("quality.fid_bounds") for p in problems)


def test_bool_is_not_an_integer():
    problems = _problems({"generation": {"steps": True}})
    assert problems[0].startswith("generation.steps: expected an integer")


def test_section_must_be_mapping():
    problems = _problems({"generation": [1, 2]})
    assert problems[0].startswith("generation: expected a mapping")


def test_error_message_lists_every_problem():
    with pytest.raises(ConfigError) as caught:
        config_from_dict({"generation": {"steps": 0, "batch_size": 0}}, "run.yaml")
    message = str(caught.value)
    assert "run.yaml" in message
    assert "generation.steps" in message
    assert "generation.batch_size" in message


def test_load_config_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_config(tmp_path / "absent.yaml")


def test_load_config_invalid_yaml(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_demo_config_is_valid():
    text = resources.files("spqr_runners.configs").joinpath("demo.yaml").read_text()
    config = config_from_dict(yaml.safe_load(text))
    assert config.smoke is True
    assert config.model.id == "embedded:tiny-sd"


def test_partial_prompt_set_keeps_role_defaults():
    config = config_from_dict({"prompts": {"bft": {"limit": 2}, "benign": {"limit": 3}}})
    assert (config.prompts.bft.config, config.prompts.bft.split, config.prompts.bft.limit) == ("bft", "general_en", 2)
    assert (config.prompts.benign.config, config.prompts.benign.split) == ("benign", "coco")
    assert (config.prompts.harmful.config, config.prompts.harmful.split) == ("harmful", "visu")


def test_model_cross_field_checks_run_at_validation():
    problems = _problems({"model": {"id": "org/base", "unet_revision": "abc"}})
    assert any(p.startswith("model.unet_revision") for p in problems)


def test_relative_weight_paths_follow_config_file(tmp_path):
    from spqr_runners.config import resolve_relative_paths

    (tmp_path / "unet.safetensors").write_bytes(b"")
    config = config_from_dict({"model": {"id": "org/base", "unet": "unet.safetensors"}})
    resolve_relative_paths(config, tmp_path)
    assert config.model.unet == str(tmp_path / "unet.safetensors")


def test_sweep_file_as_run_config_hint():
    with pytest.raises(ConfigError, match="this is a sweep file") as raised:
        config_from_dict({"base": "demo.yaml", "runs": [{"name": "a"}]}, "sweep.yaml")
    assert "spqr sweep --config FILE" in str(raised.value)

"""Scenarios, prompt selection and sweeps: configuration level, plus each scenario end to end on the tiny model."""

import json
import warnings

import pytest
import yaml

from spqr_runners.config import ConfigError, config_from_dict
from spqr_runners.prompts import load_prompt_sets
from spqr_runners.protocol import ProtocolRun
from spqr_runners.scenarios import SCENARIOS, scenario_prompt_sets
from spqr_runners.sweep import load_sweep


@pytest.mark.parametrize(
    "scenario, bft_split",
    [("general", "general_en"), ("multilingual:ar", "multilingual_ar"), ("multilingual:hi", "multilingual_hi"),
     ("domain:art", "domain_art"), ("domain:medical", "domain_medical"), ("ood", "general_en")],
)
def test_scenario_chooses_bft_split(scenario, bft_split):
    config = config_from_dict({"scenario": scenario})
    assert config.prompts.bft.config == "bft"
    assert config.prompts.bft.split == bft_split


def test_ood_scenario_evaluates_ood_prompts():
    config = config_from_dict({"scenario": "ood"})
    assert config.prompts.harmful.config == "ood"
    assert config.prompts.harmful.split == "jailbreak+paraphrase"


def test_scenario_keeps_other_prompt_settings():
    config = config_from_dict({"scenario": "domain:art", "prompts": {"bft": {"limit": 5}}})
    assert config.prompts.bft.split == "domain_art"
    assert config.prompts.bft.limit == 5


def test_unknown_scenario_rejected():
    with pytest.raises(ConfigError, match="scenario: must be one of"):
        config_from_dict({"scenario": "multilingual:de"})


def test_scenario_conflicting_with_explicit_split():
    with pytest.raises(ConfigError, match="prompts.bft: scenario 'domain:art' already chooses bft/domain_art"):
        config_from_dict({"scenario": "domain:art", "prompts": {"bft": {"split": "general_en"}}})


def test_every_scenario_split_exists():
    from spqr_dataset import CONFIG_SPLITS

    for scenario in SCENARIOS:
        for prompt_set in scenario_prompt_sets(scenario).values():
            for split in prompt_set["split"].split("+"):
                assert split in CONFIG_SPLITS[prompt_set["config"]], (scenario, split)


def test_joined_splits_concatenate():
    config = config_from_dict({"scenario": "ood"})
    sets = load_prompt_sets(config.prompts)
    ids = [row["id"] for row in sets["harmful"]]
    assert any(i.startswith("ood/jailbreak/") for i in ids)
    assert any(i.startswith("ood/paraphrase/") for i in ids)


def test_category_sampling_recorded():
    config = config_from_dict({"prompts": {"harmful": {"categories": ["sexual", "nudity"], "sample": 10}}})
    sets = load_prompt_sets(config.prompts)
    selection = sets["sources"]["harmful"]["selection"]
    assert len(sets["harmful"]) == 10
    assert {row["category"] for row in sets["harmful"]} <= {"sexual", "nudity"}
    assert selection["n_selected"] == 10
    assert selection["seed"] == 42
    assert selection["categories"] == ["sexual", "nudity"]


def test_category_sampling_reproducible():
    data = {"prompts": {"harmful": {"categories": ["sexual", "nudity"], "sample": 10, "sample_seed": 7}}}
    first = load_prompt_sets(config_from_dict(data).prompts)["harmful"]
    second = load_prompt_sets(config_from_dict(data).prompts)["harmful"]
    assert [row["id"] for row in first] == [row["id"] for row in second]


def test_sample_larger_than_available_warns():
    config = config_from_dict({"prompts": {"harmful": {"categories": ["sexual", "nudity"], "sample": 500}}})
    with pytest.warns(UserWarning, match="fewer than the 500 requested"):
        sets = load_prompt_sets(config.prompts)
    assert sets["sources"]["harmful"]["selection"]["n_selected"] < 500


def test_shipped_sweep_file_is_valid():
    configs = load_sweep("configs/sweep_multilingual.yaml")
    assert [config.scenario for config in configs] == [f"multilingual:{code}" for code in ("ar", "es", "fr", "hi")]
    assert all(config.model.id == "stable-diffusion-v1-5/stable-diffusion-v1-5" for config in configs)
    assert configs[0].prompts.harmful.sample == 500


def test_sweep_reports_problems_per_run(tmp_path):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({"name": "base"}))
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(
        {"base": "base.yaml", "runs": [{"name": "a"}, {"name": "b", "generation": {"stepz": 3}}, {"name": "a"}]}
    ))
    with pytest.raises(ConfigError) as caught:
        load_sweep(tmp_path / "sweep.yaml")
    problems = caught.value.problems
    assert any(p.startswith("runs[1] (b): generation.stepz: unknown key") for p in problems)
    assert any(p.startswith("runs[2] (a): name 'a' is used by an earlier run") for p in problems)


def test_paper_config_is_valid():
    from spqr_runners.config import load_config

    config = load_config("configs/paper_sd15.yaml")
    assert config.judges.names == ["nudenet", "llavaguard"]
    assert config.prompts.harmful.categories == ["sexual", "nudity"]
    assert config.prompts.harmful.sample == 500


TINY_RUN = {
    "smoke": True,
    "model": {"id": "embedded:tiny-sd"},
    "prompts": {"harmful": {"limit": 3}, "benign": {"limit": 2}, "bft": {"limit": 2}},
    "generation": {"steps": 1, "resolution": 64, "batch_size": 4},
    "finetune": {"batch_size": 2, "epochs": 1, "curriculum": None},
    "judges": {"names": ["nudenet"]},
    "adherence": {"model": "embedded:tiny-clip"},
    "quality": {"feature_extractor": "embedded:tiny-features", "reference": "embedded:synthetic",
                "reference_count": 4},
    "scoring": {"bootstrap": 0},
}


@pytest.mark.slow
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_scenario_end_to_end(scenario, tmp_path_factory):
    cache = tmp_path_factory.getbasetemp() / "scenario-cache"
    output = tmp_path_factory.mktemp("scenario")
    config = config_from_dict({**TINY_RUN, "name": scenario.replace(":", "-"), "scenario": scenario,
                               "output_dir": str(output), "cache_dir": str(cache)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        results = ProtocolRun(config).run()
    saved = json.loads((output / "results.json").read_text())
    expected = scenario_prompt_sets(scenario)
    assert saved["scenario"] == scenario
    assert saved["prompts"]["bft"]["split"] == expected["bft"]["split"]
    assert saved["counts"]["n_harmful"] == 3
    assert results["scores"]["S"] is not None
    if scenario == "ood":
        assert saved["prompts"]["harmful"]["config"] == "ood"

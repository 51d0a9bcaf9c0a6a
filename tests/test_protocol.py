"""The protocol end to end on the tiny pipeline: results, model card, resumption, and the CLI around it."""

import json

import pytest
import yaml

from spqr_runners.cli import main
from spqr_runners.config import config_from_dict
from spqr_runners.protocol import ProtocolRun

SMALL_RUN = {
    "name": "small",
    "smoke": True,
    "model": {"id": "embedded:tiny-sd"},
    "prompts": {
        "harmful": {"config": "harmful", "split": "visu", "limit": 6},
        "benign": {"config": "benign", "split": "coco", "limit": 4},
        "bft": {"config": "bft", "split": "general_en", "limit": 4},
    },
    "generation": {"steps": 2, "resolution": 64, "batch_size": 4},
    "finetune": {"batch_size": 2, "epochs": 1, "curriculum": None},
    "judges": {"names": ["nudenet"]},
    "adherence": {"model": "embedded:tiny-clip"},
    "quality": {"feature_extractor": "embedded:tiny-features", "reference": "embedded:synthetic",
                "reference_count": 8},
    "scoring": {"bootstrap": 50},
}


def _config(tmp_path, **overrides):
    data = json.loads(json.dumps(SMALL_RUN))
    for dotted, value in overrides.items():
        section, key = dotted.split(".")
        data[section][key] = value
    data["output_dir"] = str(tmp_path / "run")
    data["cache_dir"] = str(tmp_path / "cache")
    return config_from_dict(data)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("protocol")
    config = _config(tmp_path)
    with pytest.warns(UserWarning, match="cohort of one"):
        results = ProtocolRun(config).run()
    return tmp_path, config, results


def test_results_file_has_scores_and_provenance(finished_run):
    tmp_path, _, results = finished_run
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["scores"] == results["scores"]
    assert saved["protocol"] == "spqr-1"
    assert set(saved["scores"]) == {"S", "P", "Q", "R", "SPQR"}
    assert saved["counts"]["n_harmful"] == 6
    assert saved["counts"]["n_benign"] == 4
    assert saved["smoke"] is True
    assert saved["model"]["fingerprint"]
    assert saved["versions"]["diffusers"]
    assert saved["judges"]["settings"][0]["judge"] == "nudenet"
    assert saved["finetune"]["steps_run"] == 2
    assert saved["prompts"]["harmful"]["dataset_version"]["version"]


def test_results_record_per_stage_timing(finished_run):
    _, _, results = finished_run
    for stage in ("generate_before", "judge_before", "finetune", "generate_after", "judge_after"):
        assert results["timing_seconds"][stage] > 0


def test_single_model_cohort_gives_half_quality(finished_run):
    _, _, results = finished_run
    assert results["scores"]["Q"] == 0.5
    assert results["flags"]["q_from_single_model_cohort"]


def test_model_card_holds_model_index(finished_run):
    from spqr_runners.result_files import derive_scenario

    tmp_path, _, results = finished_run
    from huggingface_hub import ModelCard

    text = (tmp_path / "run" / "README.md").read_text()
    metadata = yaml.safe_load(text.split("---")[1])
    card = ModelCard(text, ignore_metadata_errors=False)
    assert {result.metric_type for result in card.data.eval_results} == {"safety", "prompt_adherence", "quality",
                                                                         "robustness", "spqr"}
    blocks = metadata["model-index"][0]["results"]
    by_type = {metric["type"]: metric for block in blocks for metric in block["metrics"]}
    # The same metric types and scenario as `spqr push` writes, so a later push merges with this card.
    assert by_type["safety"]["value"] == round(results["scores"]["S"], 4)
    assert by_type["robustness"]["value"] == round(results["scores"]["R"], 4)
    assert by_type["robustness"]["config"] == derive_scenario(results)
    assert "Smoke values" in text


def test_adapter_is_saved_in_diffusers_format(finished_run):
    tmp_path, _, _ = finished_run
    assert (tmp_path / "run" / "finetune" / "pytorch_lora_weights.safetensors").is_file()


def test_rerun_reuses_every_stage(finished_run):
    tmp_path, config, results = finished_run
    with pytest.warns(UserWarning, match="cohort of one"):
        again = ProtocolRun(config).run()
    assert again["scores"] == results["scores"]
    assert again["intervals"] == results["intervals"]
    assert "generate_before" in again["reused_stages"]
    assert "finetune" in again["reused_stages"]
    assert "load_pipeline" not in again["timing_seconds"]


def test_rerun_command_skips_heavy_imports(finished_run):
    # A finished run is only read back, so the command must not pay for importing the model libraries.
    import subprocess
    import sys

    tmp_path, config, results = finished_run
    config_path = tmp_path / "rerun.yaml"
    config_path.write_text(yaml.safe_dump(config.to_dict()), encoding="utf-8")
    script = (
        "import sys\n"
        "from spqr_runners.cli import main\n"
        f"code = main(['-q', 'run', '--config', {str(config_path)!r}])\n"
        "heavy = sorted({'torch', 'diffusers', 'transformers', 'datasets', 'onnxruntime'} & set(sys.modules))\n"
        "print('HEAVY', ','.join(heavy), 'CODE', code)\n"
    )
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    saved = json.loads((tmp_path / "run" / "results.json").read_text())

    assert completed.returncode == 0, completed.stderr
    assert "HEAVY  CODE 0" in completed.stdout, completed.stdout[-2000:]
    assert saved["scores"] == results["scores"]
    assert saved["generation"]["device"] == "cpu"


def test_changed_seed_reruns_generation_only(finished_run):
    tmp_path, _, _ = finished_run
    config = _config(tmp_path, **{"generation.seed": 1})
    with pytest.warns(UserWarning, match="cohort of one"):
        results = ProtocolRun(config).run()
    assert "prompts" in results["reused_stages"]
    assert "generate_before" not in results["reused_stages"]


def test_inception_without_torch_fidelity_rejected_first(tmp_path, monkeypatch):
    import importlib.util

    from spqr_runners.config import ConfigError

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "torch_fidelity" else real_find_spec(name, *args))
    config = _config(tmp_path, **{"quality.feature_extractor": "inception"})

    with pytest.raises(ConfigError, match="needs the packages torch_fidelity") as raised:
        ProtocolRun(config).run()

    assert "pip install torch-fidelity torchvision==" in str(raised.value)
    assert not (tmp_path / "run" / "stages").exists()  # rejected before any stage ran


def test_bft_prompt_shared_with_harmful_rejected(tmp_path):
    harmful = tmp_path / "harmful.jsonl"
    row = {"id": "h1", "prompt": "a shared prompt", "language": "en", "category": "nudity",
           "source": "test", "role": "harmful", "license": "CC0-1.0"}
    harmful.write_text(json.dumps(row) + "\n")
    bft = tmp_path / "bft.jsonl"
    bft.write_text(json.dumps({**row, "id": "b1", "role": "bft", "category": "general"}) + "\n")
    config = _config(tmp_path)
    config.prompts.harmful.file = str(harmful)
    config.prompts.bft.file = str(bft)
    with pytest.raises(ValueError, match="must share no prompt"):
        ProtocolRun(config).run()


def test_cli_check_accepts_valid_config(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(SMALL_RUN))
    assert main(["run", "--config", str(path), "--check"]) == 0
    assert "valid" in capsys.readouterr().out


def test_cli_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    listing = capsys.readouterr().out
    assert exited.value.code == 0
    for command in ("demo", "run", "sweep", "prompts", "push", "leaderboard", "metric"):
        assert f"    {command} " in listing, command


@pytest.mark.parametrize("command", ["prompts", "push", "leaderboard", "metric"])
def test_cli_other_module_command_defined(command, capsys):
    # Chosen commands get their real parser, with arguments, not the stub that only lists them.
    with pytest.raises(SystemExit) as exited:
        main(["-q", command, "--help"])
    assert exited.value.code == 0
    assert len(capsys.readouterr().out.splitlines()) > 4


def test_cli_names_invalid_field(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({**SMALL_RUN, "generation": {"steps": 0, "colour": "red"}}))
    assert main(["run", "--config", str(path)]) == 2
    error = capsys.readouterr().err
    assert "generation.colour: unknown key" in error
    assert "spqr: error: Invalid run configuration" in error


@pytest.mark.slow
def test_demo_command_end_to_end(tmp_path, capsys):
    code = main(["-q", "demo", "--output-dir", str(tmp_path / "demo"), "--cache-dir", str(tmp_path / "cache")])
    output = capsys.readouterr().out
    assert code == 0
    assert "SPQR (harmonic mean)" in output
    results = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert results["counts"]["n_harmful"] == 40
    assert results["smoke"] is True
    assert (tmp_path / "demo" / "README.md").is_file()


def test_cli_missing_judge_weights_is_clear(tmp_path, capsys):
    # The default ensemble includes LlavaGuard, whose weights are not available offline.
    data = {key: value for key, value in SMALL_RUN.items() if key != "judges"}
    data["prompts"] = {"harmful": {"limit": 1}, "benign": {"limit": 1}, "bft": {"limit": 1}}
    data["generation"] = {"steps": 1, "resolution": 64}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(data))
    code = main(["-q", "run", "--config", str(path), "--output-dir", str(tmp_path / "out"),
                 "--cache-dir", str(tmp_path / "cache")])
    error = capsys.readouterr().err
    assert code == 2
    assert "llavaguard" in error
    assert "AIML-TUDA/LlavaGuard-v1.2-0.5B-OV-hf" in error

"""Invalid run configurations, sweep files and run-folder files: each is rejected by name before any work starts.

Tested elsewhere:

- unknown keys with a suggestion, wrong types, ranges, invalid YAML and a missing file (test_config.py);
- unknown dataset configs and splits, and folders without the schema's columns, in load_prompts
  (test_dataset_api.py);
- weight names that leave their folder (test_pull.py, test_config_weight_name_escape_rejected);
- file names derived from prompt ids and run names (test_security.py).

The checks added here run in ``load_config``, so ``spqr run --check`` reports them without loading a model:

- unknown dataset configs and splits of a prompt set, with a suggestion;
- unknown, repeated or misconfigured judges, with a suggestion;
- a run name that would put the output folder outside ``runs/``;
- a key repeated in one YAML mapping, which PyYAML would otherwise resolve silently to the last value.
"""

import json
import textwrap

import pytest

from spqr_runners.cli import main
from spqr_runners.config import ConfigError, config_from_dict, load_config, parse_yaml
from spqr_runners.stages import StageStore
from spqr_runners.sweep import load_sweep


def _problems(data):
    with pytest.raises(ConfigError) as raised:
        config_from_dict(data)
    return raised.value.problems


# ---------------------------------------------------------------- prompt sets


def test_unknown_dataset_config_named():
    (problem,) = _problems({"prompts": {"harmful": {"config": "harmfull"}}})
    assert problem.startswith("prompts.harmful.config: unknown dataset config 'harmfull' (did you mean 'harmful'?)")


def test_unknown_split_named():
    (problem,) = _problems({"prompts": {"bft": {"split": "multilingual_de"}}})
    assert "prompts.bft.split: unknown split 'multilingual_de' of config 'bft'" in problem
    assert "general_en" in problem


def test_unknown_joined_split_named():
    (problem,) = _problems({"prompts": {"harmful": {"config": "ood", "split": "jailbreak+paraphrse"}}})
    assert "unknown split 'paraphrse' of config 'ood' (did you mean 'paraphrase'?)" in problem


def test_split_not_checked_for_prompt_file(tmp_path):
    config = config_from_dict({"prompts": {"harmful": {"config": "any", "split": "any", "file": "prompts.jsonl"}}})
    assert config.prompts.harmful.file == "prompts.jsonl"


def test_every_prompt_set_reported_together():
    problems = _problems({"prompts": {"harmful": {"split": "x"}, "benign": {"split": "y"}, "bft": {"split": "z"}}})
    assert [problem.split(":")[0] for problem in problems] == ["prompts.harmful.split", "prompts.benign.split",
                                                             "prompts.bft.split"]


# ---------------------------------------------------------------- judges


def test_unknown_judge_suggested():
    (problem,) = _problems({"judges": {"names": ["nudenett"]}})
    assert problem.startswith("judges.names[0]: unknown judge 'nudenett' (did you mean 'nudenet'?)")
    assert "llavaguard, nudenet, q16" in problem


def test_repeated_judge_rejected():
    (problem,) = _problems({"judges": {"names": ["nudenet", "nudenet"]}})
    assert problem == "judges.names: lists ['nudenet'] more than once; give each judge once"


def test_judge_setting_misspelt():
    (problem,) = _problems({"judges": {"names": ["nudenet"], "settings": {"nudenet": {"treshold": 0.7}}}})
    assert problem.startswith("judges.settings.nudenet: Unknown settings ['treshold']")
    assert "Did you mean 'threshold'?" in problem


def test_judge_setting_invalid_value():
    (problem,) = _problems({"judges": {"names": ["nudenet"], "settings": {"nudenet": {"threshold": 1.5}}}})
    assert problem.startswith("judges.settings.nudenet: threshold must be a number in [0, 1], got 1.5")


def test_judge_settings_for_absent_judge():
    (problem,) = _problems({"judges": {"names": ["nudenet"], "settings": {"q16": {}}}})
    assert problem.startswith("judges.settings.q16: judge 'q16' is not in judges.names")


def test_judge_settings_not_mapping():
    (problem,) = _problems({"judges": {"names": ["nudenet"], "settings": {"nudenet": [0.7]}}})
    assert problem.startswith("judges.settings.nudenet: expected a mapping")


def test_valid_judge_settings_accepted():
    config = config_from_dict({"judges": {"names": ["nudenet"], "settings": {"nudenet": {"threshold": 0.7}}}})
    assert config.judges.settings == {"nudenet": {"threshold": 0.7}}


# ---------------------------------------------------------------- run name and folders


@pytest.mark.parametrize("name", ["../../etc", "..", "runs/../../x", "/etc/spqr", "~/spqr", "a\\..\\..\\b", "", " "])
def test_run_name_escaping_runs_folder_rejected(name):
    (problem,) = _problems({"name": name})
    assert problem.startswith("name: must be a non-empty relative name without '..' parts")


@pytest.mark.parametrize("name", ["my-erased-sd15", "org/model", "sd1.5_esd"])
def test_run_name_accepted(name):
    assert config_from_dict({"name": name}).name == name


def test_output_dir_outside_allowed():
    """An output folder the user names is used as given, wherever it points."""
    assert config_from_dict({"output_dir": "../../elsewhere"}).output_dir == "../../elsewhere"


# ---------------------------------------------------------------- YAML


def test_repeated_yaml_key_rejected(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("generation:\n  steps: 1\n  steps: 50\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="found the key 'steps' a second time \\(first on line 2\\)"):
        load_config(path)


def test_repeated_top_level_yaml_key_rejected():
    with pytest.raises(ConfigError, match="found the key 'judges' a second time"):
        parse_yaml("judges: {names: [nudenet]}\nname: x\njudges: {names: [q16]}\n", "run.yaml")


def test_yaml_merge_key_may_override():
    data = parse_yaml("base: &base {steps: 1, guidance: 7.5}\ngeneration:\n  <<: *base\n  steps: 2\n", "run.yaml")
    assert data["generation"] == {"steps": 2, "guidance": 7.5}


def test_yaml_python_tag_rejected():
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse_yaml("name: !!python/object/apply:os.system ['true']\n", "run.yaml")


def test_cli_check_reports_config_problems(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text(textwrap.dedent("""\
        name: ../escape
        judges: {names: [nudenett]}
        prompts: {harmful: {split: vsiu}}
    """), encoding="utf-8")

    code = main(["run", "--config", str(path), "--check"])

    error = capsys.readouterr().err
    assert code == 2
    assert "name: must be a non-empty relative name" in error
    assert "judges.names[0]: unknown judge 'nudenett'" in error
    assert "prompts.harmful.split: unknown split 'vsiu' of config 'harmful' (did you mean 'visu'?)" in error


# ---------------------------------------------------------------- sweep files


def _sweep(tmp_path, text):
    (tmp_path / "base.yaml").write_text("judges: {names: [nudenet]}\n", encoding="utf-8")
    path = tmp_path / "sweep.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_sweep_unknown_key_named(tmp_path):
    path = _sweep(tmp_path, "base: base.yaml\nrun: [{name: a}]\n")
    with pytest.raises(ConfigError) as raised:
        load_sweep(path)
    assert raised.value.problems == ["run: unknown key; a sweep file has only the keys 'base' (a config file) and "
                                     "'runs' (a list)"]


def test_sweep_invalid_yaml_is_config_error(tmp_path):
    path = _sweep(tmp_path, "base: base.yaml\nruns: [{name: a}\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_sweep(path)


def test_sweep_repeated_key_rejected(tmp_path):
    path = _sweep(tmp_path, "base: base.yaml\nruns:\n- name: a\n  name: b\n")
    with pytest.raises(ConfigError, match="found the key 'name' a second time"):
        load_sweep(path)


def test_sweep_cli_invalid_yaml_exit_code(tmp_path, capsys):
    path = _sweep(tmp_path, "runs: [\n")
    assert main(["sweep", "--config", str(path), "--list"]) == 2
    assert "not valid YAML" in capsys.readouterr().err


# ---------------------------------------------------------------- stage records


@pytest.mark.parametrize("content", ["[]", '"text"', '{"key": "k"}', '{"key": "k", "data": [1]}', "{", "\xff"])
def test_stage_record_of_wrong_shape_reruns_stage(tmp_path, content):
    store = StageStore(tmp_path)
    store.folder.mkdir()
    store.path("prompts").write_bytes(content.encode("latin-1"))
    assert store.load("prompts", "k") is None


def test_stage_record_round_trip(tmp_path):
    store = StageStore(tmp_path)
    store.save("prompts", "k", {"harmful": [1]}, 0.5)
    assert store.load("prompts", "k") == {"harmful": [1]}
    assert json.loads(store.path("prompts").read_text())["key"] == "k"

"""Tests of `spqr push` (runners/push.py) against the mock Hub on 127.0.0.1."""

import argparse
import logging
import textwrap

import pytest
import yaml

from fake_results import make_results, write_results

REPO = "user/esd"
EVAL_PATH = ".eval_results/spqr.yaml"

OTHER_BENCHMARK_CARD = textwrap.dedent(
    """\
    ---
    license: mit
    library_name: diffusers
    model-index:
    - name: esd
      results:
      - task:
          type: text-to-image
          name: Text-to-image
        dataset:
          name: COCO 2017 captions
          type: other/coco-captions
          split: validation
        metrics:
        - type: clip_score
          value: 31.2
          name: CLIP score
        source:
          url: https://example.org/other-benchmark
          name: Other benchmark
    ---
    # ESD

    Hand-written description that must survive.
    """
)


def _card(hub, revision="main"):
    from huggingface_hub import ModelCard

    return ModelCard(hub.read_file(REPO, "README.md", revision=revision).decode(), ignore_metadata_errors=False)


def _metrics(card) -> dict:
    """Return {(metric type, metric config): value} of the card's SPQR metrics."""
    return {
        (result.metric_type, result.metric_config): result.metric_value
        for result in card.data.eval_results
        if result.dataset_type == "user/spqr-prompts"
    }


def _entries(hub, revision="main") -> list:
    return yaml.safe_load(hub.read_file(REPO, EVAL_PATH, revision=revision))


def _push(results, **kwargs):
    from spqr_runners.push import push_results

    return push_results(results, REPO, **kwargs)


def _run_cli(argv) -> int:
    from spqr_runners.push import register

    parser = argparse.ArgumentParser(prog="spqr")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.handler(args)


def test_push_first_writes_model_index(hub, hub_token):
    hub.create_repo(REPO)
    results = make_results()

    outcome = _push(results)

    metrics = _metrics(_card(hub))
    assert metrics == {
        ("safety", None): round(results["scores"]["S"], 4),
        ("prompt_adherence", None): round(results["scores"]["P"], 4),
        ("quality", None): round(results["scores"]["Q"], 4),
        ("robustness", "general"): round(results["scores"]["R"], 4),
        ("spqr", "general"): round(results["scores"]["SPQR"], 4),
    }
    assert outcome.commit_url is not None


def test_push_first_records_dataset_and_args(hub, hub_token):
    hub.create_repo(REPO)
    results = make_results()

    _push(results, dataset_revision="abc123")

    by_type = {result.metric_type: result for result in _card(hub).data.eval_results}
    safety, robustness = by_type["safety"], by_type["robustness"]
    assert (safety.dataset_config, safety.dataset_split, safety.dataset_revision) == ("harmful", "visu", "abc123")
    assert (by_type["quality"].dataset_config, by_type["quality"].dataset_split) == ("benign", "coco")
    assert safety.task_type == "text-to-image"
    assert safety.metric_args["interval"] == [round(value, 4) for value in results["intervals"]["S"]]
    assert robustness.metric_args["delta_h"] == round(results["raw"]["delta_h"], 4)
    assert by_type["quality"].metric_args["fid"] == results["raw"]["fid"]
    assert safety.source_url.endswith("/datasets/user/spqr-prompts")


def test_push_first_writes_eval_results(hub, hub_token):
    hub.create_repo(REPO)
    results = make_results()

    _push(results)

    entries = _entries(hub)
    assert [(e["dataset"]["task_id"], e.get("notes")) for e in entries] == [
        ("safety", None),
        ("prompt_adherence", None),
        ("quality", None),
        ("robustness", "scenario: general"),
        ("spqr", "scenario: general"),
    ]
    assert {e["dataset"]["id"] for e in entries} == {"user/spqr-prompts"}
    assert entries[4]["value"] == round(results["scores"]["SPQR"], 4)


def test_eval_tasks_match_dataset_eval_yaml():
    from spqr_runners.eval_entries import AXES, read_eval_tasks

    tasks = read_eval_tasks()

    assert {axis.task_id for axis in AXES} <= set(tasks)


def test_push_second_scenario_merges(hub, hub_token):
    hub.create_repo(REPO)
    general = make_results(flagged_after=3)
    arabic = make_results(bft_split="multilingual_ar", flagged_after=6)

    _push(general)
    outcome = _push(arabic)

    metrics = _metrics(_card(hub))
    assert metrics[("robustness", "general")] == round(general["scores"]["R"], 4)
    assert metrics[("robustness", "multilingual:ar")] == round(arabic["scores"]["R"], 4)
    assert len(metrics) == 7
    assert [e.get("notes") for e in _entries(hub)].count("scenario: multilingual:ar") == 2
    assert {c.action for c in outcome.plan.changes if c.metric.startswith("safety")} == {"unchanged"}


def test_push_second_scenario_keeps_both_sections(hub, hub_token):
    hub.create_repo(REPO)
    _push(make_results())
    _push(make_results(bft_split="domain_art"))

    text = _card(hub).text

    assert text.count('<!-- spqr-results scenario="general" -->') == 1
    assert text.count('<!-- spqr-results scenario="domain:art" -->') == 1
    assert "## SPQR evaluation (scenario `domain:art`)" in text


def test_push_conflicting_value_rejected(hub, hub_token):
    from spqr_runners.push import MetricConflictError

    hub.create_repo(REPO)
    _push(make_results(flagged_before=2))
    head = hub.resolve_revision(REPO)

    with pytest.raises(MetricConflictError, match="--overwrite") as raised:
        _push(make_results(flagged_before=4))

    assert {c.metric.split(" ")[0] for c in raised.value.conflicts} >= {"safety", "robustness"}
    assert hub.resolve_revision(REPO) == head


def test_push_overwrite_replaces_value(hub, hub_token):
    hub.create_repo(REPO)
    _push(make_results(flagged_before=2))
    changed = make_results(flagged_before=4)

    _push(changed, overwrite=True)

    metrics = _metrics(_card(hub))
    assert metrics[("safety", None)] == round(changed["scores"]["S"], 4)
    assert len(metrics) == 5
    assert len(_entries(hub)) == 5


def test_push_create_pr_keeps_main(hub, hub_token):
    hub.create_repo(REPO)
    main_files = hub.list_files(REPO)

    outcome = _push(make_results(), create_pr=True)

    assert outcome.pr_url is not None
    assert hub.list_files(REPO) == main_files
    assert _metrics(_card(hub, revision="refs/pr/1"))[("spqr", "general")] is not None
    assert len(_entries(hub, revision="refs/pr/1")) == 5


def test_push_keeps_unrelated_model_index(hub, hub_token):
    from huggingface_hub import ModelCard

    hub.create_repo(REPO)
    hub.commit_files(REPO, {"README.md": OTHER_BENCHMARK_CARD})
    original = ModelCard(OTHER_BENCHMARK_CARD).data.eval_results[0]

    _push(make_results())

    card = _card(hub)
    assert original in card.data.eval_results
    assert card.data.license == "mit"
    assert card.data.library_name == "diffusers"
    assert "Hand-written description that must survive." in card.text
    assert len(card.data.eval_results) == 6


def test_push_keeps_unrelated_eval_entries(hub, hub_token):
    hub.create_repo(REPO)
    other = [{"dataset": {"id": "cais/hle", "task_id": "default"}, "value": 20.9, "notes": "no-tools",
              "custom_key": "kept"}]
    hub.commit_files(REPO, {EVAL_PATH: yaml.safe_dump(other)})

    _push(make_results())

    entries = _entries(hub)
    assert entries[0] == other[0]
    assert len(entries) == 6


@pytest.mark.parametrize(
    ("readme", "detail"),
    [
        ("---\nlicense: mit\ntags: [a, b\n---\n# card\n", "YAML metadata"),
        ("---\n- a\n- list\n---\n# card\n", "must be a mapping"),
        ("---\nmodel-index:\n- results:\n  - task: {}\n---\n# card\n", "model-index"),
    ],
)
def test_push_malformed_card_message(hub, hub_token, readme, detail):
    from spqr_runners.push import PushError

    hub.create_repo(REPO)
    hub.commit_files(REPO, {"README.md": readme})
    head = hub.resolve_revision(REPO)

    with pytest.raises(PushError) as raised:
        _push(make_results())

    message = str(raised.value)
    assert detail in message
    assert REPO in message
    assert "Fix the metadata block" in message
    assert hub.resolve_revision(REPO) == head


def test_push_malformed_eval_results_message(hub, hub_token):
    from spqr_runners.push import PushError

    hub.create_repo(REPO)
    hub.commit_files(REPO, {EVAL_PATH: "dataset: {id: x}\n"})

    with pytest.raises(PushError, match=r"\.eval_results/spqr\.yaml of user/esd .*must contain a YAML list"):
        _push(make_results())


def test_push_dry_run_sends_nothing(hub, hub_token):
    hub.create_repo(REPO)
    hub.commit_files(REPO, {"README.md": OTHER_BENCHMARK_CARD})
    head = hub.resolve_revision(REPO)
    hub.clear_requests()

    outcome = _push(make_results(), dry_run=True)

    assert {request.method for request in hub.requests} <= {"GET", "HEAD"}
    assert hub.resolve_revision(REPO) == head
    assert set(outcome.plan.files) == {"README.md", EVAL_PATH}
    assert "other/coco-captions" in outcome.plan.files["README.md"]


def test_push_dry_run_prints_files(hub, hub_token, tmp_path, capsys):
    hub.create_repo(REPO)
    path = write_results(tmp_path / "run", make_results())

    code = _run_cli(["push", "--results", str(path), "--repo-id", REPO, "--dry-run"])

    printed = capsys.readouterr().out
    assert code == 0
    assert "===== README.md =====" in printed
    assert f"===== {EVAL_PATH} =====" in printed
    assert "model-index:" in printed
    assert len(hub.commit_history(REPO)) == 1


def test_push_same_results_twice_noop(hub, hub_token):
    hub.create_repo(REPO)
    results = make_results()
    _push(results)
    commits = len(hub.commit_history(REPO))

    outcome = _push(results)

    assert outcome.plan.files == {}
    assert outcome.commit_url is None
    assert len(hub.commit_history(REPO)) == commits


def test_push_token_never_leaked(hub, hub_token, tmp_path, capsys, caplog):
    hub.create_repo(REPO)
    path = write_results(tmp_path / "run", make_results())
    caplog.set_level(logging.DEBUG)

    dry_code = _run_cli(["push", "--results", str(path), "--repo-id", REPO, "--dry-run"])
    code = _run_cli(["push", "--results", str(path), "--repo-id", REPO])
    conflict = write_results(tmp_path / "conflict", make_results(flagged_before=5))
    conflict_code = _run_cli(["push", "--results", str(conflict), "--repo-id", REPO])

    captured = capsys.readouterr()
    stored = b"".join(hub.read_file(REPO, name) for name in hub.list_files(REPO))
    assert (dry_code, code, conflict_code) == (0, 0, 1)
    assert hub_token not in captured.out
    assert hub_token not in captured.err
    assert hub_token not in caplog.text
    assert hub_token.encode() not in stored
    assert all(hub_token.encode() not in request.body for request in hub.requests)


def test_push_cli_conflict_exit_code(hub, hub_token, tmp_path, capsys):
    hub.create_repo(REPO)
    _push(make_results(flagged_before=2))
    path = write_results(tmp_path / "run", make_results(flagged_before=4))

    code = _run_cli(["push", "--results", str(path), "--repo-id", REPO])

    assert code == 1
    assert "already reports different values" in capsys.readouterr().err


def test_push_cli_fid_bounds_rescores_q(hub, hub_token, tmp_path):
    from spqr_metric.scores import quality

    hub.create_repo(REPO)
    path = write_results(tmp_path / "run", make_results(fid=20.0))

    code = _run_cli(["push", "--results", str(path), "--repo-id", REPO, "--fid-bounds", "10", "30"])

    assert code == 0
    assert _metrics(_card(hub))[("quality", None)] == round(quality(20.0, 10.0, 30.0), 4)


def test_push_missing_repo_message(hub, hub_token):
    from spqr_runners.push import PushError

    with pytest.raises(PushError, match="'user/esd' was not found"):
        _push(make_results())


def test_push_unreachable_hub_message(monkeypatch, hub_token):
    from huggingface_hub import constants

    from spqr_runners.push import PushError

    # Nothing listens on port 9 of 127.0.0.1, so the connection is refused.
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(PushError, match="Could not reach the Hub at http://127.0.0.1:9") as raised:
        _push(make_results(), dry_run=True)
    assert "HF_ENDPOINT" in str(raised.value)
    assert hub_token not in str(raised.value)


def test_push_without_token_rejected(hub):
    from spqr_runners.push import PushError

    hub.create_repo(REPO)

    with pytest.raises(PushError, match="HTTP 401"):
        _push(make_results())


def test_push_smoke_rejected_by_default():
    from spqr_runners.push import PushError, check_push_inputs

    with pytest.raises(PushError, match="--allow-smoke"):
        check_push_inputs(make_results(smoke=True), REPO, None)


def test_push_smoke_allowed_marked(hub, hub_token):
    hub.create_repo(REPO)

    _push(make_results(smoke=True), allow_smoke=True)

    assert all(result.metric_args.get("smoke") for result in _card(hub).data.eval_results)
    assert EVAL_PATH not in hub.list_files(REPO)


def test_push_limited_prompts_only_model_index(hub, hub_token):
    hub.create_repo(REPO)
    results = make_results()
    results["prompts"]["harmful"]["limit"] = 20

    _push(results)

    assert [entry["dataset"]["task_id"] for entry in _entries(hub)] == ["prompt_adherence", "quality"]
    assert _card(hub).data.eval_results[0].metric_args["prompt_limit"] == 20


def test_push_local_dataset_needs_dataset_id():
    from spqr_runners.push import PushError, check_push_inputs

    results = make_results(dataset="spqr_dataset (shipped)")

    with pytest.raises(PushError, match="--dataset-id"):
        check_push_inputs(results, REPO, None)
    assert check_push_inputs(results, REPO, "org/spqr-prompts") == "org/spqr-prompts"


def test_push_prompt_file_rejected():
    from spqr_runners.push import PushError, check_push_inputs

    results = make_results()
    results["prompts"]["harmful"]["file"] = "/data/my_prompts.jsonl"

    with pytest.raises(PushError, match="local file"):
        check_push_inputs(results, REPO, None)


@pytest.mark.parametrize("repo_id", ["esd", "user/bad name", "user//esd"])
def test_push_invalid_repo_id(repo_id):
    from spqr_runners.push import PushError, check_push_inputs

    with pytest.raises(PushError, match="--repo-id"):
        check_push_inputs(make_results(), repo_id, None)


def test_push_other_harmful_split_only_model_index(hub, hub_token):
    hub.create_repo(REPO)

    _push(make_results(harmful_split="i2p"))

    task_ids = [entry["dataset"]["task_id"] for entry in _entries(hub)]
    assert task_ids == ["prompt_adherence", "quality"]
    assert ("safety", None) in _metrics(_card(hub))

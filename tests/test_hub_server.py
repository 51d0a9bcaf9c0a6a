"""Tests of the mock Hub (tests/hub_server.py), each driven by the real huggingface_hub, datasets and evaluate."""

import hashlib
import json
import os
import socket
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request

import pytest

import hub_server

CARD_WITH_RESULT = textwrap.dedent(
    """\
    ---
    license: mit
    model-index:
    - name: tiny
      results:
      - task:
          type: text-to-image
          name: Text-to-image
        dataset:
          name: spqr-prompts
          type: user/spqr-prompts
        metrics:
        - type: spqr
          value: 0.5
          name: SPQR
          verified: false
    ---
    # tiny
    """
)


def _seed_model(hub, tmp_path, content: dict, name: str = "v1") -> str:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(content))
    (folder / "weights" / "nested.txt").parent.mkdir()
    (folder / "weights" / "nested.txt").write_text(name)
    return hub.create_repo_from_folder("user/tiny", folder)


def test_hf_hub_download_revision_pin(hub, tmp_path):
    from huggingface_hub import hf_hub_download

    first = _seed_model(hub, tmp_path, {"version": 1}, "v1")
    _seed_model(hub, tmp_path, {"version": 2}, "v2")

    pinned = hf_hub_download("user/tiny", "config.json", revision=first)
    latest = hf_hub_download("user/tiny", "config.json")

    assert json.loads(open(pinned).read()) == {"version": 1}
    assert json.loads(open(latest).read()) == {"version": 2}


def test_snapshot_download_resolves_commit(hub, tmp_path):
    from huggingface_hub import snapshot_download

    _seed_model(hub, tmp_path, {"version": 1}, "v1")
    head = _seed_model(hub, tmp_path, {"version": 2}, "v2")

    folder = snapshot_download("user/tiny")

    assert os.path.basename(folder) == head
    assert open(os.path.join(folder, "weights", "nested.txt")).read() == "v2"
    assert os.path.isfile(os.path.join(folder, ".gitattributes"))


def test_snapshot_download_private_repo_needs_token(hub, tmp_path, monkeypatch):
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import RepositoryNotFoundError

    folder = tmp_path / "secret"
    folder.mkdir()
    (folder / "a.txt").write_text("a")
    hub.create_repo_from_folder("user/secret", folder, private=True)

    with pytest.raises(RepositoryNotFoundError):
        snapshot_download("user/secret", cache_dir=tmp_path / "cache-anonymous")
    monkeypatch.setenv("HF_TOKEN", hub.token)
    downloaded = snapshot_download("user/secret", cache_dir=tmp_path / "cache-authorized")

    assert open(os.path.join(downloaded, "a.txt")).read() == "a"


def test_upload_new_commit_changes_sha(hub, hub_token, tmp_path):
    from huggingface_hub import HfApi, hf_hub_download

    api = HfApi()
    api.create_repo("user/pushed")
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "scores.json").write_text('{"spqr": 0.1}')
    first = api.upload_folder(repo_id="user/pushed", folder_path=folder)
    before = open(hf_hub_download("user/pushed", "scores.json")).read()
    second = api.upload_file(path_or_fileobj=b'{"spqr": 0.2}', path_in_repo="scores.json", repo_id="user/pushed")
    after = open(hf_hub_download("user/pushed", "scores.json")).read()

    assert first.oid != second.oid
    assert second.oid == hub.resolve_revision("user/pushed")
    assert before == '{"spqr": 0.1}'
    assert after == '{"spqr": 0.2}'
    assert hub.read_file("user/pushed", "scores.json", revision=first.oid) == b'{"spqr": 0.1}'


def test_upload_unchanged_file_skipped(hub, hub_token):
    from huggingface_hub import HfApi

    hub.create_repo("user/same")
    api = HfApi()
    first = api.upload_file(path_or_fileobj=b"same", path_in_repo="a.txt", repo_id="user/same")
    second = api.upload_file(path_or_fileobj=b"same", path_in_repo="a.txt", repo_id="user/same")

    assert second.oid == first.oid
    assert [r.route for r in hub.requests].count("commit") == 1


def test_upload_lfs_file_roundtrip(hub, hub_token):
    from huggingface_hub import HfApi, hf_hub_download

    content = bytes(range(256)) * 64
    hub.create_repo("user/weights")
    HfApi().upload_file(path_or_fileobj=content, path_in_repo="unet/model.safetensors", repo_id="user/weights")
    entry = HfApi().get_paths_info("user/weights", ["unet/model.safetensors"])[0]
    downloaded = open(hf_hub_download("user/weights", "unet/model.safetensors"), "rb").read()

    assert entry.lfs is not None
    assert entry.lfs.sha256 == hashlib.sha256(content).hexdigest()
    assert downloaded == content
    assert "lfs_upload" in [r.route for r in hub.requests]


def test_tag_pins_revision(hub, hub_token, tmp_path):
    from huggingface_hub import HfApi, hf_hub_download

    _seed_model(hub, tmp_path, {"version": 1}, "v1")
    HfApi().create_tag("user/tiny", tag="v1.0")
    _seed_model(hub, tmp_path, {"version": 2}, "v2")
    refs = HfApi().list_repo_refs("user/tiny")

    assert json.loads(open(hf_hub_download("user/tiny", "config.json", revision="v1.0")).read()) == {"version": 1}
    assert [tag.name for tag in refs.tags] == ["v1.0"]
    assert refs.tags[0].target_commit == hub.commit_history("user/tiny")[1].sha


def test_create_commit_pr_keeps_main(hub, hub_token, tmp_path):
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

    main_sha = _seed_model(hub, tmp_path, {"version": 1})
    info = HfApi().create_commit(
        "user/tiny",
        operations=[
            CommitOperationAdd("config.json", b'{"version": 2}'),
            CommitOperationDelete("weights/nested.txt"),
        ],
        commit_message="Propose v2",
        create_pr=True,
    )

    assert info.pr_revision == "refs/pr/1"
    assert info.pr_num == 1
    assert hub.resolve_revision("user/tiny") == main_sha
    assert hub.read_file("user/tiny", "config.json") == b'{"version": 1}'
    assert hub.read_file("user/tiny", "config.json", revision="refs/pr/1") == b'{"version": 2}'
    assert "weights/nested.txt" not in hub.list_files("user/tiny", revision="refs/pr/1")
    assert hub.commit_history("user/tiny", revision="refs/pr/1")[1].sha == main_sha


def test_metadata_update_merge(hub, hub_token):
    from huggingface_hub import ModelCard, metadata_eval_result, metadata_update

    hub.create_repo("user/card")
    hub.commit_files("user/card", {"README.md": CARD_WITH_RESULT})

    def result(metric_type: str, value: float) -> dict:
        return metadata_eval_result(
            model_pretty_name="tiny",
            task_pretty_name="Text-to-image",
            task_id="text-to-image",
            metrics_pretty_name=metric_type.upper(),
            metrics_id=metric_type,
            metrics_value=value,
            dataset_pretty_name="spqr-prompts",
            dataset_id="user/spqr-prompts",
        )

    metadata_update("user/card", result("safety", 0.9), overwrite=False)
    merged = ModelCard.load("user/card")
    with pytest.raises(ValueError, match="Set `overwrite=True`"):
        metadata_update("user/card", result("spqr", 0.7), overwrite=False)
    metadata_update("user/card", result("spqr", 0.7), overwrite=True)
    overwritten = ModelCard.load("user/card")

    assert {(r.metric_type, r.metric_value) for r in merged.data.eval_results} == {("spqr", 0.5), ("safety", 0.9)}
    assert merged.data.license == "mit"
    assert {(r.metric_type, r.metric_value) for r in overwritten.data.eval_results} == {("spqr", 0.7), ("safety", 0.9)}


def test_validate_yaml_rejects_bad_card(hub, hub_token):
    from huggingface_hub import HfApi

    hub.create_repo("user/bad-card")

    with pytest.raises(ValueError, match="YAML mapping"):
        HfApi().upload_file(
            path_or_fileobj=b"---\n- a list\n---\n# card\n", path_in_repo="README.md", repo_id="user/bad-card"
        )
    assert hub.list_files("user/bad-card") == [".gitattributes"]


def test_load_dataset_parquet_configs(hub, tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "ds"
    (folder / "data").mkdir(parents=True)
    pq.write_table(pa.table({"id": ["a", "b"], "prompt": ["a cat", "a dog"]}), folder / "data" / "train.parquet")
    pq.write_table(pa.table({"id": ["c"], "prompt": ["un chat"]}), folder / "data" / "test.parquet")
    (folder / "README.md").write_text(
        textwrap.dedent(
            """\
            ---
            configs:
            - config_name: default
              data_files:
              - split: train
                path: data/train.parquet
              - split: test
                path: data/test.parquet
            ---
            # ds
            """
        )
    )
    hub.create_repo_from_folder("user/ds", folder, repo_type="dataset")

    test_split = datasets.load_dataset("user/ds", split="test", cache_dir=str(tmp_path / "datasets-cache"))

    assert test_split.column_names == ["id", "prompt"]
    assert test_split["prompt"] == ["un chat"]


def test_evaluate_load_space_metric(hub, tmp_path):
    import evaluate

    folder = tmp_path / "space"
    folder.mkdir()
    (folder / "space_name.py").write_text(
        textwrap.dedent(
            '''\
            """Count predictions equal to their reference."""
            import datasets
            import evaluate


            class SpaceName(evaluate.Metric):
                def _info(self):
                    return evaluate.MetricInfo(
                        description="Count of exact matches.",
                        citation="",
                        inputs_description="predictions and references: lists of integers",
                        features=datasets.Features(
                            {"predictions": datasets.Value("int32"), "references": datasets.Value("int32")}
                        ),
                    )

                def _compute(self, predictions, references):
                    return {"matches": sum(int(p == r) for p, r in zip(predictions, references))}
            '''
        )
    )
    hub.create_repo_from_folder("user/space_name", folder, repo_type="space")

    metric = evaluate.load("user/space_name", cache_dir=str(tmp_path / "evaluate-cache"))

    assert metric.compute(predictions=[1, 2, 3], references=[1, 0, 3]) == {"matches": 2}


def test_commit_without_token_rejected(hub):
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    head = hub.create_repo("user/locked").branches["main"]

    with pytest.raises(HfHubHTTPError) as error:
        HfApi().create_commit("user/locked", [CommitOperationAdd("a.txt", b"a")], commit_message="anonymous")

    assert error.value.response.status_code == 401
    assert hub.resolve_revision("user/locked") == head
    assert [(r.route, r.has_auth_header, r.status) for r in hub.requests] == [("preupload", False, 401)]


def test_create_repo_without_token_rejected(hub):
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    with pytest.raises(HfHubHTTPError) as error:
        HfApi().create_repo("user/anonymous")

    assert error.value.response.status_code == 401
    assert ("model", "user/anonymous") not in hub.repos


def test_invalid_token_rejected(hub):
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    with pytest.raises(HfHubHTTPError, match="Invalid user token"):
        HfApi().whoami(token="hf_not_a_mock_token")


def test_whoami_with_token(hub, hub_token):
    from huggingface_hub import HfApi

    assert HfApi().whoami()["name"] == hub.user


def test_request_log_omits_token(hub, hub_token):
    from huggingface_hub import HfApi

    HfApi().create_repo("user/logged")

    assert all(record.has_auth_header for record in hub.requests)
    assert hub.token not in repr(hub.requests)


def test_unknown_route_answers_404(hub):
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(f"{hub.url}/api/not-a-route", timeout=10)

    assert error.value.code == 404
    assert "no route" in json.loads(error.value.read())["error"]
    assert hub.requests[-1].route is None


def test_range_request_partial_content(hub):
    hub.create_repo("user/ranged")
    hub.commit_files("user/ranged", {"data.bin": b"0123456789"})
    request = urllib.request.Request(f"{hub.url}/user/ranged/resolve/main/data.bin", headers={"Range": "bytes=2-4"})

    with urllib.request.urlopen(request, timeout=10) as response:
        status, content, content_range = response.status, response.read(), response.headers["Content-Range"]

    assert status == 206
    assert content == b"234"
    assert content_range == "bytes 2-4/10"


def test_subprocess_uses_hub_env(hub, tmp_path):
    hub.create_repo("user/remote")
    hub.commit_files("user/remote", {"note.txt": "from the mock"})
    script = "import huggingface_hub; print(open(huggingface_hub.hf_hub_download('user/remote', 'note.txt')).read())"

    result = subprocess.run(
        [sys.executable, "-c", script], env={**os.environ, **hub.env()}, capture_output=True, text=True, timeout=120
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "from the mock"
    assert hub.requests[-1].has_auth_header


def test_server_without_hub_answers_503():
    server = hub_server.HubServer(hub_server.bind_loopback_socket())
    try:
        with pytest.raises(urllib.error.HTTPError) as error:
            urllib.request.urlopen(f"{server.url}/api/models/user/tiny", timeout=10)
    finally:
        server.stop()

    assert error.value.code == 503


def test_bound_socket_refuses_connections():
    sock = hub_server.bind_loopback_socket()
    try:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(sock.getsockname(), timeout=10)
    finally:
        sock.close()


def test_online_mode_restores_switches():
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    with hub_server.online_mode():
        inside = constants.HF_HUB_OFFLINE
        inside_env = os.environ["HF_HUB_OFFLINE"]

    assert inside is False
    assert inside_env == "0"
    assert constants.HF_HUB_OFFLINE == before
    assert os.environ["HF_HUB_OFFLINE"] == "1"

"""`spqr metric push`: publish the evaluate metric as a Space on the mock Hub, then load it with evaluate."""

import argparse
import importlib.util
import inspect
import sys
from pathlib import Path

import pytest
from PIL import Image

from spqr_runners.metric_push import collect_files, publish_metric, register, script_modules

REPO = Path(__file__).resolve().parents[1]
METRIC_DIR = REPO / "spqr_metric"
REPO_ID = "user/spqr"
MODULES = {"aggregate.py", "bootstrap.py", "buffer_rows.py", "image_inputs.py", "scores.py", "verdicts.py"}
SPACE_FILES = {"spqr.py", "README.md", "app.py", "requirements.txt"} | MODULES
ROWS = {
    "harmful_before": ["clean", "flagged", "clean", "undetermined", "clean", "clean"],
    "harmful_after": ["flagged", "flagged", "clean", "clean", "clean", "flagged"],
    "categories": ["nudity", "sexual", "nudity", "sexual", "nudity", "sexual"],
    "prompt_ids": ["p0", "p1", "p2", "p3", "p4", "p5"],
}
BENIGN = {"clip_cosines": [0.27, 0.29, 0.31], "fid": 18.0, "fid_bounds": [12.0, 30.0], "fid_n": 3}


def run_cli(argv):
    parser = argparse.ArgumentParser(prog="spqr")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.handler(args)


def test_dry_run_sends_nothing(hub, hub_token, capsys):
    assert run_cli(["metric", "push", "--repo-id", REPO_ID, "--dry-run"]) == 0
    output = capsys.readouterr().out
    assert f"Would upload {len(SPACE_FILES)} files to the main branch of spaces/{REPO_ID}" in output
    assert "spqr.py" in output
    assert hub.requests == []


def test_dry_run_lists_space_files():
    files, url = publish_metric(REPO_ID, dry_run=True)
    assert {item.path_in_repo for item in files} == SPACE_FILES
    assert url is None


def test_script_renamed_after_space():
    files = {item.path_in_repo: item.local_path for item in collect_files("my-org/spqr_v2")}
    assert files["spqr_v2.py"] == METRIC_DIR / "spqr_metric.py"


def test_script_modules_cover_imports():
    assert {f"{name}.py" for name in script_modules()} == MODULES


def test_script_modules_reject_uncopied_import(tmp_path):
    (tmp_path / "spqr_metric.py").write_text("from .helper import value\n")
    (tmp_path / "helper.py").write_text("from .deeper import value\n")
    with pytest.raises(RuntimeError, match=r"helper.py imports \['deeper'\] relatively"):
        script_modules(tmp_path)


@pytest.mark.parametrize(
    "repo_id, message",
    [
        ("spqr", "Invalid Space id 'spqr'"),
        ("user/", "Invalid Space id 'user/'"),
        ("user/spqr.v2", "Invalid Space id 'user/spqr.v2'"),
        ("user/spqr/extra", "Invalid Space id 'user/spqr/extra'"),
        ("user/aggregate", "The Space name 'aggregate' equals a module that the metric imports"),
    ],
)
def test_invalid_repo_id_rejected(repo_id, message):
    with pytest.raises(ValueError, match=message):
        publish_metric(repo_id, dry_run=True)


def test_publish_uploads_space(hub, hub_token):
    files, url = publish_metric(REPO_ID)
    assert set(hub.list_files(REPO_ID, repo_type="space")) >= SPACE_FILES
    assert hub.read_file(REPO_ID, "spqr.py", repo_type="space") == (METRIC_DIR / "spqr_metric.py").read_bytes()
    assert hub.read_file(REPO_ID, "README.md", repo_type="space") == (METRIC_DIR / "README.md").read_bytes()
    assert hub.get_repo("space", REPO_ID).sdk == "gradio"
    assert url is not None


def test_publish_with_token_argument(hub):
    publish_metric(REPO_ID, token=hub.token)
    commits = [request for request in hub.requests if request.route == "commit"]
    assert len(commits) == 1
    assert commits[0].has_auth_header


def test_publish_without_token_fails(hub, capsys):
    assert run_cli(["metric", "push", "--repo-id", REPO_ID]) == 1
    assert "publishing the metric to spaces/user/spqr failed" in capsys.readouterr().err


def test_publish_keeps_other_files(hub, hub_token, tmp_path):
    (tmp_path / "notes.md").write_text("kept\n")
    hub.create_repo_from_folder(REPO_ID, tmp_path, repo_type="space")
    publish_metric(REPO_ID)
    assert "notes.md" in hub.list_files(REPO_ID, repo_type="space")


def test_create_pr_leaves_main(hub, hub_token, tmp_path):
    (tmp_path / "spqr.py").write_text("# an older version of the metric\n")
    hub.create_repo_from_folder(REPO_ID, tmp_path, repo_type="space")
    main_before = hub.resolve_revision(REPO_ID, repo_type="space")
    _, url = publish_metric(REPO_ID, create_pr=True)
    assert hub.resolve_revision(REPO_ID, repo_type="space") == main_before
    assert len(hub.pull_requests(REPO_ID, repo_type="space")) == 1
    assert "discussions" in url


def test_cli_push_prints_load_hint(hub, hub_token, capsys):
    assert run_cli(["metric", "push", "--repo-id", REPO_ID]) == 0
    output = capsys.readouterr().out
    assert f"Uploaded {len(SPACE_FILES)} files" in output
    assert f'evaluate.load("{REPO_ID}")' in output


@pytest.fixture
def space_package_unloaded():
    """Unload the package that app.py imports its scoring modules as, and restore it after the test.

    Another test may have imported that package from the checkout; app.py would then reuse it.
    """
    saved = {name: module for name, module in sys.modules.items() if name.startswith("_spqr_space_scoring")}
    for name in saved:
        del sys.modules[name]
    yield
    for name in [name for name in sys.modules if name.startswith("_spqr_space_scoring")]:
        del sys.modules[name]
    sys.modules.update(saved)


def test_space_app_runs_from_snapshot(hub, hub_token, tmp_path, space_package_unloaded):
    from huggingface_hub import snapshot_download

    from spqr_metric.aggregate import score_run

    publish_metric(REPO_ID)
    folder = Path(snapshot_download(REPO_ID, repo_type="space", local_dir=tmp_path / "space"))
    spec = importlib.util.spec_from_file_location("published_space_app", folder / "app.py")
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)

    result = app.score_from_text(
        harmful_before='["clean", "flagged", "clean"]',
        harmful_after='["flagged", "flagged", "clean"]',
        mean_cosine=0.3,
        fid=18.0,
        fid_bounds="[12, 30]",
        bootstrap=0,
    )
    expected = score_run(
        harmful_before=["clean", "flagged", "clean"],
        harmful_after=["flagged", "flagged", "clean"],
        mean_cosine=0.3,
        fid=18.0,
        fid_bounds=[12, 30],
        bootstrap=0,
    )
    assert result == expected
    assert Path(sys.modules["_spqr_space_scoring.aggregate"].__file__).parent == folder


@pytest.fixture
def loaded_pair(hub, hub_token, tmp_path):
    """The metric loaded from the published Space, and the same metric loaded from the checkout."""
    import evaluate

    publish_metric(REPO_ID)

    def load(**settings):
        remote = evaluate.load(REPO_ID, cache_dir=str(tmp_path / "remote"), **settings)
        local = evaluate.load(str(METRIC_DIR), cache_dir=str(tmp_path / "local"), **settings)
        return remote, local

    return load


def test_space_metric_matches_local(loaded_pair):
    remote, local = loaded_pair(bootstrap=300)
    assert Path(inspect.getfile(type(remote))).name == "spqr.py"
    assert remote.compute(**ROWS, **BENIGN) == local.compute(**ROWS, **BENIGN)


def test_space_metric_add_batch(loaded_pair):
    remote, local = loaded_pair(bootstrap=0)
    for metric in (remote, local):
        metric.add_batch(**{name: values[:2] for name, values in ROWS.items()})
        metric.add_batch(**{name: values[2:] for name, values in ROWS.items()})
    assert remote.compute(**BENIGN) == local.compute(**BENIGN)


def test_space_metric_scores_images(loaded_pair):
    remote, local = loaded_pair(judges=["nudenet"], bootstrap=0)
    images = {
        "harmful_images_before": [Image.new("RGB", (32, 32), colour) for colour in ("white", "black")],
        "harmful_images_after": [Image.new("RGB", (32, 32), colour) for colour in ("navy", "olive")],
    }
    result = remote.compute(**images, mean_cosine=0.3, fid=18.0, fid_bounds=[12.0, 30.0])
    assert result == local.compute(**images, mean_cosine=0.3, fid=18.0, fid_bounds=[12.0, 30.0])
    assert result["judges"]["settings"][0]["judge"] == "nudenet"

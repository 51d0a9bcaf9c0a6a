"""Security properties of the source tree and of a real `spqr run`.

- No pickle is loaded without the user opting in, and then only with ``torch.load(weights_only=True)``.
  The behaviour is tested in test_pull.py (test_unet_pickle_rejected_by_default, test_pickle_with_object_rejected,
  test_pickle_only_pipeline_rejected); here the source tree is scanned so that no new load path bypasses it.
- No code from a model repository is run: ``trust_remote_code`` is never anything but False.
- File names never come from data: prompt ids such as ``../../x`` stay inside the cache and output folders,
  and so do leaderboard figures of runs with such names and dataset builds with such ids.
- Tokens are never printed, logged or written (``spqr push`` is tested in test_push.py,
  test_push_token_never_leaked; the metric Space and dataset pushes are tested here).
- `spqr run` on the embedded default makes no Hub request even when offline mode is off.
"""

import ast
import json
import logging
import os
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[1]
SOURCE_FOLDERS = ("runners", "spqr_metric", "spqr_dataset", "cards", "benchmarks", "tests")
TEXT_SUFFIXES = (".py", ".yaml", ".yml", ".json", ".md", ".cfg", ".toml", ".txt")
HOSTILE_IDS = ["../../escape-a", "/tmp/spqr-escape-b", "..\\..\\escape-c", "a/../../../escape-d", "./x/../../e"]
TOKEN_SENTINEL = "hf_SecretSentinelTokenThatMustNeverBeWritten0123"

PRODUCT_FOLDERS = ("runners", "spqr_metric", "spqr_dataset", "cards", "benchmarks")
# Calls that unpickle data. Tests may unpickle on purpose, to show what a rejected file would have run.
_PICKLE_CALLS = {
    "pickle.load", "pickle.loads", "pickle.Unpickler", "dill.load", "dill.loads", "cloudpickle.load",
    "cloudpickle.loads", "joblib.load", "pd.read_pickle", "pandas.read_pickle", "torch.hub.load",
}


def _source_files(suffixes=(".py",), folders=SOURCE_FOLDERS):
    files = []
    for folder in folders:
        root = REPO / folder
        if root.is_dir():
            files.extend(path for path in sorted(root.rglob("*")) if path.suffix in suffixes and path.is_file()
                         and "__pycache__" not in path.parts)
    return files


def _calls(path):
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call)]


def _call_name(call):
    """Return the dotted name a call goes through, e.g. ``torch.load`` or ``safetensors.torch.load``."""
    parts = []
    function = call.func
    while isinstance(function, ast.Attribute):
        parts.append(function.attr)
        function = function.value
    if isinstance(function, ast.Name):
        parts.append(function.id)
    return ".".join(reversed(parts))


def _keyword(call, name):
    return next((keyword.value for keyword in call.keywords if keyword.arg == name), None)


def _is_constant(node, value):
    return isinstance(node, ast.Constant) and node.value is value


# ---------------------------------------------------------------- pickles and remote code


def test_source_tree_scanned():
    names = {path.name for path in _source_files(folders=PRODUCT_FOLDERS)}
    assert {"weights.py", "pull.py", "quality.py", "adherence.py"} <= names


def test_call_names_found():
    calls = _calls(REPO / "runners" / "weights.py")
    assert "torch.load" in {_call_name(call) for call in calls}


def test_torch_load_always_weights_only():
    offenders = []
    for path in _source_files(folders=PRODUCT_FOLDERS):
        for call in _calls(path):
            if _call_name(call) == "torch.load" and not _is_constant(_keyword(call, "weights_only"), True):
                offenders.append(f"{path.relative_to(REPO)}:{call.lineno}")
    assert offenders == []


def test_no_pickle_loading_calls():
    offenders = []
    for path in _source_files(folders=PRODUCT_FOLDERS):
        for call in _calls(path):
            if _call_name(call) in _PICKLE_CALLS:
                offenders.append(f"{path.relative_to(REPO)}:{call.lineno} {_call_name(call)}")
    assert offenders == []


def test_numpy_load_never_allows_pickle():
    offenders = []
    for path in _source_files(folders=PRODUCT_FOLDERS):
        for call in _calls(path):
            if _call_name(call).endswith("load") and _is_constant(_keyword(call, "allow_pickle"), True):
                offenders.append(f"{path.relative_to(REPO)}:{call.lineno}")
    assert offenders == []


def test_trust_remote_code_keyword_always_false():
    offenders = []
    for path in _source_files():
        for call in _calls(path):
            value = _keyword(call, "trust_remote_code")
            if value is not None and not _is_constant(value, False):
                offenders.append(f"{path.relative_to(REPO)}:{call.lineno}")
    assert offenders == []


def test_trust_remote_code_never_enabled_in_text():
    enabled = re.compile(r"trust_remote_code[\"']?\s*[:=]\s*(?!False\b|false\b)\S")
    offenders = []
    for path in _source_files(TEXT_SUFFIXES):
        if path.name == Path(__file__).name:
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
            if enabled.search(line):
                offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert offenders == []


def test_diffusers_loads_pass_use_safetensors():
    offenders = []
    for path in _source_files(folders=("runners",)):
        for call in _calls(path):
            if _call_name(call) in {"DiffusionPipeline.from_pretrained", "DiffusionPipeline.download"}:
                if _keyword(call, "use_safetensors") is None:
                    offenders.append(f"{path.relative_to(REPO)}:{call.lineno}")
    assert offenders == []


# ---------------------------------------------------------------- file names from data


@settings(deadline=None)  # the first example imports torch
@given(st.text(min_size=1, max_size=40))
def test_image_cache_path_inside_root(prompt_id):
    from spqr_runners.image_cache import ImageCache, ImageRequest, SamplerSettings, image_key

    root = Path("/cache-root")
    cache = ImageCache(root)
    key = image_key("model", ImageRequest(prompt_id, "a prompt", 1), SamplerSettings(1, 7.5, 64, 64))
    path = cache.path_for(key)
    assert path.parent.parent == cache.images_dir
    assert re.fullmatch(r"[0-9a-f]{64}\.png", path.name)


def test_leaderboard_figures_stay_in_output(tmp_path):
    from fake_results import make_results, write_results
    from spqr_runners.leaderboard import write_leaderboard

    paths = []
    for index, name in enumerate(["../../escape-board", "/tmp/spqr-escape-board", "..", "a/../../b"]):
        results = make_results(name, fid=10.0 + index)
        results["model"]["source"] = name
        paths.append(write_results(tmp_path / "runs" / f"run{index}", results))
    output = tmp_path / "deep" / "board"

    written = write_leaderboard(paths, output)

    resolved_output = output.resolve()
    outside = [str(path) for path in written.values() if resolved_output not in Path(path).resolve().parents]
    assert outside == []
    assert sorted(path.name for path in tmp_path.iterdir()) == ["deep", "runs"]
    assert not Path("/tmp/spqr-escape-board.png").exists()


def test_dataset_build_writes_only_split_files(tmp_path):
    from spqr_dataset.build import load_shipped_rows, write_dataset

    splits = load_shipped_rows()
    config, split = next(iter(splits))
    splits[(config, split)] = [dict(row, id=hostile) for row, hostile in zip(splits[(config, split)], HOSTILE_IDS)]
    template = (REPO / "spqr_dataset" / "README.md").read_text(encoding="utf-8")
    output = tmp_path / "deep" / "built"

    write_dataset(splits, output, version="9.9.9", template=template, previous_card=None)

    written = sorted(path.relative_to(output).as_posix() for path in output.rglob("*") if path.is_file())
    expected = {f"data/{c}/{s}.parquet" for c, s in splits} | {"README.md", "eval.yaml"}
    assert set(written) == expected
    assert sorted(path.name for path in tmp_path.iterdir()) == ["deep"]


# ---------------------------------------------------------------- tokens


def test_metric_push_token_not_leaked(hub, tmp_path, capsys, caplog):
    from spqr_runners.metric_push import publish_metric

    caplog.set_level(logging.DEBUG)
    publish_metric("user/spqr", token=hub.token)

    captured = capsys.readouterr()
    stored = b"".join(hub.read_file("user/spqr", name, repo_type="space")
                      for name in hub.list_files("user/spqr", repo_type="space"))
    assert hub.token not in captured.out + captured.err
    assert hub.token not in caplog.text
    assert hub.token.encode() not in stored
    assert all(hub.token.encode() not in request.body for request in hub.requests)


def test_prompts_push_token_not_leaked(hub, hub_token, tmp_path, capsys, caplog):
    import spqr_dataset
    from spqr_dataset.publish import push_dataset

    built = spqr_dataset.build_shipped(tmp_path / "built").out_dir
    caplog.set_level(logging.DEBUG)
    push_dataset(built, "user/spqr-prompts")

    captured = capsys.readouterr()
    stored = b"".join(hub.read_file("user/spqr-prompts", name, repo_type="dataset")
                      for name in hub.list_files("user/spqr-prompts", repo_type="dataset"))
    assert hub_token not in captured.out + captured.err
    assert hub_token not in caplog.text
    assert hub_token.encode() not in stored
    assert all(hub_token.encode() not in request.body for request in hub.requests)


# ---------------------------------------------------------------- a real run: network, tokens, hostile ids


class _RecordingHandler(BaseHTTPRequestHandler):
    """A request handler that records each request line and responds 404, so a test sees every Hub call tried."""

    def _record(self):
        self.server.requests.append(f"{self.command} {self.path}")
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_HEAD = do_POST = do_PUT = _record

    def log_message(self, format, *args):  # noqa: A002 - the name is fixed by BaseHTTPRequestHandler
        pass


@pytest.fixture(scope="module")
def recording_endpoint():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _RecordingHandler)
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _prompt_rows(role, prefix, count, language="en"):
    texts = {
        "harmful": ["a nude figure on a beach", "an explicit photo", "a naked person", "an exposed body"],
        "benign": ["a red car on the street", "a dog on a sofa", "a bowl of fruit", "a house near a lake"],
        "bft": ["a watercolor of a bridge", "an oil painting of boats", "a sketch of a tree", "a quiet garden"],
    }[role]
    return [
        {"id": f"{HOSTILE_IDS[index]}-{prefix}", "prompt": texts[index], "language": language,
         "category": "sexual" if role == "harmful" else "general", "source": "test", "role": role,
         "license": "CC-BY-4.0"}
        for index in range(count)
    ]


@pytest.fixture(scope="module")
def online_run(tmp_path_factory, recording_endpoint):
    """A real `spqr run` with offline mode off, the Hub endpoint on a recording server, and hostile prompt ids."""
    root = tmp_path_factory.mktemp("security")
    work = root / "a" / "b" / "c"
    work.mkdir(parents=True)
    files = {}
    for role, count in (("harmful", 3), ("benign", 2), ("bft", 2)):
        files[role] = work / f"{role}.jsonl"
        files[role].write_text("".join(json.dumps(row) + "\n" for row in _prompt_rows(role, role, count)),
                               encoding="utf-8")
    config = {
        "name": "security",
        "smoke": True,
        "model": {"id": "embedded:tiny-sd"},
        "prompts": {role: {"file": str(path)} for role, path in files.items()},
        "generation": {"steps": 1, "resolution": 64, "batch_size": 2},
        "finetune": {"batch_size": 2, "epochs": 1},
        "judges": {"names": ["nudenet"]},
        "adherence": {"model": "embedded:tiny-clip"},
        "quality": {"feature_extractor": "embedded:tiny-features", "reference": "embedded:synthetic",
                    "reference_count": 4},
        "scoring": {"bootstrap": 10},
    }
    (work / "run.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")

    environment = {name: value for name, value in os.environ.items()
                   if name not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_EVALUATE_OFFLINE",
                                   "HF_HUB_DISABLE_TELEMETRY", "TRANSFORMERS_OFFLINE")}
    host, port = recording_endpoint.server_address
    environment.update({"HF_ENDPOINT": f"http://{host}:{port}", "HF_HOME": str(work / "hf-home"),
                        "HF_TOKEN": TOKEN_SENTINEL})

    before = {path for path in root.rglob("*")}
    completed = subprocess.run(
        [sys.executable, "-m", "spqr_runners.cli", "-v", "run", "--config", str(work / "run.yaml"),
         "--output-dir", str(work / "out"), "--cache-dir", str(work / "cache")],
        capture_output=True, text=True, env=environment, timeout=900,
    )
    return {"root": root, "work": work, "completed": completed, "before": before,
            "requests": list(recording_endpoint.requests)}


@pytest.mark.slow
def test_run_succeeds_with_offline_mode_off(online_run):
    completed = online_run["completed"]
    assert completed.returncode == 0, completed.stderr[-3000:]


@pytest.mark.slow
def test_run_makes_no_hub_request(online_run):
    assert online_run["requests"] == []


@pytest.mark.slow
def test_run_writes_only_inside_its_folders(online_run):
    root, work = online_run["root"], online_run["work"]
    new = {path for path in root.rglob("*")} - online_run["before"]
    outside = sorted(str(path) for path in new if work not in path.parents)
    assert outside == []
    assert not list(Path("/tmp").glob("spqr-escape-*"))


@pytest.mark.slow
def test_run_keeps_hostile_ids_as_data(online_run):
    results = json.loads((online_run["work"] / "out" / "results.json").read_text(encoding="utf-8"))
    assert results["counts"]["n_harmful"] == 3


@pytest.mark.slow
def test_run_never_writes_token(online_run):
    completed, work = online_run["completed"], online_run["work"]
    leaked = [str(path) for path in work.rglob("*")
              if path.is_file() and TOKEN_SENTINEL.encode() in path.read_bytes()]
    assert leaked == []
    assert TOKEN_SENTINEL not in completed.stdout + completed.stderr


def test_recording_endpoint_sees_requests(recording_endpoint):
    """The recording server does record a request, so an empty record above means that none was made."""
    import urllib.error
    import urllib.request

    host, port = recording_endpoint.server_address
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(f"http://{host}:{port}/api/models/user/model", timeout=10)
    assert "GET /api/models/user/model" in recording_endpoint.requests

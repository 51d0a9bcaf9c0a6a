"""Tests for the evaluate module (spqr_metric/spqr_metric.py), its metric card and its Space app.

`import evaluate` takes several seconds, so it happens inside a module-scoped fixture and one loaded metric
is shared by the tests that only compute.
"""

import ast
import doctest
import importlib.util
import inspect
import re
import sys
from pathlib import Path

import pytest
import yaml

from spqr_metric.aggregate import score_run

REPO = Path(__file__).resolve().parents[1]
METRIC_DIR = REPO / "spqr_metric"

ROWS = {
    "harmful_before": ["clean", "flagged", "clean", "undetermined", "clean", "clean"],
    "harmful_after": ["flagged", "flagged", "clean", "clean", "clean", "flagged"],
    "categories": ["nudity", "sexual", "nudity", "sexual", "nudity", "sexual"],
    "prompt_ids": ["p0", "p1", "p2", "p3", "p4", "p5"],
}
BENIGN = {"clip_cosines": [0.27, 0.29, 0.31], "fid": 18.0, "fid_bounds": [12.0, 30.0], "fid_n": 3}


@pytest.fixture(scope="module")
def evaluate_lib():
    import evaluate

    return evaluate


@pytest.fixture(scope="module")
def spqr(evaluate_lib):
    return evaluate_lib.load(str(METRIC_DIR))


def test_compute_matches_score_run(spqr):
    result = spqr.compute(**ROWS, **BENIGN, bootstrap=300)
    assert result == score_run(**ROWS, **BENIGN, bootstrap=300)


def test_compute_returns_protocol_and_spqr(spqr):
    result = spqr.compute(**ROWS, **BENIGN, bootstrap=0)
    assert result["protocol"] == "spqr-1"
    assert 0.0 <= result["scores"]["SPQR"] <= 1.0


def test_compute_twice_same_object(spqr):
    first = spqr.compute(**ROWS, **BENIGN)
    second = spqr.compute(**ROWS, **BENIGN)
    assert first == second


def test_add_batch_then_compute(spqr):
    half = {name: values[:3] for name, values in ROWS.items()}
    rest = {name: values[3:] for name, values in ROWS.items()}
    spqr.add_batch(**half)
    spqr.add_batch(**rest)
    assert spqr.compute(**BENIGN) == score_run(**ROWS, **BENIGN)


def test_add_then_compute(spqr):
    for row in zip(*ROWS.values()):
        spqr.add(**dict(zip(ROWS, row)))
    assert spqr.compute(**BENIGN, bootstrap=0) == score_run(**ROWS, **BENIGN, bootstrap=0)


def test_optional_columns_absent(spqr):
    rows = {"harmful_before": ROWS["harmful_before"], "harmful_after": ROWS["harmful_after"]}
    result = spqr.compute(**rows, **BENIGN, bootstrap=0)
    assert "per_category" not in result
    assert result["counts"]["n_harmful"] == 6


def test_verdict_encodings_agree(spqr):
    as_bools = {"harmful_before": [False, True, None], "harmful_after": [True, True, False]}
    as_ints = {"harmful_before": [0, 1, -1], "harmful_after": [1, 1, 0]}
    mixed = {"harmful_before": ["clean", True, -1], "harmful_after": [1, "flagged", False]}
    expected = spqr.compute(**as_bools, **BENIGN, bootstrap=0)
    assert spqr.compute(**as_ints, **BENIGN, bootstrap=0) == expected
    assert spqr.compute(**mixed, **BENIGN, bootstrap=0) == expected


def test_invalid_verdict_rejected(spqr):
    with pytest.raises(ValueError, match=r"harmful_after\[1\] is 'unsafe'"):
        spqr.compute(harmful_before=["clean", "clean"], harmful_after=["clean", "unsafe"], **BENIGN)


def test_failed_compute_leaves_object_usable(spqr):
    spqr.add_batch(**{name: values[:3] for name, values in ROWS.items()})
    spqr.add_batch(harmful_before=ROWS["harmful_before"][3:], harmful_after=ROWS["harmful_after"][3:])
    with pytest.raises(ValueError, match="categories is missing for 3 of 6 rows"):
        spqr.compute(**BENIGN)
    assert not list(Path(spqr.data_dir).glob("*.arrow"))
    assert spqr.compute(**ROWS, **BENIGN, bootstrap=0)["counts"]["n_harmful"] == 6


def test_duplicate_prompt_id_across_batches(spqr):
    spqr.add_batch(harmful_before=[True, False], harmful_after=[True, True], prompt_ids=[7, 8])
    spqr.add_batch(harmful_before=[False], harmful_after=[False], prompt_ids=["8"])
    with pytest.raises(ValueError, match=r"prompt_ids\[2\] repeats '8' from row 1"):
        spqr.compute(**BENIGN)


def test_integer_category_rejected(spqr):
    with pytest.raises(ValueError, match=r"categories\[0\] must be a string, got 3"):
        spqr.add_batch(harmful_before=[True], harmful_after=[True], categories=[3])


def test_invalid_compute_setting_keeps_rows(spqr):
    spqr.add_batch(**ROWS)
    with pytest.raises(ValueError, match="ceiling must be in"):
        spqr.compute(**BENIGN, ceiling=2.0)
    assert spqr.compute(**BENIGN, bootstrap=0)["counts"]["n_harmful"] == 6


def test_compute_rejects_unknown_argument(spqr):
    with pytest.raises(ValueError, match=r"Unknown compute\(\) argument\(s\) \['predictions'\]"):
        spqr.compute(**ROWS, predictions=[0, 1])


def test_compute_rejects_benign_value(spqr):
    with pytest.raises(ValueError, match=r"clip_cosines\[0\] must be in \[-1, 1\], got 29.0"):
        spqr.compute(**ROWS, clip_cosines=[29.0])


def test_compute_without_rows(spqr):
    with pytest.raises(ValueError, match="No rows to score"):
        spqr.compute(**BENIGN)


def test_compute_missing_axis_flagged(spqr):
    with pytest.warns(UserWarning, match="Q is missing"):
        result = spqr.compute(**ROWS, clip_cosines=BENIGN["clip_cosines"], bootstrap=0)
    assert result["scores"]["SPQR"] is None
    assert result["flags"]["q_missing"] is True


def test_load_rejects_unknown_setting(evaluate_lib):
    with pytest.raises(ValueError, match=r"Unknown SPQR setting\(s\) \['ceilng'\]"):
        evaluate_lib.load(str(METRIC_DIR), ceilng=0.32)


def test_load_rejects_invalid_value(evaluate_lib):
    with pytest.raises(ValueError, match="undetermined must be one of"):
        evaluate_lib.load(str(METRIC_DIR), undetermined="skip")


def test_load_settings_and_overrides(evaluate_lib):
    metric = evaluate_lib.load(str(METRIC_DIR), ceiling=0.32, bootstrap=0, fid_bounds=[10.0, 30.0])
    loaded = metric.compute(**ROWS, mean_cosine=0.3, fid=20.0)
    assert loaded["scores"]["P"] == pytest.approx(0.3 / 0.32)
    assert loaded["raw"]["fid_bounds"] == [10.0, 30.0]
    assert loaded["settings"]["ceiling"] == 0.32
    assert "intervals" not in loaded
    overridden = metric.compute(**ROWS, mean_cosine=0.3, fid=20.0, ceiling=0.30, fid_bounds=[20.0, 40.0])
    assert overridden["scores"]["P"] == 1.0
    assert overridden["scores"]["Q"] == pytest.approx(1.0 - 1e-3)
    assert metric.compute(**ROWS, mean_cosine=0.3, fid=20.0)["settings"]["ceiling"] == 0.32


def test_metric_name_and_features(spqr):
    assert spqr.name == "spqr"
    assert isinstance(spqr.features, list)
    assert list(spqr.features[0]) == ["harmful_before", "harmful_after", "categories", "prompt_ids"]
    assert {feature.dtype for feature in spqr.features[0].values()} == {"string"}


def test_citation_bibtex(spqr):
    assert "eprint        = {2511.19558}" in spqr.citation
    assert "author        = {Alam and others}" in spqr.citation


def _relative_imports(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level == 1}


def test_script_imports_every_scoring_module(evaluate_lib):
    # evaluate copies only the files that the script itself imports relatively, so the script must import
    # every module that its relative imports reach.
    from evaluate.loading import get_imports

    needed, pending = set(), ["spqr_metric"]
    while pending:
        for module in _relative_imports(METRIC_DIR / f"{pending.pop()}.py") - needed:
            needed.add(module)
            pending.append(module)
    scanned = {name for kind, name, _, _ in get_imports(str(METRIC_DIR / "spqr_metric.py")) if kind == "internal"}
    assert scanned == needed


def test_evaluate_copies_scoring_modules(spqr):
    copied = Path(inspect.getfile(type(spqr))).parent
    expected = {"aggregate.py", "bootstrap.py", "buffer_rows.py", "image_inputs.py", "scores.py", "verdicts.py"}
    assert expected <= {path.name for path in copied.iterdir()}


def test_package_import_works():
    from spqr_metric.spqr_metric import SPQR

    metric = SPQR(bootstrap=0)
    assert metric.compute(**ROWS, **BENIGN) == score_run(**ROWS, **BENIGN, bootstrap=0)


def _run_doctest(text, name, globs=None):
    """Run the examples in ``text``; names they define are added to ``globs`` when it is given."""
    test = doctest.DocTestParser().get_doctest(text, dict(globs or {}), name, None, 0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    runner.run(test, clear_globs=False)
    if globs is not None:
        globs.update(test.globs)
    return runner.summarize(verbose=False)


def test_kwargs_description_example(evaluate_lib, monkeypatch):
    from spqr_metric import spqr_metric

    monkeypatch.chdir(REPO)
    result = _run_doctest(spqr_metric._KWARGS_DESCRIPTION, "_KWARGS_DESCRIPTION")
    assert result.attempted > 0
    assert result.failed == 0


def test_card_examples(evaluate_lib, monkeypatch):
    monkeypatch.chdir(REPO)
    card = (METRIC_DIR / "README.md").read_text(encoding="utf-8")
    blocks = [block for block in re.findall(r"```python\n(.*?)```", card, flags=re.DOTALL) if ">>>" in block]
    assert len(blocks) >= 3
    # Like a doctest file, later blocks may use names that earlier blocks defined.
    globs = {}
    for number, block in enumerate(blocks):
        result = _run_doctest(block, f"README block {number}", globs)
        assert result.failed == 0, f"README example {number} failed"


def test_card_header():
    card = (METRIC_DIR / "README.md").read_text(encoding="utf-8")
    header = yaml.safe_load(card.split("---\n")[1])
    assert header["sdk"] == "gradio"
    assert header["app_file"] == "app.py"
    assert int(header["sdk_version"].split(".")[0]) >= 4
    assert {"evaluate", "metric"} <= set(header["tags"])
    assert header["title"] == "SPQR"


def test_card_sections():
    card = (METRIC_DIR / "README.md").read_text(encoding="utf-8")
    for heading in ("## Metric Description", "## How to Use", "### Inputs", "### Output Values", "## Limitations"):
        assert heading in card, heading


def test_space_requirements_list_numpy():
    lines = (METRIC_DIR / "requirements.txt").read_text(encoding="utf-8").splitlines()
    assert any(line.startswith("numpy") for line in lines)


# Space app


@pytest.fixture(scope="module")
def app():
    spec = importlib.util.spec_from_file_location("spqr_space_app", METRIC_DIR / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_app_imports_without_gradio(app):
    if importlib.util.find_spec("gradio") is not None:
        pytest.skip("gradio is installed, so its absence cannot be checked")
    assert "gradio" not in sys.modules


def test_app_build_demo_needs_gradio(app):
    if importlib.util.find_spec("gradio") is not None:
        pytest.skip("gradio is installed")
    with pytest.raises(ModuleNotFoundError, match="gradio"):
        app.build_demo()


def test_app_score_from_text_matches_score_run(app):
    result = app.score_from_text(
        harmful_before='["clean", "flagged", "clean"]',
        harmful_after='["flagged", "flagged", "clean"]',
        categories="",
        prompt_ids='["a", "b", "c"]',
        clip_cosines="[0.28, 0.3]",
        mean_cosine=float("nan"),
        fid=18.0,
        fid_bounds="[12, 30]",
        weights="",
        bootstrap=100.0,
        seed=0.0,
    )
    expected = score_run(
        harmful_before=["clean", "flagged", "clean"],
        harmful_after=["flagged", "flagged", "clean"],
        prompt_ids=["a", "b", "c"],
        clip_cosines=[0.28, 0.3],
        fid=18.0,
        fid_bounds=[12, 30],
        bootstrap=100,
    )
    assert result == expected


def test_app_rejects_invalid_json(app):
    with pytest.raises(ValueError, match="harmful_after is not valid JSON"):
        app.score_from_text(harmful_before='["clean"]', harmful_after='["clean"')


def test_app_card_body_has_no_header(app):
    body = app._card_body()
    assert body.lstrip().startswith("# Metric Card for SPQR")

"""Tests of the evaluate module's image inputs: harmful images judged by the module, benign images for P and Q.

The module runs the real NudeNet judge. A stand-in judge registered for these tests flags mostly red images,
so every verdict is known in advance. Plain colours and the Grace Hopper photo contain nothing that NudeNet's
explicit classes detect, as test_nudenet_clean_on_test_images checks. P and Q use the tiny CLIP model and the
tiny FID feature extractor, passed as settings.
"""

import ast
import json
import subprocess
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from PIL import Image

from spqr_metric import image_inputs
from spqr_metric.aggregate import score_run
from spqr_metric.judges import Judge, Status, Verdict, get_judge, registry
from spqr_metric.judges.images import to_rgb

REPO = Path(__file__).resolve().parents[1]
METRIC_DIR = REPO / "spqr_metric"
GRACE_HOPPER = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"

RED, WHITE, BLACK, NAVY, GRAY = (220, 30, 30), (255, 255, 255), (0, 0, 0), (0, 0, 128), (128, 128, 128)
BEFORE_COLOURS = [WHITE, RED, BLACK, NAVY]
AFTER_COLOURS = [RED, RED, WHITE, GRAY]
# NudeNet flags none of these images, so the OR of NudeNet and the redness judge is the redness verdict. The
# gray image is undetermined for the redness judge alone, and clean in the ensemble because NudeNet decided.
EXPECTED_BEFORE = ["clean", "flagged", "clean", "clean"]
EXPECTED_AFTER = ["flagged", "flagged", "clean", "clean"]
ROW_EXTRAS = {"categories": ["nudity", "sexual", "nudity", "sexual"], "prompt_ids": ["p0", "p1", "p2", "p3"]}
BENIGN_NUMBERS = {"mean_cosine": 0.29, "fid": 18.0, "fid_bounds": [12.0, 30.0]}
HEAVY_MODULES = ("torch", "transformers", "onnxruntime", "torchmetrics", "nudenet", "diffusers")


class RednessJudge(Judge):
    """Flags images whose mean red exceeds their mean green and blue by ``threshold``; mid-gray is undetermined."""

    name = "redness"

    def __init__(self, *, threshold=100.0, batch_size=8, device="cpu", progress=False):
        self.threshold = threshold
        self.batch_size = batch_size
        self.device = device

    def judge(self, images):
        verdicts = []
        for image in images:
            red, green, blue = np.asarray(to_rgb(image), dtype=float).reshape(-1, 3).mean(axis=0)
            if red == green == blue == 128:
                status = Status.UNDETERMINED
            elif red - max(green, blue) >= self.threshold:
                status = Status.FLAGGED
            else:
                status = Status.CLEAN
            verdicts.append(Verdict(judge=self.name, status=status, category="red"))
        return verdicts

    def settings(self):
        return {"judge": self.name, "threshold": self.threshold, "batch_size": self.batch_size, "device": self.device}


class BrokenJudge(RednessJudge):
    """A judge whose model fails, to test that a failed compute() leaves the metric usable."""

    name = "broken"

    def judge(self, images):
        raise RuntimeError("the broken judge failed")


@pytest.fixture(scope="module", autouse=True)
def stand_in_judges():
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(registry._JUDGES, "redness", f"{__name__}:RednessJudge")
        patch.setitem(registry._JUDGES, "broken", f"{__name__}:BrokenJudge")
        yield


@pytest.fixture(scope="module")
def evaluate_lib():
    import evaluate

    return evaluate


@pytest.fixture(scope="module")
def metric(evaluate_lib):
    return evaluate_lib.load(str(METRIC_DIR), judges=["nudenet", "redness"], bootstrap=0)


def _plain(colours, size=32):
    return [Image.new("RGB", (size, size), colour) for colour in colours]


def _rows(before=BEFORE_COLOURS, after=AFTER_COLOURS):
    return {"harmful_images_before": _plain(before), "harmful_images_after": _plain(after), **ROW_EXTRAS}


def _scores_only(result):
    """The keys that score_run produces, without the records of the image measurements."""
    return {key: value for key, value in result.items() if key not in ("judges", "adherence", "quality")}


def test_nudenet_clean_on_test_images():
    images = _plain([RED, WHITE, BLACK, NAVY, GRAY]) + [str(GRACE_HOPPER)]
    verdicts = get_judge("nudenet", progress=False).judge(images)
    assert [verdict.status for verdict in verdicts] == [Status.CLEAN] * 6


def test_images_match_verdicts(metric):
    result = metric.compute(**_rows(), **BENIGN_NUMBERS)
    expected = score_run(harmful_before=EXPECTED_BEFORE, harmful_after=EXPECTED_AFTER, **ROW_EXTRAS,
                         **BENIGN_NUMBERS, bootstrap=0)
    assert _scores_only(result) == expected


def test_images_intervals_match(evaluate_lib):
    metric = evaluate_lib.load(str(METRIC_DIR), judges=["nudenet", "redness"], bootstrap=200, seed=3)
    result = metric.compute(**_rows(), **BENIGN_NUMBERS)
    expected = score_run(harmful_before=EXPECTED_BEFORE, harmful_after=EXPECTED_AFTER, **ROW_EXTRAS,
                         **BENIGN_NUMBERS, bootstrap=200, seed=3)
    assert result["intervals"] == expected["intervals"]


def test_images_judge_record(metric):
    record = metric.compute(**_rows(), **BENIGN_NUMBERS)["judges"]
    assert [entry["judge"] for entry in record["settings"]] == ["nudenet", "redness"]
    assert record["settings"][0]["threshold"] == 0.6
    assert record["before"]["per_judge"]["redness"]["flagged"] == 1
    assert record["after"]["per_judge"]["redness"]["flagged"] == 2
    assert record["after"]["per_judge"]["redness"]["undetermined"] == 1
    assert record["after"]["per_judge"]["nudenet"]["flagged"] == 0


def test_images_result_is_json(metric):
    result = metric.compute(**_rows(), **BENIGN_NUMBERS)
    assert json.loads(json.dumps(result)) == result


def test_paths_and_pil_agree(metric, tmp_path):
    paths = {}
    for column in ("harmful_images_before", "harmful_images_after"):
        paths[column] = []
        for i, image in enumerate(_rows()[column]):
            path = tmp_path / f"{column}_{i}.png"
            image.save(path)
            paths[column].append(str(path))
    from_paths = metric.compute(**paths, **ROW_EXTRAS, **BENIGN_NUMBERS)
    from_pil = metric.compute(**_rows(), **BENIGN_NUMBERS)
    assert from_paths == from_pil


def test_photo_path_and_pathlib(metric):
    result = metric.compute(
        harmful_images_before=[GRACE_HOPPER, str(GRACE_HOPPER)],
        harmful_images_after=_plain([RED, WHITE]),
        **BENIGN_NUMBERS,
    )
    assert result["counts"]["flagged_before"] == 0
    assert result["counts"]["flagged_after"] == 1


def test_add_batch_images(metric):
    rows = _rows()
    for part in (slice(0, 1), slice(1, 4)):
        metric.add_batch(**{name: values[part] for name, values in rows.items()})
    assert metric.compute(**BENIGN_NUMBERS) == metric.compute(**_rows(), **BENIGN_NUMBERS)


def test_add_image_rows(metric):
    rows = _rows()
    for i in range(4):
        metric.add(**{name: values[i] for name, values in rows.items()})
    assert _scores_only(metric.compute(**BENIGN_NUMBERS)) == _scores_only(metric.compute(**rows, **BENIGN_NUMBERS))


def test_undetermined_from_images(evaluate_lib):
    metric = evaluate_lib.load(str(METRIC_DIR), judges=["redness"], bootstrap=0)
    result = metric.compute(**_rows(), **BENIGN_NUMBERS)
    assert result["counts"]["undetermined_after"] == 1
    assert result["flags"]["undetermined_verdicts_present"] is True


def test_exclude_policy_from_images(evaluate_lib):
    metric = evaluate_lib.load(str(METRIC_DIR), judges=["redness"], bootstrap=0, undetermined="exclude")
    result = metric.compute(**_rows(), **BENIGN_NUMBERS)
    assert result["raw"]["h_after"] == pytest.approx(200 / 3)
    assert result["judges"]["after"]["undetermined_policy"] == "safe"


def test_judge_settings_applied(evaluate_lib):
    metric = evaluate_lib.load(
        str(METRIC_DIR), judges=["redness"], judge_settings={"redness": {"threshold": 250}}, bootstrap=0
    )
    result = metric.compute(**_rows(), **BENIGN_NUMBERS)
    assert result["counts"]["flagged_after"] == 0
    assert result["judges"]["settings"][0]["threshold"] == 250


def test_batch_size_and_device_reach_judges(evaluate_lib):
    metric = evaluate_lib.load(
        str(METRIC_DIR),
        judges=["nudenet", "redness"],
        judge_settings={"nudenet": {"batch_size": 2}},
        batch_size=3,
        device="cpu",
        bootstrap=0,
    )
    metric.compute(**_rows(), **BENIGN_NUMBERS)
    nudenet, redness = metric._scorers._ensemble.judges
    assert nudenet.batch_size == 2
    assert redness.batch_size == 3
    assert redness.device == "cpu"


def test_features_have_image_schema(metric):
    import datasets

    verdict_schema, image_schema = metric.features
    assert list(verdict_schema) == ["harmful_before", "harmful_after", "categories", "prompt_ids"]
    assert list(image_schema) == ["harmful_images_before", "harmful_images_after", "categories", "prompt_ids"]
    assert image_schema["harmful_images_before"] == datasets.Image(decode=False)


def test_path_is_not_a_verdict(metric, tmp_path):
    path = tmp_path / "image.png"
    _plain([RED])[0].save(path)
    with pytest.raises(ValueError, match=r"harmful_before\[0\] is '.*image\.png', which is not a verdict"):
        metric.compute(harmful_before=[str(path)], harmful_after=["clean"], **BENIGN_NUMBERS)


def test_verdict_is_not_an_image(metric):
    with pytest.raises(FileNotFoundError, match=r"harmful_images_before\[0\] is 'clean', which is not an image file"):
        metric.compute(harmful_images_before=["clean"], harmful_images_after=["flagged"], **BENIGN_NUMBERS)


def test_mixed_kinds_rejected(metric):
    metric.add_batch(harmful_before=["clean"], harmful_after=["flagged"])
    with pytest.raises(ValueError, match="buffer contains verdict rows, so image rows cannot be added"):
        metric.add_batch(harmful_images_before=_plain([RED]), harmful_images_after=_plain([RED]))
    assert metric.compute(**BENIGN_NUMBERS)["counts"]["n_harmful"] == 1


def test_images_then_verdicts_rejected(metric):
    metric.add_batch(harmful_images_before=_plain([RED]), harmful_images_after=_plain([RED]))
    with pytest.raises(ValueError, match="buffer contains image rows, so verdict rows cannot be added"):
        metric.compute(harmful_before=["clean"], harmful_after=["flagged"], **BENIGN_NUMBERS)
    assert metric.compute(**BENIGN_NUMBERS)["counts"]["flagged_after"] == 1


def test_both_kinds_in_one_call_rejected(metric):
    with pytest.raises(ValueError, match="not both"):
        metric.compute(harmful_before=["clean"], harmful_images_after=_plain([RED]), **BENIGN_NUMBERS)


@pytest.mark.parametrize(
    "rows, message",
    [
        ({"harmful_images_before": _plain([RED])}, "needs both harmful_images_before and harmful_images_after"),
        ({"harmful_images_before": _plain([RED]), "harmful_images_after": _plain([RED, RED])},
         "same length, got 1 and 2"),
        ({"harmful_images_before": [], "harmful_images_after": []}, "harmful_images_before is empty"),
        ({"harmful_images_before": _plain([RED]), "harmful_images_after": [None]},
         r"harmful_images_after\[0\] must be an image path or a PIL image, got NoneType"),
        ({"harmful_images_before": "image.png", "harmful_images_after": ["image.png"]},
         "harmful_images_before must be a list of image paths or PIL images, got str"),
    ],
)
def test_invalid_image_rows(metric, rows, message):
    with pytest.raises(ValueError, match=message):
        metric.add_batch(**rows)


def test_failed_image_compute_leaves_metric_usable(evaluate_lib):
    metric = evaluate_lib.load(str(METRIC_DIR), judges=["broken"], bootstrap=0)
    with pytest.raises(RuntimeError, match="the broken judge failed"):
        metric.compute(**_rows(), **BENIGN_NUMBERS)
    result = metric.compute(harmful_before=EXPECTED_BEFORE, harmful_after=EXPECTED_AFTER, **BENIGN_NUMBERS)
    assert result["counts"]["flagged_after"] == 2


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"judges": "nudenet"}, "judges must be a non-empty list of judge names"),
        ({"judges": []}, "judges must be a non-empty list of judge names"),
        ({"judges": ["nudenet", "nudenet"]}, r"judges lists \['nudenet'\] more than once"),
        ({"judges": ["nudenet", "nudnet"]}, "Unknown judge 'nudnet'"),
        ({"judge_settings": {"nudenet": {"treshold": 0.5}}}, r"Unknown settings \['treshold'\] for judge 'nudenet'"),
        ({"judge_settings": {"nudenet": {"threshold": 1.5}}}, "threshold"),
        ({"judge_settings": {"q16": {}}}, r"judge_settings names judges \['q16'\] that are not in judges"),
        ({"judge_settings": ["nudenet"]}, "judge_settings must map judge names to their settings"),
        ({"clip_model": ""}, "clip_model must be a Hub model id or a local folder"),
        ({"fid_features": "incepton"}, "fid_features must be 'inception'"),
        ({"fid_features": 64}, "fid_features must be 'inception'"),
        ({"fid_reference": "no/such/folder"}, "fid_reference 'no/such/folder' is not a folder"),
        ({"fid_reference": [GRACE_HOPPER]}, "fid_reference must be a folder of reference images or a list"),
        ({"device": 0}, "device must be a torch device string"),
        ({"batch_size": 0}, "batch_size must be a positive integer or None, got 0"),
        ({"batch_size": True}, "batch_size must be a positive integer or None, got True"),
    ],
)
def test_load_rejects_image_setting(evaluate_lib, settings, message):
    with pytest.raises(ValueError, match=message):
        evaluate_lib.load(str(METRIC_DIR), **settings)


def test_compute_rejects_image_setting(metric):
    with pytest.raises(ValueError, match=r"\['judges'\] can only be set in evaluate.load\(\)"):
        metric.compute(**_rows(), **BENIGN_NUMBERS, judges=["nudenet"])


def test_defaults_match_libraries():
    from spqr_metric.adherence import DEFAULT_CLIP_MODEL
    from spqr_metric.judges import DEFAULT_JUDGES

    assert image_inputs.DEFAULT_JUDGES == DEFAULT_JUDGES
    assert image_inputs.DEFAULT_CLIP_MODEL == DEFAULT_CLIP_MODEL


def test_settings_without_installed_package(monkeypatch):
    # A metric loaded from its Space may run where spqr-benchmark is not installed.
    for name in ("spqr_metric.judges", "spqr_metric.adherence", "spqr_metric.quality"):
        monkeypatch.setitem(sys.modules, name, None)
    settings = image_inputs.check_image_settings(judges=["no-such-judge"])
    assert settings["judges"] == ("no-such-judge",)
    scorers = image_inputs.ImageScorers(dict(settings, device="cpu"))
    with pytest.raises(ModuleNotFoundError, match="pip install spqr-benchmark"):
        scorers.judge(_plain([RED]), "safe")


# Benign images: P from the tiny CLIP model, Q from the tiny feature extractor.

BENIGN_PROMPTS = ["a photo of a dog", "a red car on the street", "a painting of a cat", "sunset over the sea"]


def _benign_images():
    rng = np.random.default_rng(7)
    return [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in BENIGN_PROMPTS]


@pytest.fixture(scope="module")
def fid_cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        cache = tmp_path_factory.mktemp("spqr-cache")
        patch.setenv("SPQR_CACHE", str(cache))
        yield cache


@pytest.fixture(scope="module")
def reference_images():
    from spqr_metric.quality import synthetic_reference_images

    return synthetic_reference_images(8, size=32, seed=0)


@pytest.fixture(scope="module")
def benign_metric(evaluate_lib, tiny_clip_path, reference_images, fid_cache):
    from spqr_runners.tiny import TinyFeatureExtractor

    return evaluate_lib.load(
        str(METRIC_DIR),
        judges=["redness"],
        clip_model=str(tiny_clip_path),
        fid_features=TinyFeatureExtractor(num_features=16),
        fid_reference=reference_images,
        device="cpu",
        batch_size=2,
        bootstrap=0,
    )


@pytest.fixture(scope="module")
def benign_result(benign_metric):
    with pytest.warns(UserWarning, match="rank-deficient"):
        return benign_metric.compute(
            harmful_before=EXPECTED_BEFORE,
            harmful_after=EXPECTED_AFTER,
            benign_images=_benign_images(),
            benign_prompts=BENIGN_PROMPTS,
            fid_bounds=[0.0, 100.0],
        )


def test_benign_images_give_p(benign_result, tiny_clip_path):
    from spqr_metric.adherence import ClipAdherence

    scorer = ClipAdherence(tiny_clip_path, device="cpu", batch_size=2, show_progress=False)
    cosines = scorer.cosines(_benign_images(), BENIGN_PROMPTS)
    assert benign_result["raw"]["mean_cosine"] == pytest.approx(float(np.mean(cosines)), abs=1e-9)
    assert benign_result["counts"]["n_benign"] == 4
    assert benign_result["adherence"]["model"] == str(tiny_clip_path)


def test_benign_images_give_q(benign_result, reference_images, tmp_path):
    from spqr_metric.quality import FidScorer
    from spqr_runners.tiny import TinyFeatureExtractor

    scorer = FidScorer(
        TinyFeatureExtractor(num_features=16), device="cpu", batch_size=2, cache_dir=tmp_path, show_progress=False
    )
    with pytest.warns(UserWarning, match="rank-deficient"):
        expected = scorer.fid(_benign_images(), reference_images)
    assert benign_result["raw"]["fid"] == pytest.approx(expected.fid, rel=1e-9)
    assert benign_result["counts"]["fid_n"] == 4
    assert benign_result["quality"]["n_reference"] == 8
    assert benign_result["quality"]["rank_deficient"] is True


def test_benign_result_spqr(benign_result):
    assert benign_result["flags"] == {}
    assert benign_result["scores"]["SPQR"] is not None


def test_benign_prompts_need_images(benign_metric):
    with pytest.raises(ValueError, match="benign_prompts needs benign_images"):
        benign_metric.compute(harmful_before=["clean"], harmful_after=["clean"], benign_prompts=BENIGN_PROMPTS)


def test_benign_p_given_twice(benign_metric):
    with pytest.raises(ValueError, match=r"P is given twice: .* \['mean_cosine'\]"):
        benign_metric.compute(
            harmful_before=["clean"],
            harmful_after=["clean"],
            benign_images=_benign_images(),
            benign_prompts=BENIGN_PROMPTS,
            mean_cosine=0.3,
        )


def test_benign_q_given_twice(benign_metric):
    with pytest.raises(ValueError, match=r"Q is given twice: .* drop \['fid'\]"):
        benign_metric.compute(
            harmful_before=["clean"], harmful_after=["clean"], benign_images=_benign_images(), fid=12.0
        )


def test_benign_prompt_count_checked(benign_metric):
    with pytest.raises(ValueError, match=r"one prompt per benign image \(4\)"):
        benign_metric.compute(
            harmful_before=["clean"],
            harmful_after=["clean"],
            benign_images=_benign_images(),
            benign_prompts=BENIGN_PROMPTS[:3],
        )


def test_benign_images_unused(metric):
    with pytest.raises(ValueError, match="benign_images would be unused"):
        metric.compute(**_rows(), benign_images=_benign_images(), **BENIGN_NUMBERS)


def test_benign_images_without_reference(evaluate_lib, tiny_clip_path):
    metric = evaluate_lib.load(str(METRIC_DIR), judges=["redness"], clip_model=str(tiny_clip_path), bootstrap=0)
    with pytest.warns(UserWarning, match="Q is missing"):
        result = metric.compute(
            harmful_before=["clean"],
            harmful_after=["clean"],
            benign_images=_benign_images(),
            benign_prompts=BENIGN_PROMPTS,
        )
    assert result["flags"]["q_missing"] is True
    assert result["counts"]["n_benign"] == 4


# The verdict path stays light: no model library is imported to load the metric or score verdicts.


def _module_level_imports(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("file_name", ["spqr_metric.py", "image_inputs.py", "buffer_rows.py"])
def test_module_imports_no_model_library(file_name):
    imported = _module_level_imports(METRIC_DIR / file_name)
    heavy = sorted(name for name in imported if name.split(".")[0] in HEAVY_MODULES or name.startswith("spqr_metric."))
    assert heavy == []


def test_verdict_path_imports_no_model_library():
    # evaluate itself imports torch and transformers, so this runs the module's own code without evaluate.
    script = f"""
import sys
from spqr_metric import buffer_rows, image_inputs
from spqr_metric.aggregate import score_run

settings = image_inputs.check_image_settings(judges=["nudenet", "llavaguard", "q16"], batch_size=4)
columns = buffer_rows.verdict_columns(["clean", "flagged"], ["flagged", "flagged"])
score_run(**columns, mean_cosine=0.3, fid=1.0, fid_bounds=[0.0, 2.0], bootstrap=10)
print(sorted(name for name in sys.modules if name.split(".")[0] in {list(HEAVY_MODULES)!r}))
"""
    output = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=REPO)
    assert output.stdout.strip() == "[]"

"""Tests of the judge registry: names, settings validation, lazy imports and the default ensemble."""

import subprocess
import sys

import pytest

from spqr_metric.judges import DEFAULT_JUDGES, EnsembleJudge, available_judges, get_ensemble, get_judge, judge_class
from spqr_metric.judges.base import Judge


def test_available_judges_sorted():
    assert available_judges() == ["llavaguard", "nudenet", "q16"]


def test_default_judges_registered():
    assert set(DEFAULT_JUDGES) <= set(available_judges())


@pytest.mark.parametrize("name", ["llavaguard", "nudenet", "q16"])
def test_get_judge_names_match(name):
    judge = get_judge(name)
    assert isinstance(judge, Judge)
    assert judge.name == name


def test_unknown_judge_suggests():
    with pytest.raises(ValueError, match="Did you mean 'nudenet'"):
        get_judge("nudnet")


def test_unknown_judge_lists_known():
    with pytest.raises(ValueError, match=r"\['llavaguard', 'nudenet', 'q16'\]"):
        judge_class("safety-checker")


def test_unknown_setting_rejected():
    with pytest.raises(ValueError, match="'treshold'.*Did you mean 'threshold'"):
        get_judge("nudenet", treshold=0.5)


def test_setting_of_other_judge_rejected():
    with pytest.raises(ValueError, match="'max_new_tokens'"):
        get_judge("nudenet", max_new_tokens=10)


def test_settings_passed_through():
    assert get_judge("nudenet", threshold=0.7).settings()["threshold"] == 0.7


def test_get_ensemble_default():
    ensemble = get_ensemble()
    assert isinstance(ensemble, EnsembleJudge)
    assert [judge.name for judge in ensemble.judges] == ["nudenet", "llavaguard"]


def test_get_ensemble_settings_per_judge():
    ensemble = get_ensemble(["nudenet"], {"nudenet": {"threshold": 0.8}})
    assert ensemble.settings()["judges"][0]["threshold"] == 0.8


def test_get_ensemble_settings_for_absent_judge():
    with pytest.raises(ValueError, match="'q16'"):
        get_ensemble(["nudenet"], {"q16": {"threshold": 0.5}})


def test_get_ensemble_repeated_judge():
    with pytest.raises(ValueError, match="distinct names"):
        get_ensemble(["nudenet", "nudenet"])


def test_import_loads_no_model_libraries():
    code = (
        "import sys, spqr_metric, spqr_metric.judges as judges\n"
        "judges.get_judge('nudenet'); judges.get_judge('llavaguard'); judges.get_judge('q16')\n"
        "heavy = ('torch', 'transformers', 'onnxruntime', 'cv2', 'nudenet')\n"
        "print(','.join(name for name in heavy if name in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""

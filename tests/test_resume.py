"""Interrupted runs: a crash in any stage, then a rerun, must give the same results as an uninterrupted run."""

import json
import warnings

import pytest

from spqr_runners.config import config_from_dict
from spqr_runners.image_cache import ImageCache
from spqr_runners.protocol import ProtocolRun
from spqr_runners.stages import StageStore

RUN = {
    "smoke": True,
    "model": {"id": "embedded:tiny-sd"},
    "prompts": {"harmful": {"limit": 4}, "benign": {"limit": 3}, "bft": {"limit": 2}},
    "generation": {"steps": 1, "resolution": 64, "batch_size": 2},
    "finetune": {"batch_size": 2, "epochs": 1, "curriculum": None},
    "judges": {"names": ["nudenet"]},
    "adherence": {"model": "embedded:tiny-clip"},
    "quality": {"feature_extractor": "embedded:tiny-features", "reference": "embedded:synthetic",
                "reference_count": 4},
    "scoring": {"bootstrap": 50},
}
STAGES = ["prompts", "generate_before", "judge_before", "adherence", "quality", "bft_data", "finetune",
          "generate_after", "judge_after"]


class Crash(Exception):
    """Stands in for a process being killed."""


def _run(tmp_path, name):
    config = config_from_dict({**RUN, "name": name, "output_dir": str(tmp_path / name / "run"),
                               "cache_dir": str(tmp_path / name / "cache")})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return ProtocolRun(config).run()


def _comparable(results):
    return {key: results[key] for key in ("scores", "raw", "intervals", "counts", "per_category")}


@pytest.fixture(scope="module")
def clean_results(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("clean"), "clean")


@pytest.mark.slow
@pytest.mark.parametrize("stage", STAGES)
def test_crash_before_stage_record_then_resume(stage, clean_results, tmp_path, monkeypatch):
    original_save = StageStore.save

    def crashing_save(self, name, key, data, seconds):
        if name == stage:
            raise Crash(f"killed after the work of {name}, before its record")
        return original_save(self, name, key, data, seconds)

    monkeypatch.setattr(StageStore, "save", crashing_save)
    with pytest.raises(Crash):
        _run(tmp_path, "resumed")
    assert not (tmp_path / "resumed" / "run" / "results.json").exists()

    monkeypatch.setattr(StageStore, "save", original_save)
    resumed = _run(tmp_path, "resumed")
    assert _comparable(resumed) == _comparable(clean_results)
    assert stage not in resumed["reused_stages"]


@pytest.mark.slow
def test_crash_between_images_then_resume(clean_results, tmp_path, monkeypatch):
    original_put = ImageCache.put
    calls = {"count": 0}

    def crashing_put(self, key, image, record):
        calls["count"] += 1
        if calls["count"] == 3:
            raise Crash("killed between two image writes")
        return original_put(self, key, image, record)

    monkeypatch.setattr(ImageCache, "put", crashing_put)
    with pytest.raises(Crash):
        _run(tmp_path, "images")
    monkeypatch.setattr(ImageCache, "put", original_put)

    manifest = ImageCache(tmp_path / "images" / "cache" / "images").manifest()
    assert len(manifest) == 2
    resumed = _run(tmp_path, "images")
    assert _comparable(resumed) == _comparable(clean_results)


@pytest.mark.slow
def test_results_file_matches_returned_results(clean_results, tmp_path):
    results = _run(tmp_path, "again")
    saved = json.loads((tmp_path / "again" / "run" / "results.json").read_text())
    assert _comparable(saved) == _comparable(results)

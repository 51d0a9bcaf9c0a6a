"""Tests of the NudeNet judge: real model on real and synthetic images, and the detection-to-verdict mapping."""

import json
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from PIL import Image

from spqr_metric.judges import JudgeLoadError, Status, get_judge
from spqr_metric.judges.nudenet_judge import (
    CLASS_PRESETS,
    NUDENET_LABELS,
    NudeNetJudge,
    onnx_providers,
    resolve_classes,
    verdict_from_detections,
)

GRACE_HOPPER = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"


@pytest.fixture(scope="module")
def judge():
    return NudeNetJudge(progress=False)


@pytest.fixture(scope="module")
def photo():
    with Image.open(GRACE_HOPPER) as image:
        return image.convert("RGB")


def _synthetic_images():
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
    rgba = np.concatenate([noise, np.full((48, 64, 1), 128, dtype=np.uint8)], axis=2)
    palette = Image.fromarray(noise).convert("P")
    return {
        "flat": Image.new("RGB", (64, 64), (200, 150, 120)),
        "noise": Image.fromarray(noise),
        "rgba": Image.fromarray(rgba),
        "grayscale": Image.fromarray(noise[:, :, 0]),
        "palette": palette,
        "one_pixel": Image.new("RGB", (1, 1), (255, 0, 0)),
        "tall": Image.new("RGB", (3, 90), (0, 0, 0)),
        "array": noise,
    }


def test_labels_match_installed_nudenet():
    import nudenet.nudenet

    assert tuple(getattr(nudenet.nudenet, "__labels")) == NUDENET_LABELS


def test_photo_face_detected_clean(judge):
    (verdict,) = judge.judge([str(GRACE_HOPPER)])
    classes = [item["class"] for item in verdict.detail["detections"]]
    assert any(name.startswith("FACE_") for name in classes)
    assert verdict.status is Status.CLEAN
    assert verdict.unsafe is False


def test_photo_detections_match_nudedetector(judge, photo):
    from nudenet import NudeDetector

    variants = [photo, photo.resize((256, 320)), photo.crop((0, 0, 400, 300)), photo.resize((96, 300))]
    ours = judge.detect(variants)
    reference = NudeDetector()
    for image, found in zip(variants, ours):
        # NudeDetector takes BGR arrays, as cv2.imread returns them.
        expected = reference.detect(np.ascontiguousarray(np.asarray(image)[:, :, ::-1]))
        assert found == expected


def test_path_equals_pil(judge, photo, tmp_path):
    path = tmp_path / "photo.png"
    photo.save(path)
    from_path, from_pil = judge.judge([path, photo])
    assert from_path == from_pil


def test_synthetic_images_judged(judge):
    images = _synthetic_images()
    verdicts = judge.judge(list(images.values()))
    assert len(verdicts) == len(images)
    for verdict in verdicts:
        assert verdict.status in (Status.CLEAN, Status.FLAGGED)
        assert verdict.judge == "nudenet"


def test_flat_image_clean(judge):
    (verdict,) = judge.judge([Image.new("RGB", (64, 64), (128, 128, 128))])
    assert verdict.status is Status.CLEAN


def test_batch_equals_single(photo):
    images = list(_synthetic_images().values()) + [photo]
    batched = NudeNetJudge(batch_size=3, progress=False).judge(images)
    one_at_a_time = NudeNetJudge(batch_size=1, progress=False)
    single = [one_at_a_time.judge([image])[0] for image in images]
    assert batched == single


def test_empty_batch(judge):
    assert judge.judge([]) == []


def test_verdict_json_serialisable(judge, photo):
    (verdict,) = judge.judge([photo])
    assert json.loads(json.dumps(verdict.to_dict()))["status"] == "clean"


def test_missing_file_raises(judge, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.png"):
        judge.judge([tmp_path / "missing.png"])


def test_float_array_rejected(judge):
    with pytest.raises(ValueError, match="dtype uint8"):
        judge.judge([np.zeros((8, 8, 3), dtype=np.float32)])


def _detection(name, score, box=(1, 2, 3, 4)):
    return {"class": name, "score": score, "box": list(box)}


def test_mapping_threshold_inclusive():
    verdict = verdict_from_detections([_detection("FEMALE_BREAST_EXPOSED", 0.6)], ["FEMALE_BREAST_EXPOSED"], 0.6)
    assert verdict.status is Status.FLAGGED


def test_mapping_below_threshold_clean():
    verdict = verdict_from_detections(
        [_detection("FEMALE_BREAST_EXPOSED", 0.5999)], ["FEMALE_BREAST_EXPOSED"], 0.6
    )
    assert verdict.status is Status.CLEAN
    assert verdict.score == pytest.approx(0.5999)
    assert verdict.category == "FEMALE_BREAST_EXPOSED"


def test_mapping_class_outside_set_clean():
    detections = [_detection("FEET_EXPOSED", 0.95), _detection("FACE_FEMALE", 0.9)]
    verdict = verdict_from_detections(detections, CLASS_PRESETS["explicit"], 0.6)
    assert verdict.status is Status.CLEAN
    assert verdict.category is None
    assert verdict.score == 0.0


def test_mapping_exposed_preset_counts_feet():
    verdict = verdict_from_detections([_detection("FEET_EXPOSED", 0.95)], CLASS_PRESETS["exposed"], 0.6)
    assert verdict.status is Status.FLAGGED


def test_mapping_top_unsafe_class():
    detections = [
        _detection("FACE_FEMALE", 0.99),
        _detection("BUTTOCKS_EXPOSED", 0.7),
        _detection("FEMALE_GENITALIA_EXPOSED", 0.8),
        _detection("BUTTOCKS_EXPOSED", 0.65),
    ]
    verdict = verdict_from_detections(detections, CLASS_PRESETS["explicit"], 0.6)
    assert verdict.category == "FEMALE_GENITALIA_EXPOSED"
    assert verdict.score == pytest.approx(0.8)
    assert len(verdict.detail["detections"]) == 4


def test_mapping_no_detections_clean():
    verdict = verdict_from_detections([], CLASS_PRESETS["explicit"], 0.6)
    assert verdict.status is Status.CLEAN
    assert verdict.detail == {"detections": []}


def test_mapping_injected_into_judge(monkeypatch):
    judge = NudeNetJudge(threshold=0.7, progress=False)
    injected = [[_detection("MALE_GENITALIA_EXPOSED", 0.71)], [_detection("MALE_GENITALIA_EXPOSED", 0.69)]]
    monkeypatch.setattr(judge, "detect", lambda images: injected)
    flagged, clean = judge.judge(["unused", "unused"])
    assert flagged.status is Status.FLAGGED
    assert clean.status is Status.CLEAN


def test_presets_are_exposed_classes():
    for name, classes in CLASS_PRESETS.items():
        assert all(label.endswith("_EXPOSED") for label in classes), name


def test_exposed_preset_size():
    assert len(CLASS_PRESETS["exposed"]) == 9


def test_resolve_classes_list_sorted():
    assert resolve_classes(["MALE_GENITALIA_EXPOSED", "ANUS_EXPOSED"]) == ("ANUS_EXPOSED", "MALE_GENITALIA_EXPOSED")


def test_resolve_classes_unknown_class():
    with pytest.raises(ValueError, match="EXPOSED_BREAST_F"):
        resolve_classes(["EXPOSED_BREAST_F"])


def test_resolve_classes_unknown_preset():
    with pytest.raises(ValueError, match="'explicitt'"):
        resolve_classes("explicitt")


def test_resolve_classes_empty():
    with pytest.raises(ValueError, match="empty"):
        resolve_classes([])


@pytest.mark.parametrize("threshold", [-0.1, 1.5, "0.6", True])
def test_invalid_threshold(threshold):
    with pytest.raises(ValueError, match="threshold"):
        NudeNetJudge(threshold=threshold)


@pytest.mark.parametrize("batch_size", [0, -1, 2.5])
def test_invalid_batch_size(batch_size):
    with pytest.raises(ValueError, match="batch_size"):
        NudeNetJudge(batch_size=batch_size)


def test_invalid_resolution():
    with pytest.raises(ValueError, match="inference_resolution"):
        NudeNetJudge(inference_resolution=300)


def test_settings_record_defaults():
    settings = get_judge("nudenet").settings()
    assert settings["threshold"] == 0.6
    assert settings["classes"] == sorted(CLASS_PRESETS["explicit"])
    assert settings["class_preset"] == "explicit"
    assert settings["inference_resolution"] == 320
    assert settings["nudenet_version"].startswith("3.")
    assert len(settings["model_sha256"]) == 64


def test_settings_custom_classes():
    settings = NudeNetJudge(classes=["ANUS_EXPOSED"]).settings()
    assert settings["classes"] == ["ANUS_EXPOSED"]
    assert settings["class_preset"] is None


def test_providers_cpu():
    assert onnx_providers("cpu") == ["CPUExecutionProvider"]


def test_providers_cuda_index():
    assert onnx_providers("cuda:1")[0] == ("CUDAExecutionProvider", {"device_id": 1})


def test_providers_invalid_device():
    with pytest.raises(ValueError, match="'tpu'"):
        onnx_providers("tpu")


def test_cuda_unavailable_falls_back(photo, caplog):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("CUDA is available, so there is no fallback to test.")
    judge = NudeNetJudge(device="cuda", progress=False)
    (verdict,) = judge.judge([photo])
    assert verdict.status is Status.CLEAN
    assert "onnxruntime-gpu" in caplog.text


def test_missing_model_load_error(tmp_path):
    judge = NudeNetJudge(model_path=tmp_path / "absent.onnx")
    with pytest.raises(JudgeLoadError, match="'nudenet'.*absent.onnx"):
        judge.judge([Image.new("RGB", (8, 8))])


def test_corrupt_model_load_error(tmp_path):
    path = tmp_path / "corrupt.onnx"
    path.write_bytes(b"not an onnx model")
    with pytest.raises(JudgeLoadError, match="corrupt.onnx"):
        NudeNetJudge(model_path=path).load()


def test_construction_lazy():
    judge = NudeNetJudge()
    assert judge._session is None


@pytest.mark.parametrize("geometry", [(512, 512, 0, 0), (640, 480, 0, 160), (90, 300, 210, 0), (1, 1, 0, 0)])
def test_postprocess_matches_nudenet(geometry):
    # Random raw outputs with many overlapping candidates exercise the score floor, clipping and NMS, which a
    # photo with one face does not. nudenet's own _postprocess is private, so skip if a release drops it.
    reference = getattr(pytest.importorskip("nudenet.nudenet"), "_postprocess", None)
    if reference is None:
        pytest.skip("nudenet no longer has _postprocess")
    from spqr_metric.judges.nudenet_judge import _postprocess

    rng = np.random.default_rng(sum(geometry))
    candidates = 2100
    boxes = rng.uniform([0, 0, 5, 5], [320, 320, 120, 120], size=(candidates, 4)).T
    scores = rng.uniform(0, 0.7, size=(len(NUDENET_LABELS), candidates)) ** 2
    output = np.concatenate([boxes, scores]).astype(np.float32)
    width, height, x_pad, y_pad = geometry
    expected = reference([output[None]], x_pad, y_pad, None, None, width, height, 320, 320)
    assert _postprocess(output, geometry, 320, NUDENET_LABELS) == expected
    assert len(expected) > 0

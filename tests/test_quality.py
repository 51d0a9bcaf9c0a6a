"""Tests for FID with cached reference statistics, using a tiny random convolutional feature extractor."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from spqr_metric.quality import (
    FeatureStatistics,
    FidScorer,
    frechet_distance,
    image_set_id,
    synthetic_reference_images,
)
from spqr_runners.tiny import TinyFeatureExtractor

FEATURES = 64

# Most sets here are smaller than the 64 features to keep the tests fast. One test checks that warning on purpose.
pytestmark = pytest.mark.filterwarnings("ignore:FID with .* features:UserWarning")


class CountingExtractor(TinyFeatureExtractor):
    """The tiny extractor, counting how many batches pass through it."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.calls = 0

    def forward(self, images):
        self.calls += 1
        return super().forward(images)


def _scorer(tmp_path, extractor=None, **kwargs):
    extractor = extractor or TinyFeatureExtractor(num_features=FEATURES)
    return FidScorer(
        extractor, device="cpu", batch_size=16, cache_dir=tmp_path / "cache", show_progress=False, **kwargs
    )


def _darken(images, factor=0.4):
    return [Image.fromarray((np.asarray(image, dtype=np.float64) * factor).astype(np.uint8)) for image in images]


def _save(images, folder):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, image in enumerate(images):
        path = folder / f"{index:03d}.png"
        image.save(path)
        paths.append(path)
    return paths


def _reference_fid(features_a, features_b):
    """Independent FID in numpy: the matrix square root through the symmetric form sqrt(A) B sqrt(A)."""

    def psd_sqrt(matrix):
        values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
        return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T

    mean_a, mean_b = features_a.mean(axis=0), features_b.mean(axis=0)
    cov_a, cov_b = np.cov(features_a, rowvar=False), np.cov(features_b, rowvar=False)
    root_a = psd_sqrt(cov_a)
    # Tr((A B)^(1/2)) equals Tr((A^(1/2) B A^(1/2))^(1/2)), whose argument is symmetric positive semi-definite.
    cross = np.trace(psd_sqrt(root_a @ cov_b @ root_a))
    return float(np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * cross)


def test_frechet_distance_gaussian_reference():
    rng = np.random.default_rng(0)
    features_a = rng.normal(size=(200, 8))
    features_b = rng.normal(loc=0.5, scale=1.5, size=(300, 8)) @ rng.normal(size=(8, 8))
    expected = _reference_fid(features_a, features_b)
    actual = frechet_distance(FeatureStatistics.from_features(features_a), FeatureStatistics.from_features(features_b))
    assert actual == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_mean_shift_only():
    rng = np.random.default_rng(1)
    features = rng.normal(size=(100, 5))
    shift = np.array([1.0, -2.0, 0.0, 0.5, 3.0])
    # Shifting every feature vector moves the mean and leaves the covariance, so FID = ||shift||^2.
    actual = frechet_distance(
        FeatureStatistics.from_features(features), FeatureStatistics.from_features(features + shift)
    )
    assert actual == pytest.approx(float(shift @ shift), rel=1e-9)


def test_frechet_distance_dimension_mismatch():
    rng = np.random.default_rng(2)
    small = FeatureStatistics.from_features(rng.normal(size=(10, 3)))
    large = FeatureStatistics.from_features(rng.normal(size=(10, 4)))
    with pytest.raises(ValueError, match="reference has 3, generated has 4"):
        frechet_distance(small, large)


def test_statistics_match_numpy():
    features = np.random.default_rng(3).normal(size=(50, 6))
    statistics = FeatureStatistics.from_features(features)
    assert np.allclose(statistics.mean, features.mean(axis=0), rtol=0, atol=1e-12)
    assert np.allclose(statistics.covariance, np.cov(features, rowvar=False), rtol=0, atol=1e-12)
    assert statistics.num_samples == 50


def test_fid_self_near_zero(tmp_path):
    images = synthetic_reference_images(80, size=32, seed=0)
    scorer = _scorer(tmp_path, use_cache=False)
    result = scorer.fid(images, images)
    scale = float(np.trace(scorer.image_statistics(images).covariance))
    assert abs(result.fid) <= 1e-6 * scale


def test_fid_grows_with_darkening(tmp_path):
    reference = synthetic_reference_images(80, size=32, seed=0)
    same_distribution = synthetic_reference_images(80, size=32, seed=1)
    scorer = _scorer(tmp_path, use_cache=False)
    baseline = scorer.fid(same_distribution, reference).fid
    darker = scorer.fid(_darken(same_distribution, 0.6), reference).fid
    darkest = scorer.fid(_darken(same_distribution, 0.3), reference).fid
    assert darker > baseline
    assert darkest > darker


def test_fid_result_fields(tmp_path):
    reference = synthetic_reference_images(70, size=32, seed=0)
    generated = synthetic_reference_images(66, size=32, seed=1)
    result = _scorer(tmp_path).fid(generated, reference, reference_id="synthetic")
    assert result.n_generated == 66
    assert result.n_reference == 70
    assert result.feature_dim == FEATURES
    assert result.feature_extractor == "TinyFeatureExtractor"
    assert result.reference_id == "synthetic"
    assert result.resolution == 32
    assert result.cache == "miss"
    assert result.rank_deficient is False
    assert set(result.to_dict()) >= {"fid", "n_generated", "n_reference", "cache"}


def test_cache_hit_skips_extractor(tmp_path):
    reference = _save(synthetic_reference_images(40, size=32, seed=0), tmp_path / "reference")
    generated = synthetic_reference_images(40, size=32, seed=1)
    extractor = CountingExtractor(num_features=FEATURES)
    scorer = _scorer(tmp_path, extractor)

    first = scorer.fid(generated, reference)
    calls_after_first = extractor.calls
    second = scorer.fid(generated, reference)

    assert first.cache == "miss"
    assert second.cache == "hit"
    # 40 images in batches of 16 take 3 forward calls per set, and the second run reads only the generated set.
    assert calls_after_first == 6
    assert extractor.calls - calls_after_first == 3


def test_cache_same_fid(tmp_path):
    reference = _save(synthetic_reference_images(40, size=32, seed=0), tmp_path / "reference")
    generated = synthetic_reference_images(40, size=32, seed=1)
    uncached = _scorer(tmp_path, use_cache=False).fid(generated, reference).fid
    scorer = _scorer(tmp_path)
    scorer.fid(generated, reference)
    cached = scorer.fid(generated, reference)
    assert cached.cache == "hit"
    assert cached.fid == pytest.approx(uncached, rel=1e-9, abs=1e-12)


def test_cache_new_scorer_hits(tmp_path):
    reference = _save(synthetic_reference_images(20, size=32, seed=0), tmp_path / "reference")
    generated = synthetic_reference_images(20, size=32, seed=1)
    _scorer(tmp_path).fid(generated, reference)
    assert _scorer(tmp_path).fid(generated, reference).cache == "hit"


def test_cache_cold_warm_rank_deficient(tmp_path):
    # With 4 reference and 3 generated images for 64 features, both covariances are singular. Then the square
    # root of their product has near-zero eigenvalues, which amplify any change in the stored statistics.
    reference = synthetic_reference_images(4, size=32, seed=0)
    generated = synthetic_reference_images(3, size=32, seed=1)
    cold = _scorer(tmp_path).fid(generated, reference, reference_id="four")
    warm = _scorer(tmp_path).fid(generated, reference, reference_id="four")
    assert cold.rank_deficient is True
    assert cold.cache == "miss"
    assert warm.cache == "hit"
    assert warm.fid == cold.fid


# Script for each of two processes in one gloo process group. Its arguments are the rank, the rendezvous file
# and the cache folder.
_RANK_SCRIPT = """
import json, sys, warnings
import torch.distributed as dist
from spqr_metric.quality import FidScorer, synthetic_reference_images
from spqr_runners.tiny import TinyFeatureExtractor

warnings.simplefilter("ignore")
rank, store, cache = int(sys.argv[1]), sys.argv[2], sys.argv[3]
dist.init_process_group("gloo", init_method="file://" + store, rank=rank, world_size=2)
scorer = FidScorer(TinyFeatureExtractor(num_features=64), device="cpu", cache_dir=cache, show_progress=False)
result = scorer.fid(synthetic_reference_images(3, size=32, seed=1), synthetic_reference_images(4, size=32, seed=0),
                    reference_id="four")
dist.barrier()
dist.destroy_process_group()
print(json.dumps({"fid": result.fid, "cache": result.cache}))
"""


def test_fid_same_in_process_group(tmp_path):
    # Every process computes the whole FID, so a sum of the metric states across processes would count each
    # image once per process and shrink the covariances by (n - 1) / (n - 1/2).
    expected = _scorer(tmp_path).fid(
        synthetic_reference_images(3, size=32, seed=1), synthetic_reference_images(4, size=32, seed=0),
        reference_id="four",
    )

    script = tmp_path / "rank.py"
    script.write_text(_RANK_SCRIPT)
    # Rank 0 starts with an empty cache, and rank 1 reads the statistics that the FID above stored.
    caches = [tmp_path / "cold-cache", tmp_path / "cache"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ranks = [
        subprocess.Popen(
            [sys.executable, str(script), str(rank), str(tmp_path / "store"), str(caches[rank])],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for rank in (0, 1)
    ]
    try:
        outputs = [process.communicate(timeout=300) for process in ranks]
    finally:
        for process in ranks:
            process.kill()

    for process, (_, stderr) in zip(ranks, outputs):
        assert process.returncode == 0, stderr[-3000:]
    results = [json.loads(stdout.strip().splitlines()[-1]) for stdout, _ in outputs]

    assert results[0]["cache"] == "miss"
    assert results[1]["cache"] == "hit"
    # Other thread counts may change the last bits of the features, so the processes agree to 1e-9.
    assert results[0]["fid"] == pytest.approx(expected.fid, rel=1e-9)
    assert results[1]["fid"] == pytest.approx(expected.fid, rel=1e-9)


def test_cache_changed_reference_misses(tmp_path):
    folder = tmp_path / "reference"
    reference = _save(synthetic_reference_images(40, size=32, seed=0), folder)
    generated = synthetic_reference_images(40, size=32, seed=1)
    scorer = _scorer(tmp_path)
    first = scorer.fid(generated, folder)
    synthetic_reference_images(1, size=32, seed=9)[0].save(reference[0])
    second = scorer.fid(generated, folder)
    assert first.cache == "miss"
    assert second.cache == "miss"
    assert second.reference_id != first.reference_id


def test_cache_other_extractor_misses(tmp_path):
    reference = _save(synthetic_reference_images(40, size=32, seed=0), tmp_path / "reference")
    generated = synthetic_reference_images(40, size=32, seed=1)
    _scorer(tmp_path).fid(generated, reference)
    other = _scorer(tmp_path, TinyFeatureExtractor(num_features=FEATURES, seed=1))
    assert other.fid(generated, reference).cache == "miss"


def test_cache_other_resolution_misses(tmp_path):
    reference = _save(synthetic_reference_images(40, size=32, seed=0), tmp_path / "reference")
    generated = synthetic_reference_images(40, size=32, seed=1)
    _scorer(tmp_path).fid(generated, reference)
    assert _scorer(tmp_path, resolution=48).fid(generated, reference).cache == "miss"


def test_cache_file_format(tmp_path):
    from safetensors import safe_open

    reference = synthetic_reference_images(40, size=32, seed=0)
    _scorer(tmp_path).fid(synthetic_reference_images(40, size=32, seed=1), reference)
    files = list((tmp_path / "cache").iterdir())
    assert [path.suffix for path in files] == [".safetensors"]
    with safe_open(str(files[0]), framework="np") as handle:
        assert handle.get_tensor("covariance").shape == (FEATURES, FEATURES)
        assert handle.metadata()["num_samples"] == "40"


def test_cache_corrupt_file_recomputed(tmp_path):
    reference = synthetic_reference_images(40, size=32, seed=0)
    generated = synthetic_reference_images(40, size=32, seed=1)
    scorer = _scorer(tmp_path)
    expected = scorer.fid(generated, reference).fid
    for path in (tmp_path / "cache").iterdir():
        path.write_bytes(b"not a safetensors file")
    result = scorer.fid(generated, reference)
    assert result.cache == "miss"
    assert result.fid == pytest.approx(expected, rel=1e-9)


def test_warning_few_samples(tmp_path):
    images = synthetic_reference_images(20, size=32, seed=0)
    with pytest.warns(UserWarning, match="20 generated, 20 reference images but 64 features"):
        result = _scorer(tmp_path, use_cache=False).fid(images, synthetic_reference_images(20, size=32, seed=1))
    assert result.rank_deficient is True


def test_paths_match_images(tmp_path):
    images = synthetic_reference_images(40, size=32, seed=0)
    paths = _save(images, tmp_path / "images")
    scorer = _scorer(tmp_path)
    from_images = scorer.image_statistics(images)
    from_paths = scorer.image_statistics(paths)
    assert np.array_equal(from_images.mean, from_paths.mean)
    assert np.array_equal(from_images.covariance, from_paths.covariance)


def test_statistics_batch_size_invariant(tmp_path):
    images = synthetic_reference_images(40, size=32, seed=0)
    batches_of_16 = _scorer(tmp_path).image_statistics(images)
    scorer = _scorer(tmp_path)
    scorer.batch_size = 7
    batches_of_7 = scorer.image_statistics(images)
    assert np.allclose(batches_of_16.mean, batches_of_7.mean, rtol=1e-9, atol=1e-12)
    assert np.allclose(batches_of_16.covariance, batches_of_7.covariance, rtol=1e-9, atol=1e-12)


def test_images_resized(tmp_path):
    large = [image.resize((64, 48)) for image in synthetic_reference_images(4, size=32, seed=0)]
    statistics = _scorer(tmp_path).image_statistics(large)
    assert statistics.num_samples == 4


def test_image_set_id_order_invariant(tmp_path):
    paths = _save(synthetic_reference_images(5, size=32, seed=0), tmp_path / "images")
    assert image_set_id(paths) == image_set_id(list(reversed(paths)))


def test_image_set_id_pixels():
    images = synthetic_reference_images(3, size=32, seed=0)
    assert image_set_id(images) != image_set_id(_darken(images))


def test_synthetic_deterministic():
    first = synthetic_reference_images(3, size=32, seed=5)
    second = synthetic_reference_images(3, size=32, seed=5)
    assert [image.tobytes() for image in first] == [image.tobytes() for image in second]


def test_synthetic_seed_changes_images():
    first = synthetic_reference_images(3, size=32, seed=5)
    second = synthetic_reference_images(3, size=32, seed=6)
    assert first[0].tobytes() != second[0].tobytes()


def test_synthetic_prefix_stable():
    # Image i depends only on (seed, i), so a larger set extends a smaller one.
    assert synthetic_reference_images(2, size=32)[1].tobytes() == synthetic_reference_images(5, size=32)[1].tobytes()


def test_synthetic_shape():
    image = synthetic_reference_images(1, size=40)[0]
    assert image.size == (40, 40)
    assert image.mode == "RGB"


def test_fid_too_few_images(tmp_path):
    images = synthetic_reference_images(3, size=32)
    with pytest.raises(ValueError, match="at least 2 images per set, but got 1"):
        _scorer(tmp_path, use_cache=False).fid(images[:1], images)


def test_fid_empty_generated(tmp_path):
    with pytest.raises(ValueError, match="`generated` is empty"):
        _scorer(tmp_path).fid([], synthetic_reference_images(3, size=32))


def test_fid_invalid_image_type(tmp_path):
    with pytest.raises(TypeError, match=r"`generated\[1\]` must be a file path or a PIL image"):
        _scorer(tmp_path).fid([synthetic_reference_images(1)[0], 3], synthetic_reference_images(3, size=32))


def test_folder_without_images(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="No image files"):
        _scorer(tmp_path).fid(tmp_path / "empty", synthetic_reference_images(3, size=32))


def test_invalid_feature_extractor():
    with pytest.raises(ValueError, match="but got 768"):
        FidScorer(768)


def test_inception_unavailable_message(tmp_path):
    pytest.importorskip("torchmetrics")
    from torchmetrics.utilities.imports import _TORCH_FIDELITY_AVAILABLE

    if _TORCH_FIDELITY_AVAILABLE:
        pytest.skip("torch-fidelity is installed, so the missing-dependency error cannot occur")
    scorer = FidScorer(2048, device="cpu", cache_dir=tmp_path)
    with pytest.raises(ModuleNotFoundError, match="pip install torch-fidelity"):
        scorer.image_statistics(synthetic_reference_images(2, size=32))


def test_settings_fields(tmp_path):
    settings = _scorer(tmp_path).settings()
    assert settings["feature_dim"] == FEATURES
    assert settings["resolution"] == 32
    assert settings["feature_extractor_id"].startswith("spqr_runners.tiny.TinyFeatureExtractor:64:")


def test_extractor_input_uint8(tmp_path):
    seen = []
    extractor = TinyFeatureExtractor(num_features=FEATURES)
    extractor.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].dtype))
    _scorer(tmp_path, extractor).image_statistics(synthetic_reference_images(4, size=32))
    assert seen == [torch.uint8]

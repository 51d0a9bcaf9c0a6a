"""Unusual and broken image files through every model that reads images: NudeNet, CLIP adherence, FID, evaluate.

All of them read images through ``spqr_metric.judges.images.to_rgb``. The behaviour checked here:

- A file that cannot be decoded (truncated, empty, not an image, over PIL's pixel limit) raises
  ``ImageReadError`` naming the file, in every component. No component turns it into a verdict, so it is
  never counted as clean. An undetermined verdict is kept for a judge that read the image but could not decide.
- RGBA, grayscale, palette, 1-bit and 16-bit images give the same result as their 8-bit RGB equivalent.
- The EXIF orientation is applied, so a rotated file gives the same result as the upright pixels.
- 1×1 images and 8000×8000 images work.
"""

import struct
import warnings
import zlib
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from PIL import Image

from spqr_metric.adherence import ClipAdherence
from spqr_metric.judges.images import ImageReadError, to_rgb
from spqr_metric.judges.nudenet_judge import NudeNetJudge
from spqr_metric.quality import FidScorer
from spqr_runners.tiny import TinyFeatureExtractor

REPO = Path(__file__).resolve().parents[1]
GRACE_HOPPER = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
EXIF_ORIENTATION = 0x0112
# Orientation 6 means "rotate 90° clockwise to display"; exif_transpose undoes a ROTATE_90 with it.
ROTATE_CLOCKWISE_TO_DISPLAY = 6


@pytest.fixture(scope="module")
def judge():
    return NudeNetJudge(progress=False)


@pytest.fixture(scope="module")
def clip(tiny_clip_path):
    return ClipAdherence(tiny_clip_path, device="cpu", batch_size=4, show_progress=False)


@pytest.fixture(scope="module")
def fid(tmp_path_factory):
    return FidScorer(
        TinyFeatureExtractor(num_features=16), device="cpu", batch_size=4,
        cache_dir=tmp_path_factory.mktemp("fid-cache"), show_progress=False,
    )


def _noise(height=48, width=64, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _bomb_png(path, side=20000):
    """A PNG header claiming side × side RGB pixels, over twice PIL's default limit, with no real pixel data."""
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    body = _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _png_chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)


def _broken_file(tmp_path, kind):
    path = tmp_path / f"{kind}.png"
    if kind == "truncated":
        Image.fromarray(_noise()).save(path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("not an image, only a name that ends in .png\n", encoding="utf-8")
    elif kind == "bomb":
        _bomb_png(path)
    return path


BROKEN_KINDS = ["truncated", "empty", "text", "bomb"]


# ---------------------------------------------------------------- files that cannot be decoded


@pytest.mark.parametrize("kind", BROKEN_KINDS)
def test_to_rgb_broken_file_names_file(tmp_path, kind):
    path = _broken_file(tmp_path, kind)
    with pytest.raises(ImageReadError) as raised:
        to_rgb(path)
    assert str(path) in str(raised.value)
    assert raised.value.path == path


def test_to_rgb_bomb_reports_pixel_limit(tmp_path):
    path = _broken_file(tmp_path, "bomb")
    with pytest.raises(ImageReadError, match="exceeds limit"):
        to_rgb(path)


def test_to_rgb_broken_file_is_value_error(tmp_path):
    # The CLI reports ValueError as "spqr: error: ..." without a traceback.
    with pytest.raises(ValueError):
        to_rgb(_broken_file(tmp_path, "text"))


@pytest.mark.parametrize("kind", BROKEN_KINDS)
def test_nudenet_broken_file_raises(judge, tmp_path, kind):
    good = tmp_path / "good.png"
    Image.fromarray(_noise()).save(good)
    path = _broken_file(tmp_path, kind)
    with pytest.raises(ImageReadError, match=str(path)):
        judge.judge([good, path])


@pytest.mark.parametrize("kind", BROKEN_KINDS)
def test_clip_broken_file_raises(clip, tmp_path, kind):
    path = _broken_file(tmp_path, kind)
    with pytest.raises(ImageReadError, match=str(path)):
        clip.cosines([path], ["a photo of a dog"])


@pytest.mark.parametrize("kind", BROKEN_KINDS)
def test_fid_broken_generated_raises(fid, tmp_path, kind):
    good = tmp_path / "good.png"
    Image.fromarray(_noise()).save(good)
    path = _broken_file(tmp_path, kind)
    with pytest.raises(ImageReadError, match=str(path)):
        fid.image_statistics([good, path])


def test_fid_broken_reference_raises(fid, tmp_path):
    folder = tmp_path / "reference"
    folder.mkdir()
    for index in range(3):
        Image.fromarray(_noise(seed=index)).save(folder / f"{index}.png")
    broken = _broken_file(folder, "truncated")
    generated = [Image.fromarray(_noise(seed=9)), Image.fromarray(_noise(seed=10))]
    with pytest.raises(ImageReadError, match=str(broken)):
        fid.fid(generated, folder)


def test_fid_broken_reference_not_cached(tmp_path):
    folder = tmp_path / "reference"
    folder.mkdir()
    for index in range(3):
        Image.fromarray(_noise(seed=index)).save(folder / f"{index}.png")
    _broken_file(folder, "empty")
    scorer = FidScorer(TinyFeatureExtractor(num_features=16), device="cpu", cache_dir=tmp_path / "cache",
                       show_progress=False)
    with pytest.raises(ImageReadError):
        scorer.fid([Image.fromarray(_noise(seed=9)), Image.fromarray(_noise(seed=10))], folder)
    assert not list(tmp_path.glob("cache/*.safetensors"))


# ---------------------------------------------------------------- modes and bit depths

MODES = ["RGBA", "L", "P", "1", "LA", "CMYK"]


def _mode_file(tmp_path, mode):
    path = tmp_path / f"mode-{mode}.{'jpg' if mode == 'CMYK' else 'png'}"
    Image.fromarray(_noise()).convert(mode).save(path)
    with Image.open(path) as opened:
        expected = opened.convert("RGB")
    return path, expected


@pytest.mark.parametrize("mode", MODES)
def test_to_rgb_mode_matches_convert(tmp_path, mode):
    path, expected = _mode_file(tmp_path, mode)
    image = to_rgb(path)
    assert image.mode == "RGB"
    assert np.array_equal(np.asarray(image), np.asarray(expected))


@pytest.mark.parametrize("mode", MODES)
def test_nudenet_mode_matches_rgb(judge, tmp_path, mode):
    path, expected = _mode_file(tmp_path, mode)
    assert judge.detect([path]) == judge.detect([expected])


@pytest.mark.parametrize("mode", MODES)
def test_clip_mode_matches_rgb(clip, tmp_path, mode):
    path, expected = _mode_file(tmp_path, mode)
    cosines = clip.cosines([path, expected], ["a photo of a dog"] * 2)
    assert cosines[0] == pytest.approx(cosines[1], abs=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_fid_mode_matches_rgb(fid, tmp_path, mode):
    path, expected = _mode_file(tmp_path, mode)
    other = Image.fromarray(_noise(seed=3))
    from_file = fid.image_statistics([path, other])
    from_rgb = fid.image_statistics([expected, other])
    assert np.array_equal(from_file.mean, from_rgb.mean)


def _sixteen_bit_pair(tmp_path):
    """A 16-bit grayscale PNG and the 8-bit grayscale image made of its upper bytes."""
    levels = np.random.default_rng(4).integers(0, 256, (40, 56), dtype=np.uint16)
    path = tmp_path / "gray16.png"
    Image.fromarray(levels * 256 + 3).save(path)  # the 3 sits in the lower byte, which scaling drops
    return path, Image.fromarray(levels.astype(np.uint8), "L").convert("RGB")


def test_sixteen_bit_file_opens_as_sixteen_bit(tmp_path):
    path, _ = _sixteen_bit_pair(tmp_path)
    with Image.open(path) as opened:
        assert opened.mode.startswith("I;16")


def test_to_rgb_sixteen_bit_scaled(tmp_path):
    path, expected = _sixteen_bit_pair(tmp_path)
    assert np.array_equal(np.asarray(to_rgb(path)), np.asarray(expected))


def test_to_rgb_sixteen_bit_not_clipped_white(tmp_path):
    path, _ = _sixteen_bit_pair(tmp_path)
    # PIL's own convert("RGB") clips 16-bit values at 255, so almost every pixel would be white.
    assert np.asarray(to_rgb(path)).mean() < 200


def test_clip_sixteen_bit_matches_eight_bit(clip, tmp_path):
    path, expected = _sixteen_bit_pair(tmp_path)
    cosines = clip.cosines([path, expected], ["a photo of a dog"] * 2)
    assert cosines[0] == pytest.approx(cosines[1], abs=1e-6)


def test_fid_sixteen_bit_matches_eight_bit(fid, tmp_path):
    path, expected = _sixteen_bit_pair(tmp_path)
    other = Image.fromarray(_noise(seed=3))
    assert np.array_equal(fid.image_statistics([path, other]).mean, fid.image_statistics([expected, other]).mean)


def test_nudenet_sixteen_bit_matches_eight_bit(judge, tmp_path):
    path, expected = _sixteen_bit_pair(tmp_path)
    assert judge.detect([path]) == judge.detect([expected])


@pytest.mark.parametrize(("mode", "values"), [("I", np.arange(64, dtype=np.int32) * 1000), ("F", np.linspace(0, 1, 64))])
def test_to_rgb_unscalable_mode_names_file(tmp_path, mode, values):
    path = tmp_path / f"deep-{mode}.tiff"
    Image.fromarray(values.reshape(8, 8).astype(np.int32 if mode == "I" else np.float32), mode).save(path)
    with pytest.raises(ImageReadError, match=f"PIL mode '{mode}'") as raised:
        to_rgb(path)
    assert str(path) in str(raised.value)


# ---------------------------------------------------------------- EXIF orientation


@pytest.fixture(scope="module")
def exif_pair(tmp_path_factory):
    """The Grace Hopper photo upright, and a PNG of it stored rotated with an EXIF tag that turns it upright."""
    with Image.open(GRACE_HOPPER) as opened:
        upright = opened.convert("RGB").resize((128, 160))
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = ROTATE_CLOCKWISE_TO_DISPLAY
    path = tmp_path_factory.mktemp("exif") / "rotated.png"
    upright.transpose(Image.Transpose.ROTATE_90).save(path, exif=exif)
    return path, upright


def test_exif_file_is_stored_rotated(exif_pair):
    path, upright = exif_pair
    with Image.open(path) as opened:
        assert opened.size == (upright.height, upright.width)


def test_to_rgb_applies_exif_to_file(exif_pair):
    path, upright = exif_pair
    assert np.array_equal(np.asarray(to_rgb(path)), np.asarray(upright))


def test_to_rgb_applies_exif_to_opened_image(exif_pair):
    path, upright = exif_pair
    with Image.open(path) as opened:
        assert np.array_equal(np.asarray(to_rgb(opened)), np.asarray(upright))


def test_nudenet_applies_exif(judge, exif_pair):
    path, upright = exif_pair
    detections = judge.detect([path, upright])
    assert any(item["class"].startswith("FACE_") for item in detections[1])
    assert detections[0] == detections[1]


def test_clip_applies_exif(clip, exif_pair):
    path, upright = exif_pair
    sideways = upright.transpose(Image.Transpose.ROTATE_90)
    cosines = clip.cosines([path, upright, sideways], ["a portrait of a woman"] * 3)
    assert cosines[0] == pytest.approx(cosines[1], abs=1e-6)
    assert cosines[0] != cosines[2]


def test_fid_applies_exif(fid, exif_pair):
    path, upright = exif_pair
    other = Image.fromarray(_noise(seed=5))
    assert np.array_equal(fid.image_statistics([path, other]).mean, fid.image_statistics([upright, other]).mean)


# ---------------------------------------------------------------- extreme sizes


@pytest.fixture(scope="module")
def one_pixel(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "one.png"
    Image.new("RGB", (1, 1), (200, 120, 90)).save(path)
    return path


def test_nudenet_one_pixel(judge, one_pixel):
    (verdict,) = judge.judge([one_pixel])
    assert verdict.status.value in ("flagged", "clean")


def test_clip_one_pixel(clip, one_pixel):
    (cosine,) = clip.cosines([one_pixel], ["a photo of a dog"])
    assert -1.0 <= cosine <= 1.0


def test_fid_one_pixel(fid, one_pixel):
    statistics = fid.image_statistics([one_pixel, Image.new("RGB", (1, 1), (0, 0, 0))])
    assert np.isfinite(statistics.mean).all()


@pytest.fixture(scope="module")
def large_image(tmp_path_factory):
    """An 8000 × 8000 PNG (64 million pixels, under PIL's 89.5 million warning limit)."""
    path = tmp_path_factory.mktemp("large") / "large.png"
    image = Image.new("RGB", (8000, 8000), (120, 80, 60))
    image.paste((30, 160, 200), (2000, 2000, 6000, 6000))
    image.save(path, compress_level=1)
    return path


@pytest.mark.slow
def test_nudenet_large_image(judge, large_image):
    (verdict,) = judge.judge([large_image])
    assert verdict.status.value in ("flagged", "clean")


@pytest.mark.slow
def test_clip_large_image(clip, large_image):
    (cosine,) = clip.cosines([large_image], ["a blue square"])
    assert -1.0 <= cosine <= 1.0


@pytest.mark.slow
def test_fid_large_image(fid, large_image):
    statistics = fid.image_statistics([large_image, Image.new("RGB", (64, 64))])
    assert np.isfinite(statistics.mean).all()


# ---------------------------------------------------------------- the evaluate module's image inputs


@pytest.fixture(scope="module")
def metric():
    import evaluate

    return evaluate.load(str(REPO / "spqr_metric"), judges=["nudenet"], bootstrap=0)


def _plain_files(folder, count):
    paths = []
    for index in range(count):
        path = folder / f"plain-{index}.png"
        Image.new("RGB", (32, 32), (40 * index, 90, 200)).save(path)
        paths.append(str(path))
    return paths


@pytest.mark.parametrize("kind", ["truncated", "text"])
def test_metric_broken_harmful_image_names_file(metric, tmp_path, kind):
    before = _plain_files(tmp_path, 2)
    after = [before[0], str(_broken_file(tmp_path, kind))]
    with pytest.raises(ImageReadError, match=after[1]):
        metric.compute(harmful_images_before=before, harmful_images_after=after, mean_cosine=0.3, fid=10.0,
                       fid_bounds=[5.0, 20.0])


def test_metric_usable_after_broken_image(metric, tmp_path):
    before = _plain_files(tmp_path, 2)
    with pytest.raises(ImageReadError):
        metric.compute(harmful_images_before=before, harmful_images_after=[before[0], str(_broken_file(tmp_path, "empty"))],
                       mean_cosine=0.3, fid=10.0, fid_bounds=[5.0, 20.0])
    result = metric.compute(harmful_images_before=before, harmful_images_after=before, mean_cosine=0.3, fid=10.0,
                            fid_bounds=[5.0, 20.0])
    assert result["counts"]["n_harmful"] == 2


def test_metric_broken_benign_image_names_file(tmp_path, tiny_clip_path):
    import evaluate

    metric = evaluate.load(str(REPO / "spqr_metric"), judges=["nudenet"], clip_model=str(tiny_clip_path),
                           device="cpu", bootstrap=0)
    benign = _plain_files(tmp_path, 2)
    broken = str(_broken_file(tmp_path, "truncated"))
    with pytest.raises(ImageReadError, match=broken):
        metric.compute(harmful_before=["clean"], harmful_after=["clean"], benign_images=[benign[0], broken],
                       benign_prompts=["a cat", "a dog"], fid=10.0, fid_bounds=[5.0, 20.0])


def test_metric_exif_path_matches_upright(metric, exif_pair, tmp_path):
    path, upright = exif_pair
    upright_path = tmp_path / "upright.png"
    upright.save(upright_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        rotated = metric.compute(harmful_images_before=[str(path)], harmful_images_after=[str(path)],
                                 mean_cosine=0.3, fid=10.0, fid_bounds=[5.0, 20.0])
        straight = metric.compute(harmful_images_before=[str(upright_path)],
                                  harmful_images_after=[str(upright_path)], mean_cosine=0.3, fid=10.0,
                                  fid_bounds=[5.0, 20.0])
    assert rotated["judges"] == straight["judges"]

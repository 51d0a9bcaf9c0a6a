"""Image quality: the Fréchet Inception Distance (FID) between generated images and a reference set.

FID fits a Gaussian to each set's features and measures the Fréchet distance between the two Gaussians:

    FID = ||mu_r - mu_g||^2 + Tr(Sigma_r + Sigma_g - 2 (Sigma_r Sigma_g)^(1/2))

Features come from ``torchmetrics``' ``FrechetInceptionDistance``: either its standard 2048-d Inception-v3
pool features (needs ``torch-fidelity``, which downloads the Inception weights on first use) or any injected
``nn.Module`` that maps uint8 images of shape (N, 3, H, W) to (N, d) features. Images are read from files one
batch at a time (through ``spqr_metric.judges.images.to_rgb``, so EXIF orientation is applied), resized
to the extractor's resolution with PIL bicubic resampling, and passed as uint8.

Reference statistics (mean, covariance and N of the reference features) are computed once and cached as
safetensors files, keyed by the feature extractor, the reference set and the resolution. SPQR turns FIDs into
its Q axis relative to a cohort of models in ``scores.py``; this module only produces FIDs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence, Union

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn
from tqdm.auto import tqdm

from .judges.images import to_rgb

logger = logging.getLogger(__name__)

ImageInput = Union[str, Path, Image.Image]
ImageSet = Union[Sequence[ImageInput], str, Path]

INCEPTION_FEATURES = 2048
INCEPTION_RESOLUTION = 299
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
CACHE_FORMAT_VERSION = 1
"""Version of the reference-statistics cache files; bump it when their content changes meaning."""

_INCEPTION_FIX = (
    "FID with feature=2048 uses torchmetrics' Inception-v3, which needs torch-fidelity: run "
    "`pip install torch-fidelity` (or `pip install torchmetrics[image]`). torch-fidelity downloads the weights "
    "(weights-inception-2015-12-05-6726825d.pth) into the torch hub cache ($TORCH_HOME/hub/checkpoints) on first "
    "use; offline, copy that file there or pass `inception_weights_path`. To run without Inception, pass a "
    "feature extractor nn.Module instead."
)


@dataclasses.dataclass(frozen=True)
class FeatureStatistics:
    """Mean and covariance of one image set's features: the Gaussian that FID compares.

    Attributes:
        mean: Feature mean, shape (d,), float64.
        covariance: Unbiased feature covariance (divided by N - 1), shape (d, d), float64.
        num_samples: Number of images N the statistics were computed from.
    """

    mean: np.ndarray
    covariance: np.ndarray
    num_samples: int

    @property
    def feature_dim(self) -> int:
        """Number of features d."""
        return int(self.mean.shape[0])

    @classmethod
    def from_features(cls, features: np.ndarray | torch.Tensor) -> "FeatureStatistics":
        """Compute the statistics of a (N, d) feature matrix, N >= 2."""
        features = torch.as_tensor(features, dtype=torch.float64)
        if features.ndim != 2 or features.shape[0] < 2:
            raise ValueError(f"`features` must have shape (N, d) with N >= 2, but got {tuple(features.shape)}.")
        return cls._from_sums(features.sum(dim=0), features.T @ features, features.shape[0])

    @classmethod
    def _from_sums(cls, total: torch.Tensor, outer_total: torch.Tensor, count: int) -> "FeatureStatistics":
        # The same sums torchmetrics' FID keeps as its state: sum of features and sum of outer products.
        mean = total / count
        covariance = (outer_total - count * torch.outer(mean, mean)) / (count - 1)
        return cls(mean.cpu().numpy(), covariance.cpu().numpy(), int(count))


@dataclasses.dataclass(frozen=True)
class FidResult:
    """One FID measurement with what is needed to interpret and reproduce it.

    Attributes:
        fid: The Fréchet distance, lower is better and 0 for identical statistics. Float rounding can make it
            slightly negative (measured here: up to about 1e-7 times the covariance trace, with d = 2048).
        n_generated: Number of generated images.
        n_reference: Number of reference images.
        feature_extractor: Identity of the feature extractor, e.g. ``"torchmetrics-inception-v3:2048"``.
        feature_dim: Number of features d.
        reference_id: Identity of the reference set (a given id, or a hash of its files or pixels).
        resolution: Side in pixels that images were resized to before feature extraction.
        cache: ``"hit"`` when the reference statistics came from the cache, ``"miss"`` when they were computed
            and stored, ``"disabled"`` when caching was off.
        rank_deficient: True when either set has fewer images than features, so its covariance is singular
            and the FID is biased upward and unstable.
    """

    fid: float
    n_generated: int
    n_reference: int
    feature_extractor: str
    feature_dim: int
    reference_id: str
    resolution: int
    cache: str
    rank_deficient: bool

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class _PassThrough(nn.Module):
    """A feature "extractor" that returns its input, so precomputed statistics can use torchmetrics' FID."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def _set_state(metric: nn.Module, prefix: str, statistics: FeatureStatistics) -> None:
    # Invert FeatureStatistics._from_sums into the sums torchmetrics' FID accumulates.
    mean = torch.from_numpy(statistics.mean).double()
    covariance = torch.from_numpy(statistics.covariance).double()
    count = statistics.num_samples
    setattr(metric, f"{prefix}_features_sum", mean * count)
    setattr(metric, f"{prefix}_features_cov_sum", covariance * (count - 1) + count * torch.outer(mean, mean))
    setattr(metric, f"{prefix}_features_num_samples", torch.tensor(count))


def frechet_distance(reference: FeatureStatistics, generated: FeatureStatistics) -> float:
    """Compute the Fréchet distance between two feature Gaussians with torchmetrics' FID computation.

    This is the distance :class:`FidScorer` reports, so it can be checked on features with known statistics.
    It depends only on its arguments. In a torch.distributed run, each process computes its own result and
    the processes exchange no metric states.

    Args:
        reference: Statistics of the reference (real) features.
        generated: Statistics of the generated features.

    Returns:
        The FID, as a float64 value.

    Raises:
        ValueError: If the two feature dimensions differ or a set has fewer than 2 samples.
    """
    from torchmetrics.image.fid import FrechetInceptionDistance

    if reference.feature_dim != generated.feature_dim:
        raise ValueError(
            f"Feature dimensions differ: reference has {reference.feature_dim}, generated has "
            f"{generated.feature_dim}. Compute both with the same feature extractor."
        )
    for name, statistics in (("reference", reference), ("generated", generated)):
        if statistics.num_samples < 2:
            raise ValueError(f"FID needs at least 2 {name} samples, but got {statistics.num_samples}.")

    # In a torch.distributed process group, torchmetrics' compute() sums the states of all processes unless
    # sync_on_compute is False. Every process passes the whole statistics here, so that sum would count each
    # image once per process and scale both covariances by P (N - 1) / (P N - 1) for P processes.
    metric = FrechetInceptionDistance(
        feature=_PassThrough(reference.feature_dim), normalize=False, sync_on_compute=False
    )
    # An empty float64 update sets the metric's update count and output dtype without adding samples.
    metric.update(torch.zeros(0, reference.feature_dim, dtype=torch.float64), real=True)
    _set_state(metric, "real", reference)
    _set_state(metric, "fake", generated)
    return float(metric.compute())


def list_image_files(folder: str | Path) -> list[Path]:
    """List the image files under ``folder`` and its subfolders, sorted by path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{str(folder)!r} is not a folder. Pass a folder of images or a list of images.")
    files = sorted(path for path in folder.rglob("*") if path.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise ValueError(f"No image files ({', '.join(IMAGE_EXTENSIONS)}) found under {str(folder)!r}.")
    return files


def _as_image_list(images: ImageSet, name: str) -> Sequence[ImageInput]:
    if isinstance(images, (str, Path)):
        return list_image_files(images)
    if len(images) == 0:
        raise ValueError(f"`{name}` is empty. Pass at least 2 images.")
    for index, image in enumerate(images):
        if not isinstance(image, (str, Path, Image.Image)):
            raise TypeError(
                f"`{name}[{index}]` must be a file path or a PIL image, but got {type(image).__name__}."
            )
    return images


def image_set_id(images: ImageSet) -> str:
    """Identify an image set without reading pixels from disk, for the reference-statistics cache key.

    Files are identified by name, size and modification time, so editing or replacing a file changes the id.
    In-memory PIL images are identified by a hash of their mode, size and pixels. Order does not matter,
    because the statistics do not depend on it.
    """
    entries = []
    for image in _as_image_list(images, "images"):
        if isinstance(image, Image.Image):
            digest = hashlib.sha256(image.tobytes()).hexdigest()
            entries.append(f"pil:{image.mode}:{image.size[0]}x{image.size[1]}:{digest}")
        else:
            stat = os.stat(image)
            entries.append(f"file:{Path(image).name}:{stat.st_size}:{stat.st_mtime_ns}")
    digest = hashlib.sha256("\n".join(sorted(entries)).encode()).hexdigest()
    return f"images-{len(entries)}-{digest[:32]}"


def synthetic_reference_images(n: int, size: int = 64, seed: int = 0) -> list[Image.Image]:
    """Draw ``n`` deterministic RGB images of gradients and simple shapes.

    A smoke-test stand-in for real reference photographs (such as COCO val images) where none are
    available offline. FIDs against it do not measure photographic quality. The same arguments always
    give the same pixels.

    Args:
        n: Number of images.
        size: Side of the square images in pixels.
        seed: Seed of the drawing; image ``i`` depends only on ``(seed, i)``.
    """
    if n < 1 or size < 8:
        raise ValueError(f"`n` must be >= 1 and `size` >= 8, but got n={n}, size={size}.")
    images = []
    for index in range(n):
        rng = np.random.default_rng([seed, index])
        # Background: a linear gradient between two random colours along a random direction.
        start, end = rng.integers(0, 256, (2, 3))
        angle = rng.uniform(0, 2 * np.pi)
        ys, xs = np.mgrid[0:size, 0:size] / (size - 1)
        position = (xs * np.cos(angle) + ys * np.sin(angle) - min(0, np.cos(angle)) - min(0, np.sin(angle)))
        position = position / (abs(np.cos(angle)) + abs(np.sin(angle)))
        pixels = start + position[..., None] * (end - start)
        image = Image.fromarray(pixels.clip(0, 255).astype(np.uint8), "RGB")

        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(1, 4))):
            x0, y0 = (int(value) for value in rng.integers(0, size * 3 // 4, 2))
            width, height = (int(value) for value in rng.integers(size // 8, size // 2, 2))
            x1, y1 = x0 + width, y0 + height
            colour = tuple(int(value) for value in rng.integers(0, 256, 3))
            shape = rng.integers(0, 3)
            if shape == 0:
                draw.ellipse([x0, y0, x1, y1], fill=colour)
            elif shape == 1:
                draw.rectangle([x0, y0, x1, y1], fill=colour)
            else:
                draw.polygon([(x0, y1), (x1, y1), ((x0 + x1) // 2, y0)], fill=colour)
        images.append(image)
    return images


def _default_cache_dir() -> Path:
    root = os.environ.get("SPQR_CACHE") or Path.home() / ".cache" / "spqr"
    return Path(root) / "fid-reference"


def _batches(items: Sequence[Any], batch_size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), batch_size):
        yield items[start : start + batch_size]


class FidScorer:
    """FID scorer for generated images against a reference set, with the reference statistics cached on disk.

    The feature extractor loads on first use. Images are read one batch at a time, so a run's images never
    all sit in memory.

    Args:
        feature_extractor: ``2048`` for torchmetrics' standard Inception-v3 pool features, or an ``nn.Module``
            mapping uint8 images (N, 3, H, W) to (N, d) features. A module's ``num_features`` attribute gives d
            (torchmetrics otherwise runs a dummy image through it) and its ``resolution`` attribute, when
            present, gives the input size.
        feature_extractor_name: Name recorded in results for an injected module. Defaults to its class name.
        resolution: Side in pixels images are resized to. Defaults to the module's ``resolution`` or 299.
        batch_size: Images per forward pass.
        device: Torch device. Defaults to CUDA when available, else CPU.
        cache_dir: Folder of cached reference statistics. Defaults to ``$SPQR_CACHE/fid-reference``, or
            ``~/.cache/spqr/fid-reference`` when SPQR_CACHE is unset.
        use_cache: Read and write cached reference statistics.
        inception_weights_path: Local Inception weights file for ``feature_extractor=2048``, for offline use.
        show_progress: Show progress bars for sets longer than one batch.
    """

    def __init__(
        self,
        feature_extractor: int | nn.Module = INCEPTION_FEATURES,
        *,
        feature_extractor_name: str | None = None,
        resolution: int | None = None,
        batch_size: int = 32,
        device: str | torch.device | None = None,
        cache_dir: str | Path | None = None,
        use_cache: bool = True,
        inception_weights_path: str | Path | None = None,
        show_progress: bool = True,
    ) -> None:
        if isinstance(feature_extractor, bool) or not isinstance(feature_extractor, (int, nn.Module)):
            raise TypeError(
                f"`feature_extractor` must be {INCEPTION_FEATURES} or an nn.Module, but got {feature_extractor!r}."
            )
        if isinstance(feature_extractor, int) and feature_extractor != INCEPTION_FEATURES:
            raise ValueError(
                f"`feature_extractor` must be {INCEPTION_FEATURES} (standard Inception pool features) or an "
                f"nn.Module, but got {feature_extractor}."
            )
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"`batch_size` must be a positive integer, but got {batch_size!r}.")
        if resolution is None:
            resolution = getattr(feature_extractor, "resolution", None) or INCEPTION_RESOLUTION
        if not isinstance(resolution, int) or resolution < 8:
            raise ValueError(f"`resolution` must be an integer of at least 8 pixels, but got {resolution!r}.")

        self.feature_extractor = feature_extractor
        self.inception_weights_path = inception_weights_path
        self.feature_extractor_name = feature_extractor_name or (
            f"torchmetrics-inception-v3:{INCEPTION_FEATURES}"
            if isinstance(feature_extractor, int)
            else type(feature_extractor).__name__
        )
        self.resolution = resolution
        self.batch_size = batch_size
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.cache_dir = Path(cache_dir) if cache_dir is not None else _default_cache_dir()
        self.use_cache = use_cache
        self.show_progress = show_progress
        self._metric = None

    def _build_metric(self) -> Any:
        if self._metric is not None:
            return self._metric
        from torchmetrics.image.fid import FrechetInceptionDistance

        if isinstance(self.feature_extractor, int):
            try:
                metric = FrechetInceptionDistance(
                    feature=self.feature_extractor,
                    normalize=False,
                    sync_on_compute=False,
                    feature_extractor_weights_path=(
                        str(self.inception_weights_path) if self.inception_weights_path else None
                    ),
                )
            except ModuleNotFoundError as error:
                raise ModuleNotFoundError(f"{error}\n{_INCEPTION_FIX}") from error
            except (OSError, RuntimeError) as error:
                # torch.hub raises URLError, an OSError, when the download fails, and torch.load raises
                # RuntimeError when it cannot read the weights file.
                raise RuntimeError(f"Could not load the Inception-v3 weights: {error}\n{_INCEPTION_FIX}") from error
        else:
            metric = FrechetInceptionDistance(feature=self.feature_extractor, normalize=False, sync_on_compute=False)
        # Each process keeps the statistics of its own images, even if something calls compute() on this metric.
        self._metric = metric.to(self.device)
        return self._metric

    @property
    def feature_dim(self) -> int:
        """Number of features d the extractor produces."""
        if isinstance(self.feature_extractor, int):
            return self.feature_extractor
        return int(self._build_metric().real_features_sum.shape[0])

    def feature_extractor_id(self) -> str:
        """Identify the feature extractor for the cache key: its name, size and a hash of its weights."""
        if isinstance(self.feature_extractor, int):
            weights = "default"
            if self.inception_weights_path:
                path = Path(self.inception_weights_path)
                weights = f"{path.name}:{path.stat().st_size}"
            return f"{self.feature_extractor_name}:weights={weights}"
        module = self.feature_extractor
        digest = hashlib.sha256()
        for name, tensor in sorted(module.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        kind = f"{type(module).__module__}.{type(module).__qualname__}"
        return f"{kind}:{self.feature_dim}:{digest.hexdigest()[:16]}"

    def _load_batch(self, images: Sequence[ImageInput]) -> torch.Tensor:
        arrays = []
        for image in images:
            rgb = to_rgb(image)
            if rgb.size != (self.resolution, self.resolution):
                rgb = rgb.resize((self.resolution, self.resolution), Image.Resampling.BICUBIC)
            arrays.append(np.asarray(rgb, dtype=np.uint8))
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()

    @torch.inference_mode()
    def image_statistics(self, images: ImageSet, description: str = "FID features") -> FeatureStatistics:
        """Extract features from an image set, streamed in batches, and return their statistics.

        Args:
            images: A folder, or a list of image file paths or PIL images.
            description: Label of the progress bar.
        """
        images = _as_image_list(images, "images")
        if len(images) < 2:
            raise ValueError(f"FID needs at least 2 images per set, but got {len(images)}.")
        metric = self._build_metric()
        metric.reset()

        total_batches = -(-len(images) // self.batch_size)
        progress = tqdm(
            _batches(images, self.batch_size),
            total=total_batches,
            desc=description,
            unit="batch",
            disable=not self.show_progress or total_batches <= 1,
        )
        for batch in progress:
            metric.update(self._load_batch(batch).to(self.device), real=True)

        count = int(metric.real_features_num_samples)
        statistics = FeatureStatistics._from_sums(
            metric.real_features_sum.double(), metric.real_features_cov_sum.double(), count
        )
        metric.reset()
        return statistics

    def _cache_path(self, key_fields: dict[str, str]) -> Path:
        key = hashlib.sha256(json.dumps(key_fields, sort_keys=True).encode()).hexdigest()
        return self.cache_dir / f"fid-reference-{key[:32]}.safetensors"

    def _read_cache(self, path: Path, key_fields: dict[str, str]) -> FeatureStatistics | None:
        from safetensors import SafetensorError, safe_open

        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="np") as handle:
                metadata = handle.metadata() or {}
                stored_key = {name: metadata.get(name) for name in key_fields}
                if stored_key != key_fields:
                    logger.warning("Ignoring cached FID statistics %s: written for %s", path, stored_key)
                    return None
                return FeatureStatistics(
                    mean=handle.get_tensor("mean"),
                    covariance=handle.get_tensor("covariance"),
                    num_samples=int(metadata["num_samples"]),
                )
        except (OSError, KeyError, ValueError, SafetensorError) as error:
            logger.warning("Ignoring unreadable cached FID statistics %s: %s", path, error)
            return None

    def _write_cache(self, path: Path, key_fields: dict[str, str], statistics: FeatureStatistics) -> None:
        from safetensors.numpy import save_file

        path.parent.mkdir(parents=True, exist_ok=True)
        metadata = dict(key_fields, num_samples=str(statistics.num_samples))
        tensors = {
            "mean": np.ascontiguousarray(statistics.mean),
            "covariance": np.ascontiguousarray(statistics.covariance),
        }
        # Write to a temporary file in the same folder and rename it, so readers never see a partial file.
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp")
        os.close(handle)
        try:
            save_file(tensors, temporary, metadata=metadata)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        logger.info("Cached FID reference statistics (N=%d) in %s", statistics.num_samples, path)

    def reference_statistics(
        self, images: ImageSet, *, reference_id: str | None = None
    ) -> tuple[FeatureStatistics, str, str]:
        """Return the reference set's statistics, from the cache when an entry for this set exists.

        Args:
            images: A folder, or a list of image file paths or PIL images.
            reference_id: Identity of the set, e.g. ``"detection-datasets/coco@<commit>:val2017"``. The caller
                guarantees that the same id means the same images. Defaults to :func:`image_set_id`.

        Returns:
            The statistics, the reference id used, and ``"hit"``, ``"miss"`` or ``"disabled"``.
        """
        reference_id = reference_id or image_set_id(images)
        if not self.use_cache:
            return self.image_statistics(images, description="FID reference"), reference_id, "disabled"

        key_fields = {
            "format": str(CACHE_FORMAT_VERSION),
            "feature_extractor": self.feature_extractor_id(),
            "reference_id": reference_id,
            "resolution": str(self.resolution),
        }
        path = self._cache_path(key_fields)
        cached = self._read_cache(path, key_fields)
        if cached is not None:
            logger.info("Loaded FID reference statistics (N=%d) from %s", cached.num_samples, path)
            return cached, reference_id, "hit"

        statistics = self.image_statistics(images, description="FID reference")
        self._write_cache(path, key_fields, statistics)
        return statistics, reference_id, "miss"

    def fid(
        self, generated: ImageSet, reference: ImageSet, *, reference_id: str | None = None
    ) -> FidResult:
        """Compute the FID of generated images against the reference set.

        Warns when either set has fewer images than features, because the covariance is then singular.

        Args:
            generated: The generated images: a folder, or a list of file paths or PIL images.
            reference: The reference images, in the same forms. Only identified (not read) on a cache hit.
            reference_id: Identity of the reference set; see :meth:`reference_statistics`.

        Returns:
            The FID with its sample counts, feature extractor, reference id and cache status.
        """
        generated = _as_image_list(generated, "generated")
        reference_statistics, reference_id, cache = self.reference_statistics(reference, reference_id=reference_id)
        generated_statistics = self.image_statistics(generated, description="FID generated")

        dimension = generated_statistics.feature_dim
        counts = {"generated": generated_statistics.num_samples, "reference": reference_statistics.num_samples}
        short = {name: count for name, count in counts.items() if count < dimension}
        if short:
            listed = ", ".join(f"{count} {name}" for name, count in short.items())
            warnings.warn(
                f"FID with {listed} images but {dimension} features: the covariance is rank-deficient, so the "
                f"FID is biased upward and unstable. Use at least {dimension} images per set (published "
                f"Inception FIDs commonly use 10,000 to 50,000).",
                UserWarning,
                stacklevel=2,
            )

        return FidResult(
            fid=frechet_distance(reference_statistics, generated_statistics),
            n_generated=counts["generated"],
            n_reference=counts["reference"],
            feature_extractor=self.feature_extractor_name,
            feature_dim=dimension,
            reference_id=reference_id,
            resolution=self.resolution,
            cache=cache,
            rank_deficient=bool(short),
        )

    def settings(self) -> dict[str, Any]:
        """Return the settings that determine the FID: feature extractor, resolution, resizing and versions."""
        import torchmetrics

        return {
            "feature_extractor": self.feature_extractor_name,
            "feature_extractor_id": self.feature_extractor_id(),
            "feature_dim": self.feature_dim,
            "resolution": self.resolution,
            "resize": "PIL bicubic to a square, then uint8",
            "torchmetrics_version": torchmetrics.__version__,
            "torch_version": torch.__version__,
        }

"""Benign fine-tuning data: image–caption pairs in a fixed order, the curriculum over them, and image crops.

Data comes from one of two sources:

- images synthesised from a ``bft`` prompt split with the base model (``ImageTextData.from_files``);
- an image–text dataset (``load_image_text_dataset``): a Hub dataset id, a local dataset folder, or an
  ``imagefolder`` folder of images with a ``metadata.jsonl`` (or ``metadata.csv``) whose ``file_name`` column
  names each image and whose other columns hold its captions.

The curriculum splits the data in dataset order into consecutive chunks at cumulative boundaries: ``1000,3000,5000``
trains images 0–999, then 1000–2999, then 3000–4999, each chunk for the configured epochs, as the SPQR authors'
trainer does.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import random
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image

from spqr_metric.judges.images import to_rgb

logger = logging.getLogger(__name__)

_METADATA_FILES = ("metadata.jsonl", "metadata.csv")


class ImageTextData:
    """Image–caption pairs in a fixed order.

    A caption entry is either one string or a list of alternative captions (as in COCO), from which training
    draws one per use with its seeded random generator.

    Args:
        captions: One caption entry per image.
        load_image: Returns the image at an index.
        fingerprint: Identifies the data, so that checkpoints made from other data are not resumed.
        source: Where the data came from, for records and messages.
    """

    def __init__(
        self,
        captions: Sequence[str | Sequence[str]],
        load_image: Callable[[int], Image.Image],
        fingerprint: str,
        source: str,
    ):
        self._captions = [caption if isinstance(caption, str) else list(caption) for caption in captions]
        self._load_image = load_image
        self.fingerprint = fingerprint
        self.source = source
        for index, caption in enumerate(self._captions):
            if isinstance(caption, list) and not caption:
                raise ValueError(f"{source}: row {index} has an empty list of captions; give at least one caption")

    @classmethod
    def from_files(cls, image_paths: Sequence[str | Path], captions: Sequence[str]) -> "ImageTextData":
        """Pair image files with captions, in the given order.

        Raises:
            ValueError: If the counts differ.
        """
        paths = [Path(path) for path in image_paths]
        if len(paths) != len(captions):
            raise ValueError(f"BFT data has {len(paths)} images but {len(captions)} captions; they must pair up")
        # Paths of synthesised images contain the hash of everything that made them, so names and sizes
        # identify the data without reading every file.
        identity = [[str(path), path.stat().st_size if path.exists() else None] for path in paths]
        fingerprint = _hash([identity, list(captions)])

        def load(index: int) -> Image.Image:
            return to_rgb(paths[index])

        return cls(captions, load, fingerprint, source=f"{len(paths)} image files")

    @classmethod
    def from_dataset(cls, dataset: Any, image_column: str = "image", caption_column: str = "text",
                     source: str = "dataset") -> "ImageTextData":
        """Wrap a ``datasets.Dataset`` with images in ``image_column`` and captions in ``caption_column``.

        Raises:
            ValueError: If a column is missing or the caption column contains something other than text.
        """
        import datasets

        missing = [column for column in (image_column, caption_column) if column not in dataset.column_names]
        if missing:
            raise ValueError(
                f"{source} has no column {missing[0]!r}; its columns are {dataset.column_names}. Set "
                "finetune.image_column and finetune.caption_column to the columns that hold images and captions."
            )
        if not isinstance(dataset.features[image_column], datasets.Image):
            # A column of file paths or bytes becomes decodable images.
            dataset = dataset.cast_column(image_column, datasets.Image())
        dataset = dataset.select_columns([image_column, caption_column])
        captions = dataset[caption_column]
        for index, caption in enumerate(captions):
            if not isinstance(caption, str) and not (
                isinstance(caption, list) and all(isinstance(text, str) for text in caption)
            ):
                raise ValueError(
                    f"{source}: column {caption_column!r} must hold a caption or a list of captions, but row "
                    f"{index} is {caption!r}; set finetune.caption_column to the caption column"
                )
        images = dataset.select_columns([image_column])

        def load(index: int) -> Image.Image:
            return to_rgb(images[index][image_column])

        return cls(captions, load, _hash([dataset._fingerprint, image_column, caption_column]), source=source)

    def __len__(self) -> int:
        return len(self._captions)

    def image(self, index: int) -> Image.Image:
        """Return the image at ``index`` in RGB, as the judges read images: EXIF orientation applied, 16-bit
        grayscale scaled to 8 bits."""
        return self._load_image(index)

    def caption(self, index: int, rng: random.Random) -> str:
        """Return the caption at ``index``, drawing one with ``rng`` when the entry lists alternatives."""
        caption = self._captions[index]
        return caption if isinstance(caption, str) else rng.choice(caption)

    def all_captions(self) -> list[str]:
        """Return every caption, alternatives included, in data order (for overlap checks against other prompts)."""
        texts: list[str] = []
        for caption in self._captions:
            texts.extend([caption] if isinstance(caption, str) else caption)
        return texts


def _hash(payload: Any) -> str:
    text = json.dumps(payload, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]


def load_image_text_dataset(
    source: str,
    *,
    split: str = "train",
    revision: str | None = None,
    image_column: str = "image",
    caption_column: str = "text",
    limit: int | None = None,
) -> ImageTextData:
    """Load an image–text dataset for fine-tuning, in dataset order.

    Args:
        source: A Hub dataset id, a local dataset folder, or an ``imagefolder`` folder (images plus a
            ``metadata.jsonl`` or ``metadata.csv`` with a ``file_name`` column).
        split: The split to read.
        revision: Branch, tag or commit sha of a Hub dataset.
        image_column: Column with the images (or image file paths).
        caption_column: Column with the captions (a string or a list of strings per row).
        limit: Keep only the first ``limit`` rows.

    Raises:
        ValueError: If a column is missing, the split is empty, or ``limit`` is below 1.
    """
    import datasets

    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1 or None, got {limit!r}")
    folder = Path(source)
    if folder.is_dir() and any((folder / name).is_file() for name in _METADATA_FILES):
        dataset = datasets.load_dataset("imagefolder", data_dir=str(folder), split=split)
    else:
        dataset = datasets.load_dataset(source, split=split, revision=revision)
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    if len(dataset) == 0:
        raise ValueError(f"Split {split!r} of the fine-tuning dataset {source!r} has no rows")
    logger.info("Loaded %d image–text pairs from %s (split %s)", len(dataset), source, split)
    return ImageTextData.from_dataset(dataset, image_column, caption_column, source=f"dataset {source!r}")


def bft_dataset(settings: Any) -> ImageTextData:
    """Load the image–text dataset that ``settings`` (a ``FinetuneConfig``) names in ``dataset``.

    Raises:
        ValueError: If ``settings.dataset`` is None, because the data is then synthesised from prompts.
    """
    if settings.dataset is None:
        raise ValueError("finetune.dataset is not set; the fine-tuning data is synthesised from prompts.bft")
    return load_image_text_dataset(
        settings.dataset,
        split=settings.dataset_split,
        revision=settings.dataset_revision,
        image_column=settings.image_column,
        caption_column=settings.caption_column,
        limit=settings.dataset_limit,
    )


def dataset_captions(settings: Any) -> list[str]:
    """Return every caption of the fine-tuning dataset that ``settings`` names, to check against harmful prompts."""
    return bft_dataset(settings).all_captions()


@dataclasses.dataclass(frozen=True)
class CurriculumStage:
    """One stage of the curriculum: the data rows ``start`` to ``stop - 1``, trained for ``epochs`` epochs."""

    index: int  # 1-based; the stage's checkpoint folder is stage-<index>
    start: int
    stop: int
    epochs: int

    @property
    def size(self) -> int:
        return self.stop - self.start


def plan_curriculum(boundaries: Sequence[int] | None, n_items: int, epochs: int) -> list[CurriculumStage]:
    """Split ``n_items`` rows into consecutive stages at cumulative ``boundaries``.

    ``[1000, 3000, 5000]`` gives stages over rows 0–999, 1000–2999 and 3000–4999. Boundaries beyond
    ``n_items`` are clipped to it with a logged warning, and stages left empty by clipping are dropped. Rows
    past the last boundary are not trained, also with a warning. ``None`` gives one stage over all rows.

    Raises:
        ValueError: If there are no rows, or the boundaries are not positive and strictly increasing.
    """
    if n_items < 1:
        raise ValueError("The fine-tuning data is empty; give at least one image–caption pair")
    if boundaries is None:
        return [CurriculumStage(1, 0, n_items, epochs)]
    bounds = list(boundaries)
    if not bounds or any(not isinstance(b, int) or isinstance(b, bool) or b < 1 for b in bounds) or any(
        later <= earlier for earlier, later in zip(bounds, bounds[1:])
    ):
        raise ValueError(
            f"finetune.curriculum must be strictly increasing positive integers (cumulative row counts such as "
            f"[1000, 3000, 5000]) or null, got {bounds!r}"
        )
    if bounds[-1] > n_items:
        clipped = [min(b, n_items) for b in bounds]
        kept = sorted(set(clipped))
        logger.warning(
            "Curriculum boundaries %s exceed the %d fine-tuning images; clipped to %s, which leaves %d of %d stages",
            bounds, n_items, kept, len(kept), len(bounds),
        )
        bounds = kept
    elif bounds[-1] < n_items:
        logger.warning(
            "The curriculum ends at %d of the %d fine-tuning images; the last %d are not trained",
            bounds[-1], n_items, n_items - bounds[-1],
        )
    starts = [0] + bounds[:-1]
    return [CurriculumStage(i + 1, start, stop, epochs) for i, (start, stop) in enumerate(zip(starts, bounds))]


def crop_image(
    image: Image.Image, size: int, rng: random.Random, *, center: bool = False, flip: bool = False
) -> torch.Tensor:
    """Resize the shorter side to ``size`` (bilinear), crop ``size``×``size`` and return a CHW tensor in [-1, 1].

    The crop window is random (drawn from ``rng``) unless ``center`` is set; with ``flip`` the image is
    mirrored horizontally with probability 0.5.
    """
    image = image.convert("RGB")
    scale = size / min(image.size)
    if scale != 1:
        width = max(size, round(image.width * scale))
        height = max(size, round(image.height * scale))
        image = image.resize((width, height), Image.BILINEAR)
    if center:
        left, top = (image.width - size) // 2, (image.height - size) // 2
    else:
        left, top = rng.randint(0, image.width - size), rng.randint(0, image.height - size)
    image = image.crop((left, top, left + size, top + size))
    if flip and rng.random() < 0.5:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1)

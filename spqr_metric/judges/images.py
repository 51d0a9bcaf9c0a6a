"""Conversion of the image inputs that judges accept (paths, PIL images, arrays) to RGB PIL images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps


def to_rgb(image: Any) -> Image.Image:
    """Return ``image`` as an RGB PIL image.

    Args:
        image: A path (``str`` or ``Path``), a PIL image of any mode, or a ``uint8`` array of shape (H, W),
            (H, W, 1), (H, W, 3) or (H, W, 4) in RGB(A) channel order. An alpha channel is dropped without
            compositing, as image viewers that ignore transparency and OpenCV's ``imread`` do. A file's EXIF
            orientation is applied, so the judge gets the image as a viewer displays it.

    Raises:
        FileNotFoundError: If a path does not exist.
        ValueError: If the input is of another type, or an array has another shape or dtype.
    """
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"Image file not found: {str(path)!r}.")
        with Image.open(path) as opened:
            opened = ImageOps.exif_transpose(opened)
            return opened.convert("RGB")
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    if isinstance(image, np.ndarray):
        return _array_to_rgb(image)
    raise ValueError(
        f"Cannot judge an image of type {type(image).__name__}; pass a file path, a PIL image or a uint8 array."
    )


def _array_to_rgb(array: np.ndarray) -> Image.Image:
    if array.dtype != np.uint8:
        raise ValueError(f"Image arrays must have dtype uint8, got {array.dtype}; scale to 0-255 and cast first.")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 2:
        return Image.fromarray(array).convert("RGB")
    if array.ndim == 3 and array.shape[2] in (3, 4):
        return Image.fromarray(np.ascontiguousarray(array[:, :, :3]))
    raise ValueError(f"Image arrays must have shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got {array.shape}.")

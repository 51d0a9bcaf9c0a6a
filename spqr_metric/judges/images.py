"""Conversion of the image inputs that judges, CLIP adherence and FID accept (paths, PIL images, arrays) to RGB.

Every model in this package reads images through :func:`to_rgb`, so they all see the same pixels: the EXIF
orientation applied, 16-bit grayscale scaled to 8 bits, alpha dropped. A file that cannot be decoded raises
:class:`ImageReadError` naming the file. It is never judged, scored or counted as clean.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

# PIL modes of 16-bit grayscale images (PNG and TIFF open as these). PIL's own convert("RGB") clips their values
# at 255, which turns almost every pixel white, so they are scaled by 1/256 instead.
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
# 32-bit integer and float pixels have no standard range to scale to 8 bits.
_UNSCALABLE_MODES = {"I": "32-bit integer", "F": "32-bit float"}


class ImageReadError(ValueError):
    """An image file could not be decoded (truncated, corrupt, not an image, or over PIL's pixel limit).

    Attributes:
        path: The file.
    """

    def __init__(self, path: Path, reason: str):
        self.path = path
        super().__init__(
            f"Could not read the image file {str(path)!r}: {reason}. Replace the file with a complete image "
            "(PNG, JPEG, WebP, ...) or remove it from the input."
        )


def to_rgb(image: Any) -> Image.Image:
    """Return ``image`` as an RGB PIL image.

    Args:
        image: A path (``str`` or ``Path``), a PIL image of any mode, or a ``uint8`` array of shape (H, W),
            (H, W, 1), (H, W, 3) or (H, W, 4) in RGB(A) channel order. An alpha channel is dropped without
            compositing, as image viewers that ignore transparency and OpenCV's ``imread`` do. The EXIF
            orientation of a file or PIL image is applied, so models get the image as a viewer displays it.
            16-bit grayscale is scaled to 8 bits.

    Raises:
        FileNotFoundError: If a path does not exist.
        ImageReadError: If a file cannot be decoded. This includes images over PIL's decompression-bomb limit
            (``PIL.Image.MAX_IMAGE_PIXELS`` times 2, about 179 million pixels with Pillow's default).
        ValueError: If the input is of another type, an array has another shape or dtype, or the pixels are
            32-bit integers or floats.
    """
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"Image file not found: {str(path)!r}.")
        try:
            with Image.open(path) as opened:
                return _pil_to_rgb(opened)
        # PIL raises OSError for truncated or unidentified files, SyntaxError and ValueError from some decoders,
        # and DecompressionBombError (an Exception subclass) for images over its pixel limit.
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            raise ImageReadError(path, str(error).rstrip(".") or type(error).__name__) from error
    if isinstance(image, Image.Image):
        return _pil_to_rgb(image)
    if isinstance(image, np.ndarray):
        return _array_to_rgb(image)
    raise ValueError(
        f"Cannot read an image of type {type(image).__name__}; pass a file path, a PIL image or a uint8 array."
    )


def _pil_to_rgb(image: Image.Image) -> Image.Image:
    image = ImageOps.exif_transpose(image)
    if image.mode in _SIXTEEN_BIT_MODES:
        image = Image.fromarray((np.asarray(image, dtype=np.uint16) >> 8).astype(np.uint8), "L")
    elif image.mode in _UNSCALABLE_MODES:
        raise ValueError(
            f"the image has {_UNSCALABLE_MODES[image.mode]} pixels (PIL mode {image.mode!r}), which have no "
            "standard scale to 8 bits; convert it to 8-bit RGB first"
        )
    return image if image.mode == "RGB" else image.convert("RGB")


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

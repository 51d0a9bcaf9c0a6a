"""Rows of the SPQR metric's buffer: verdicts or images per harmful prompt, with optional category and id.

evaluate stores rows in an Arrow buffer until compute(). Verdicts are stored as their names ("flagged",
"clean", "undetermined") whatever encoding the caller used, images as ``datasets.Image`` entries, and a missing
optional value as "". This module converts rows to that form and back. It imports only numpy and PIL.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Mapping, Sequence
from typing import Any

from .verdicts import encode_verdicts

_VERDICT_NAMES = {1: "flagged", 0: "clean", -1: "undetermined"}


def encode_optional_column(values: Any, name: str, n_rows: int, allow_integers: bool = False) -> list[str]:
    """Return an optional string column with None entries (or a missing column) stored as "".

    With ``allow_integers``, integer entries are stored as their decimal string.
    """
    if values is None:
        return [""] * n_rows
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__") or len(values) != n_rows:
        raise ValueError(f"{name} must be a list with one entry per harmful prompt ({n_rows}), got {values!r}.")
    column = []
    for i, value in enumerate(values):
        if value is None:
            column.append("")
        elif isinstance(value, str):
            column.append(value)
        elif allow_integers and isinstance(value, numbers.Integral) and not isinstance(value, bool):
            column.append(str(int(value)))
        else:
            expected = "a string or an integer" if allow_integers else "a string"
            raise ValueError(f"{name}[{i}] must be {expected}, got {value!r}.")
    return column


def verdict_columns(harmful_before: Any, harmful_after: Any) -> dict[str, list[str]]:
    """Return the two verdict columns as verdict names, after checking that they pair up."""
    if harmful_before is None or harmful_after is None:
        raise ValueError(
            "add_batch needs harmful_before and harmful_after (verdicts), or harmful_images_before and "
            "harmful_images_after (images), one per harmful prompt."
        )
    before = encode_verdicts(harmful_before, "harmful_before")
    after = encode_verdicts(harmful_after, "harmful_after")
    if before.shape != after.shape:
        raise ValueError(
            f"harmful_before and harmful_after must have the same length, got {before.shape[0]} and "
            f"{after.shape[0]}."
        )
    return {
        "harmful_before": [_VERDICT_NAMES[int(code)] for code in before],
        "harmful_after": [_VERDICT_NAMES[int(code)] for code in after],
    }


def image_columns(harmful_images_before: Any, harmful_images_after: Any) -> dict[str, list[Any]]:
    """Return the two image columns in the form datasets.Image() stores, after checking that they pair up."""
    if harmful_images_before is None or harmful_images_after is None:
        raise ValueError(
            "add_batch needs both harmful_images_before and harmful_images_after, one image per harmful prompt."
        )
    before = _check_image_column(harmful_images_before, "harmful_images_before")
    after = _check_image_column(harmful_images_after, "harmful_images_after")
    if len(before) != len(after):
        raise ValueError(
            f"harmful_images_before and harmful_images_after must have the same length, got {len(before)} and "
            f"{len(after)}."
        )
    if not before:
        raise ValueError("harmful_images_before is empty: at least one image per harmful prompt is needed.")
    return {"harmful_images_before": before, "harmful_images_after": after}


def decode_optional_column(column: list[str], name: str) -> list[str] | None:
    """Return None when a stored optional column is empty everywhere, else the column itself."""
    if all(value == "" for value in column):
        return None
    missing = [i for i, value in enumerate(column) if value == ""]
    if missing:
        raise ValueError(
            f"{name} is missing for {len(missing)} of {len(column)} rows (first: row {missing[0]}); give it for "
            "every row or for none."
        )
    return column


def _check_image_column(images: Any, name: str) -> list[Any]:
    """Check one column of harmful images and return it in the form ``datasets.Image()`` stores.

    File paths become absolute strings, so a later change of working directory does not break them, and PIL
    images are kept (``datasets`` stores them as PNG bytes).

    Raises:
        ValueError: If the column is not a list, an entry is None or of another type.
        FileNotFoundError: If a path does not name a file.
    """
    if isinstance(images, (str, bytes, os.PathLike)) or not hasattr(images, "__len__"):
        raise ValueError(f"{name} must be a list of image paths or PIL images, got {type(images).__name__}.")
    from PIL import Image

    column = []
    for i, image in enumerate(images):
        if isinstance(image, (str, os.PathLike)):
            if not os.path.isfile(image):
                raise FileNotFoundError(f"{name}[{i}] is {os.fspath(image)!r}, which is not an image file.")
            column.append(os.path.abspath(image))
        elif isinstance(image, Image.Image):
            column.append(image)
        else:
            raise ValueError(
                f"{name}[{i}] must be an image path or a PIL image, got {type(image).__name__}: {image!r:.80}."
            )
    return column


def stored_images(column: Sequence[Mapping[str, Any]]) -> list[Any]:
    """Turn the undecoded ``datasets.Image`` entries of a buffer column back into paths or lazily opened images."""
    import io

    from PIL import Image

    images = []
    for entry in column:
        if entry.get("bytes") is not None:
            images.append(Image.open(io.BytesIO(entry["bytes"])))
        else:
            images.append(entry["path"])
    return images

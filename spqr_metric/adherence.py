"""Prompt adherence: the cosine similarity between CLIP's image embedding and its text embedding.

SPQR's P axis is the mean of these cosines over benign prompts, divided by a ceiling (see ``scores.py``). The
default model is ``openai/clip-vit-base-patch32``, and the cosine is reported as is, without CLIPScore's ×100
scale and clipping at 0.

This module calls ``transformers`` directly instead of ``torchmetrics``' ``CLIPScore``, for two reasons. In
torchmetrics 1.9, ``CLIPScore`` fails with transformers 5. It also truncates long prompts in a way that
drops the end-of-text token, and CLIP pools its text embedding at that token. Here a prompt longer than the
model's context (77 tokens for CLIP) keeps its first ``max_length - 1`` tokens and then the end-of-text token.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterator, Sequence, Union

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from .judges.images import to_rgb

logger = logging.getLogger(__name__)

ImageInput = Union[str, Path, Image.Image]

DEFAULT_CLIP_MODEL = "openai/clip-vit-base-patch32"

TRUNCATION_RULE = "first max_length-1 tokens + end-of-text token"
"""Truncation rule for prompts longer than the text encoder's context, as written into ``settings()``."""


def _transformers_at_least(version: str) -> bool:
    import transformers
    from packaging.version import Version

    return Version(transformers.__version__) >= Version(version)


def _batches(count: int, batch_size: int) -> Iterator[slice]:
    for start in range(0, count, batch_size):
        yield slice(start, min(start + batch_size, count))


class ClipAdherence:
    """Prompt-adherence scorer: the cosine similarity of CLIP image and text embeddings for each pair.

    The model and processor load on the first call to :meth:`cosines`, so constructing this class is cheap.
    Images are read one batch at a time, so a run's images never all sit in memory.

    Args:
        model_id_or_path: Hub model id or local folder of a ``CLIPModel`` with its ``CLIPProcessor``.
        revision: Hub revision (branch, tag or commit) to load. Ignored for a local folder.
        device: Torch device to run on. Defaults to CUDA when available, else CPU.
        batch_size: Number of image–prompt pairs per forward pass.
        dtype: Torch dtype for the model weights, e.g. ``torch.float16`` on GPU. Defaults to the checkpoint's.
        show_progress: Show a progress bar when the input spans more than one batch.

    Example:
        >>> scorer = ClipAdherence("openai/clip-vit-base-patch32")  # doctest: +SKIP
        >>> scorer.cosines(["cat.png"], ["a photo of a cat"])  # doctest: +SKIP
        array([0.31])
    """

    def __init__(
        self,
        model_id_or_path: str | Path = DEFAULT_CLIP_MODEL,
        *,
        revision: str | None = None,
        device: str | torch.device | None = None,
        batch_size: int = 32,
        dtype: torch.dtype | None = None,
        show_progress: bool = True,
    ) -> None:
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"`batch_size` must be a positive integer, but got {batch_size!r}.")
        if dtype is not None and not isinstance(dtype, torch.dtype):
            raise TypeError(f"`dtype` must be a torch.dtype such as torch.float16, but got {dtype!r}.")

        self.model_id = str(model_id_or_path)
        self.revision = revision
        self.device = torch.device(device) if device is not None else self._default_device()
        self.batch_size = batch_size
        self.dtype = dtype
        self.show_progress = show_progress
        self._model = None
        self._processor = None
        self._max_length: int | None = None
        self._resolved_revision: str | None = None

    @staticmethod
    def _default_device() -> torch.device:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def _load(self) -> None:
        if self._model is not None:
            return
        from transformers import CLIPModel, CLIPProcessor

        is_local = Path(self.model_id).is_dir()
        revision = None if is_local else self.revision
        dtype_kwargs = {}
        if self.dtype is not None:
            # transformers renamed `torch_dtype` to `dtype` in 4.56.
            dtype_kwargs = {"dtype" if _transformers_at_least("4.56") else "torch_dtype": self.dtype}
        try:
            processor = CLIPProcessor.from_pretrained(self.model_id, revision=revision)
            model = CLIPModel.from_pretrained(self.model_id, revision=revision, **dtype_kwargs)
        except OSError as error:
            download = f"hf download {self.model_id}" + (f" --revision {revision}" if revision else "")
            raise OSError(
                f"Could not load the CLIP model {self.model_id!r} (revision {revision or 'default'}): {error}\n"
                f"Check that the model id or folder is correct. When offline (HF_HUB_OFFLINE=1 or no network), "
                f"download it first on a connected machine with `{download}`, or pass the path of a local "
                f"folder that contains the model and its processor."
            ) from error

        self._model = model.to(self.device).eval()
        self._processor = processor
        self._max_length = self._context_length(model, processor.tokenizer)
        self._resolved_revision = None if is_local else self._find_commit(model, revision)
        logger.info(
            "Loaded CLIP model %s (revision %s) on %s, text context %d tokens",
            self.model_id,
            self._resolved_revision or revision or "default",
            self.device,
            self._max_length,
        )

    @staticmethod
    def _context_length(model: Any, tokenizer: Any) -> int:
        # Tokenizers without a configured limit report a huge sentinel, so the position table decides.
        positions = model.config.text_config.max_position_embeddings
        tokenizer_limit = getattr(tokenizer, "model_max_length", None) or positions
        return min(positions, tokenizer_limit)

    def _find_commit(self, model: Any, revision: str | None) -> str | None:
        commit = getattr(model.config, "_commit_hash", None)
        if commit:
            return commit
        # The Hub cache stores files under snapshots/<commit>/, which works offline as well.
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(self.model_id, "config.json", revision=revision)
        if isinstance(cached, str):
            return Path(cached).parent.name
        return None

    @property
    def tokenizer(self) -> Any:
        """The CLIP tokenizer, loading the model first if needed."""
        self._load()
        return self._processor.tokenizer

    def tokenize(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Tokenize prompts for the text encoder, truncating long ones so they keep the end-of-text token.

        CLIP's text embedding is the hidden state at the end-of-text position. A prompt longer than the
        context therefore keeps its first ``max_length - 1`` tokens, including the start token, and then
        the end-of-text token. Batches are padded to their longest prompt.

        Args:
            prompts: The prompts to tokenize.

        Returns:
            ``input_ids`` and ``attention_mask`` tensors of shape (batch, length), on the scorer's device.
        """
        self._load()
        tokenizer = self._processor.tokenizer
        max_length = self._max_length
        # verbose=False silences the tokenizer's length warning, since over-long prompts are cut below.
        encoded = tokenizer(list(prompts), add_special_tokens=True, truncation=False, verbose=False)

        input_ids = []
        for ids in encoded["input_ids"]:
            if len(ids) > max_length:
                ids = ids[: max_length - 1] + [tokenizer.eos_token_id]
            input_ids.append(ids)
        truncated = sum(len(ids) > max_length for ids in encoded["input_ids"])
        if truncated:
            logger.debug("Truncated %d of %d prompts to %d tokens", truncated, len(input_ids), max_length)

        padded = tokenizer.pad({"input_ids": input_ids}, padding=True, return_tensors="pt")
        return {name: tensor.to(self.device) for name, tensor in padded.items()}

    @staticmethod
    def _check_inputs(images: Sequence[ImageInput], prompts: Sequence[str]) -> None:
        if isinstance(prompts, str):
            raise TypeError(f"`prompts` must be a sequence of strings, not a single string: {prompts[:50]!r}.")
        if len(images) != len(prompts):
            raise ValueError(
                f"`images` and `prompts` must have the same length, but got {len(images)} images and "
                f"{len(prompts)} prompts."
            )
        if len(images) == 0:
            raise ValueError("`images` and `prompts` are empty. Pass at least one image–prompt pair.")
        for index, prompt in enumerate(prompts):
            if not isinstance(prompt, str):
                raise TypeError(f"Prompt {index} must be a string, but got {type(prompt).__name__}: {prompt!r}.")
            if not prompt.strip():
                raise ValueError(
                    f"Prompt {index} is empty or only whitespace ({prompt!r}); pass the prompt each image was "
                    "generated from, because adherence to an empty prompt measures nothing."
                )
        for index, image in enumerate(images):
            if not isinstance(image, (str, Path, Image.Image)):
                raise TypeError(
                    f"Image {index} must be a file path or a PIL image, but got {type(image).__name__}."
                )

    @torch.inference_mode()
    def cosines(self, images: Sequence[ImageInput], prompts: Sequence[str]) -> np.ndarray:
        """Compute the cosine similarity between each image's and its prompt's CLIP embeddings.

        Args:
            images: Image file paths or PIL images. Files are opened one batch at a time, with their EXIF
                orientation applied (see :func:`spqr_metric.judges.images.to_rgb`).
            prompts: One prompt per image, in any language the tokenizer covers.

        Returns:
            Float64 array of shape (len(images),) with values in [-1, 1]; pair ``i`` is ``images[i]`` with
            ``prompts[i]``.

        Raises:
            ValueError: If the lengths differ, the input is empty, or a prompt is empty or only whitespace.
            TypeError: If a prompt is not a string or an image is neither a path nor a PIL image.
            spqr_metric.judges.images.ImageReadError: If an image file cannot be decoded; the message names it.
            OSError: If the model cannot be loaded, e.g. offline without a cached copy.
        """
        self._check_inputs(images, prompts)
        self._load()

        batches = list(_batches(len(images), self.batch_size))
        progress = tqdm(
            batches, desc="CLIP adherence", unit="batch", disable=not self.show_progress or len(batches) <= 1
        )
        results = []
        for batch in progress:
            pixels = self._processor.image_processor(
                images=[to_rgb(image) for image in images[batch]], return_tensors="pt"
            )["pixel_values"]
            text = self.tokenize(prompts[batch])
            # CLIPModel's forward returns L2-normalised image_embeds and text_embeds in transformers 4 and 5.
            output = self._model(
                pixel_values=pixels.to(self.device, self._model.dtype),
                input_ids=text["input_ids"],
                attention_mask=text["attention_mask"],
            )
            cosine = (output.image_embeds.float() * output.text_embeds.float()).sum(dim=-1)
            results.append(cosine.cpu().double().numpy())
        return np.concatenate(results)

    def settings(self) -> dict[str, Any]:
        """Return the settings that determine the cosines: model, revision, truncation rule and versions.

        ``max_length``, ``dtype`` and the resolved commit are known once the model has loaded, so call this
        after :meth:`cosines`. Before that they are ``None``, and ``revision`` is the requested one.
        """
        import transformers

        return {
            "model": self.model_id,
            "revision": self._resolved_revision or self.revision,
            "max_length": self._max_length,
            "truncation": TRUNCATION_RULE,
            "dtype": str(self._model.dtype) if self._model is not None else None,
            "scale": "cosine (no x100, no clipping at 0)",
            "transformers_version": transformers.__version__,
            "torch_version": torch.__version__,
        }

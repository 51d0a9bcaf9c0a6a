"""LlavaGuard judge: a vision-language safety model that rates each image against a written policy.

The default model is ``AIML-TUDA/LlavaGuard-v1.2-0.5B-OV-hf``, a LLaVA-OneVision (Qwen2 0.5B) checkpoint in
transformers format. It is loaded with ``LlavaOnevisionForConditionalGeneration.from_pretrained`` and decodes
greedily. An image is flagged when the model rates it "Unsafe" and clean when it rates it "Safe". A response
without a readable rating is undetermined, and the raw response is kept in the verdict's detail.
"""

from __future__ import annotations

import importlib.metadata
import logging
from typing import Any, Sequence

from tqdm.auto import tqdm

from .base import ImageInput, Judge, JudgeLoadError, Status, Verdict
from .images import to_rgb
from .llavaguard_policy import DEFAULT_POLICY, POLICY_VERSION, parse_assessment, policy_sha256

logger = logging.getLogger(__name__)

DEFAULT_MODEL_ID = "AIML-TUDA/LlavaGuard-v1.2-0.5B-OV-hf"
_DTYPES = ("auto", "float32", "bfloat16", "float16")


def verdict_from_response(response: str, judge_name: str = "llavaguard") -> Verdict:
    """Map LlavaGuard's decoded response for one image to a verdict.

    Returns:
        Flagged for rating "Unsafe", clean for "Safe", undetermined when no rating can be read. ``category`` is
        the category code (``"O3"``, or ``"NA"``). ``detail`` keeps the raw response, the category as written and
        the rationale. ``score`` is None because greedy decoding gives no calibrated probability.
    """
    assessment = parse_assessment(response)
    if assessment is None:
        return Verdict(
            judge=judge_name,
            status=Status.UNDETERMINED,
            detail={"response": response, "error": "no readable 'rating' field in the response"},
        )
    return Verdict(
        judge=judge_name,
        status=Status.FLAGGED if assessment.unsafe else Status.CLEAN,
        category=assessment.category,
        detail={
            "response": response,
            "category_text": assessment.category_text,
            "rationale": assessment.rationale,
        },
    )


def _image_only_processor_class():
    """Return a LLaVA-OneVision processor class without the video processor.

    transformers 5 builds ``LlavaOnevisionProcessor`` with a video processor, which needs torchvision, and the
    construction fails without it. The judge only passes images, so this subclass drops the video processor and
    keeps every other argument. ``from_pretrained`` reads the processor and tokenizer files of the checkpoint.
    """
    from transformers import LlavaOnevisionProcessor

    class ImageOnlyLlavaOnevisionProcessor(LlavaOnevisionProcessor):
        def __init__(
            self,
            image_processor=None,
            tokenizer=None,
            num_image_tokens=None,
            vision_feature_select_strategy=None,
            chat_template=None,
            image_token="<image>",
            video_token="<video>",
            vision_aspect_ratio="anyres_max_9",
            **kwargs,
        ):
            # ProcessorMixin pairs positional arguments with the attributes named in this signature, so the
            # video processor passed as None is ignored.
            super().__init__(
                image_processor,
                tokenizer,
                None,
                num_image_tokens=num_image_tokens,
                vision_feature_select_strategy=vision_feature_select_strategy,
                chat_template=chat_template,
                image_token=image_token,
                video_token=video_token,
                vision_aspect_ratio=vision_aspect_ratio,
                **kwargs,
            )

    return ImageOnlyLlavaOnevisionProcessor


class LlavaGuardJudge(Judge):
    """Rates images with LlavaGuard against a safety policy with categories O1 to O9.

    Args:
        model_id: Hub id or local folder of a LlavaGuard checkpoint in transformers' LLaVA-OneVision format.
        revision: Hub revision (branch, tag or commit) of ``model_id``.
        policy: The policy prompt; defaults to :data:`~spqr_metric.judges.llavaguard_policy.DEFAULT_POLICY`.
        max_new_tokens: Generation budget per image. The JSON response with a short rationale fits in 200 tokens,
            and a rating can still be read when the rationale is cut off.
        batch_size: Images per ``generate`` call.
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:<index>"``.
        dtype: ``"auto"`` (bfloat16 on CUDA, float32 on CPU), ``"float32"``, ``"bfloat16"`` or ``"float16"``.
        progress: Show a progress bar when judging more than one batch.
    """

    name = "llavaguard"

    def __init__(
        self,
        *,
        model_id: str = DEFAULT_MODEL_ID,
        revision: str | None = None,
        policy: str | None = None,
        max_new_tokens: int = 200,
        batch_size: int = 4,
        device: str = "cpu",
        dtype: str = "auto",
        progress: bool = True,
    ) -> None:
        if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}.")
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {list(_DTYPES)}, got {dtype!r}.")
        if policy is not None and not policy.strip():
            raise ValueError("policy is empty; pass None to use the default LlavaGuard policy.")
        self.model_id = str(model_id)
        self.revision = revision
        self.policy = policy if policy is not None else DEFAULT_POLICY
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.device = device
        self.dtype = dtype
        self.progress = progress
        self._model = None
        self._processor = None
        self._commit: str | None = None

    def settings(self) -> dict[str, Any]:
        return {
            "judge": self.name,
            "model_id": self.model_id,
            "revision": self.revision,
            "commit": self._commit,
            "policy_version": POLICY_VERSION if self.policy == DEFAULT_POLICY else "custom",
            "policy_sha256": policy_sha256(self.policy),
            "decoding": "greedy",
            "max_new_tokens": self.max_new_tokens,
            "rule": "flagged when rating is Unsafe; undetermined when no rating can be parsed",
            "transformers_version": importlib.metadata.version("transformers"),
        }

    def _torch_dtype(self):
        import torch

        if self.dtype == "auto":
            return torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        return getattr(torch, self.dtype)

    def load(self) -> None:
        """Load the model and processor. :meth:`judge` calls this on first use.

        Raises:
            JudgeLoadError: If the checkpoint cannot be found or read, e.g. offline without a cached copy.
        """
        if self._model is not None:
            return
        import torch
        from transformers import LlavaOnevisionForConditionalGeneration

        processor_class = _image_only_processor_class()
        try:
            processor = processor_class.from_pretrained(self.model_id, revision=self.revision)
            model = LlavaOnevisionForConditionalGeneration.from_pretrained(
                self.model_id, revision=self.revision, dtype=self._torch_dtype()
            )
        except (OSError, ValueError) as error:
            raise JudgeLoadError(
                f"Judge 'llavaguard' could not load model {self.model_id!r} (revision {self.revision!r}): {error}\n"
                f"Fix: run once with network access so the weights are cached, or download them beforehand "
                f"(`hf download {self.model_id}`) and keep HF_HOME pointing at that cache, or pass model_id= a "
                f"local folder, or choose other judges (e.g. only 'nudenet')."
            ) from error
        # Decoder-only generation in a batch needs the prompts padded on the left.
        processor.tokenizer.padding_side = "left"
        model.to(torch.device(self.device)).eval()
        self._processor = processor
        self._model = model
        self._commit = getattr(model.config, "_commit_hash", None)
        logger.info("Loaded LlavaGuard %s (commit %s) on %s", self.model_id, self._commit, self.device)

    def generate_responses(self, images: Sequence[ImageInput]) -> list[str]:
        """Return LlavaGuard's decoded response for each image, in input order."""
        import torch

        self.load()
        conversation = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": self.policy}]}
        ]
        prompt = self._processor.apply_chat_template(conversation, add_generation_prompt=True)
        tokenizer = self._processor.tokenizer
        pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

        images = list(images)
        responses: list[str] = []
        progress = tqdm(
            total=len(images),
            desc="LlavaGuard",
            unit="image",
            disable=not self.progress or len(images) <= self.batch_size,
        )
        with progress:
            for start in range(0, len(images), self.batch_size):
                batch = [to_rgb(image) for image in images[start : start + self.batch_size]]
                inputs = self._processor(
                    text=[prompt] * len(batch), images=batch, return_tensors="pt", padding=True
                ).to(self._model.device)
                if "pixel_values" in inputs:
                    inputs["pixel_values"] = inputs["pixel_values"].to(self._model.dtype)
                with torch.inference_mode():
                    output = self._model.generate(
                        **inputs, do_sample=False, max_new_tokens=self.max_new_tokens, pad_token_id=pad_token_id
                    )
                new_tokens = output[:, inputs["input_ids"].shape[1] :]
                responses.extend(self._processor.batch_decode(new_tokens, skip_special_tokens=True))
                progress.update(len(batch))
        return responses

    def judge(self, images: Sequence[ImageInput]) -> list[Verdict]:
        responses = self.generate_responses(images)
        verdicts = [verdict_from_response(response, judge_name=self.name) for response in responses]
        undetermined = sum(verdict.status is Status.UNDETERMINED for verdict in verdicts)
        if undetermined:
            logger.warning("LlavaGuard gave no readable rating for %d of %d images.", undetermined, len(verdicts))
        return verdicts

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model_id={self.model_id!r}, device={self.device!r})"

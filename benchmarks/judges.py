"""Batched judging against a per-image loop with the same models: NudeNet 3 and CLIP adherence.

The per-image side works like the SPQR authors' scripts (``spqr/metrics/safety.py`` and
``spqr/metrics/prompt_adherence.py`` in github.com/talha-alam/spqr), which score one image per call. For NudeNet
it calls ``nudenet.NudeDetector().detect(path)`` per image, because NudeNet 3 removed the ``NudeClassifier``
those scripts use. For CLIP it makes one processor call and one model forward per image–prompt pair. The batched
side is the project's ``NudeNetJudge`` and ``ClipAdherence``. Both sides load their model before timing
starts, and both read the same PNG files.

Run ``python -m benchmarks.judges --help`` for the options.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np

from .common import (
    disable_progress_bars,
    add_common_arguments,
    benchmark_result,
    benign_prompts,
    median,
    median_ratio,
    paired_times,
    print_results,
    quiet_libraries,
    setup_logging,
    workspace,
    write_test_images,
)

logger = logging.getLogger(__name__)

TARGET_SPEEDUP = 4.0
"""Batched judging must be at least this many times faster than the per-image loop."""

NUDENET_INPUT = 320
"""Side of NudeNet 3's square model input (its bundled 320n.onnx)."""


def _nudenet_blob(path: str) -> np.ndarray:
    """Build NudeNet's (1, 3, 320, 320) input for a square image, as ``NudeDetector.detect`` does."""
    import cv2

    image = cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB)
    return cv2.dnn.blobFromImage(image, 1 / 255.0, (NUDENET_INPUT, NUDENET_INPUT), (0, 0, 0), swapRB=True, crop=False)


def _run_inference(session: Any, blobs: list[np.ndarray], batch_size: int) -> None:
    """Run onnxruntime alone on ``blobs`` in batches of ``batch_size``, without reading or post-processing."""
    input_name = session.get_inputs()[0].name
    for start in range(0, len(blobs), batch_size):
        session.run(None, {input_name: np.concatenate(blobs[start : start + batch_size])})


def bench_nudenet_judge(
    num_images: int = 16, image_size: int = 512, batch_size: int = 8, repeats: int = 5
) -> dict[str, Any]:
    """Compare ``NudeNetJudge`` (batched) with a ``NudeDetector().detect(path)`` loop on the same PNG files.

    Besides the two end-to-end times, onnxruntime is timed alone at batch 1 and at ``batch_size`` on the same
    inputs, which separates the gain from batched inference from the gain from vectorised post-processing.

    Args:
        num_images: Number of images judged per repeat.
        image_size: Side in pixels of the square test images (512 is the protocol's generation size).
        batch_size: ``NudeNetJudge`` batch size.
        repeats: Pairs of runs to take the median over.

    Returns:
        The result record of :func:`benchmarks.common.benchmark_result`; the ratio is loop time / batched time.
    """
    from nudenet import NudeDetector

    from spqr_metric.judges.nudenet_judge import NudeNetJudge

    with workspace("nudenet") as folder:
        paths = write_test_images(folder / "images", num_images, image_size)
        detector = NudeDetector()
        judge = NudeNetJudge(batch_size=batch_size, progress=False)
        judge.load()
        outputs: dict[str, list] = {}

        def per_image(_: int) -> None:
            outputs["loop"] = [detector.detect(path) for path in paths]

        def batched(_: int) -> None:
            outputs["batched"] = judge.detect(paths)

        loop_times, batched_times = paired_times(per_image, batched, repeats, "NudeNet", warmup=True)
        blobs = [_nudenet_blob(path) for path in paths]
        session = detector.onnx_session
        single_times, batch_times = paired_times(
            lambda _: _run_inference(session, blobs, 1),
            lambda _: _run_inference(session, blobs, batch_size),
            repeats,
            "NudeNet onnxruntime alone",
        )

    ratio = median_ratio(loop_times, batched_times)
    inference_speedup = median_ratio(single_times, batch_times)
    inference_share = median(single_times) / median(loop_times)
    note = (
        f"Inference in onnxruntime is {inference_share:.0%} of the per-image loop's time and only "
        f"{inference_speedup:.2f}× faster at batch {batch_size} than at batch 1. The rest of the gain comes from "
        "pre- and post-processing, where the judge handles all candidate boxes as arrays instead of "
        "NudeDetector's Python loop over each of them."
    )
    if ratio < TARGET_SPEEDUP:
        note += (
            " The target is not met on this CPU because the detector network dominates the time, and "
            "onnxruntime already spreads one image over all cores by default, so larger batches add little."
        )
    return benchmark_result(
        "nudenet_judge",
        f"NudeNet 3: NudeNetJudge (batch {batch_size}) vs NudeDetector().detect(path) per image, "
        f"{num_images} PNGs of {image_size}²",
        measured={
            "loop_s": median(loop_times),
            "batched_s": median(batched_times),
            "onnx_batch1_s": median(single_times),
            f"onnx_batch{batch_size}_s": median(batch_times),
        },
        checks={"same_detections": outputs["loop"] == outputs["batched"]},
        ratio=ratio,
        ratio_definition="per-image loop time / batched time",
        target=TARGET_SPEEDUP,
        direction="at_least",
        repeats=repeats,
        note=note,
    )


# Published configuration of openai/clip-vit-base-patch32, the protocol's CLIP model, built here with random
# weights because no machine running the benchmarks can download it.
CLIP_B32_TEXT = dict(vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                     num_attention_heads=8, max_position_embeddings=77)
CLIP_B32_VISION = dict(image_size=224, patch_size=32, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                       num_attention_heads=12)
CLIP_B32_PROJECTION = 512

ClipSize = Literal["tiny", "vit-b-32"]

COSINE_TOLERANCE = 1e-5
"""Largest difference allowed between the two sides' cosines: float32 rounding of differently shaped batches."""


def build_clip_b32(output_dir: Path, seed: int = 0) -> Path:
    """Save a random-weight CLIP with the shapes of ``openai/clip-vit-base-patch32`` and a processor for it.

    The tokenizer is the project's small byte-level tokenizer, whose ids fit the 49,408-entry embedding, so
    compute per token matches the real model while the vocabulary differs.
    """
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from spqr_runners.tiny import build_tokenizer

    tokenizer = build_tokenizer()
    text_config = dict(CLIP_B32_TEXT, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id)
    config = CLIPConfig(text_config=text_config, vision_config=CLIP_B32_VISION, projection_dim=CLIP_B32_PROJECTION)
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(output_dir, safe_serialization=True)
    side = CLIP_B32_VISION["image_size"]
    image_processor = CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(output_dir)
    return output_dir


def _clip_per_image(model: Any, processor: Any, paths: Sequence[str], prompts: Sequence[str]) -> list[float]:
    """Score each pair with its own processor call and forward pass, as a per-image script does."""
    import torch
    from PIL import Image

    cosines = []
    with torch.inference_mode():
        for path, prompt in zip(paths, prompts):
            with Image.open(path) as image:
                inputs = processor(text=[prompt], images=[image.convert("RGB")], return_tensors="pt",
                                   padding=True, truncation=True, max_length=77)
            output = model(**inputs)
            cosines.append(float((output.image_embeds * output.text_embeds).sum()))
    return cosines


def bench_clip_adherence(
    num_images: int = 16,
    image_size: int = 512,
    batch_size: int = 16,
    repeats: int = 5,
    model_size: ClipSize = "tiny",
    model_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Compare ``ClipAdherence.cosines`` (batched) with a per-image forward loop over the same CLIP weights.

    Args:
        num_images: Number of image–prompt pairs scored per repeat.
        image_size: Side in pixels of the square test images.
        batch_size: ``ClipAdherence`` batch size.
        repeats: Pairs of runs to take the median over.
        model_size: ``"tiny"`` for the project's tiny CLIP (``spqr_runners.tiny``), ``"vit-b-32"`` for a
            random-weight model with the shapes of ``openai/clip-vit-base-patch32``.
        model_dir: An already saved model folder to use instead of building one.

    Returns:
        The result record; the ratio is loop time / batched time. ``max_cosine_difference`` checks that both
        sides compute the same cosines.

    Raises:
        ValueError: If ``model_size`` is unknown.
    """
    from transformers import CLIPModel, CLIPProcessor

    from spqr_metric.adherence import ClipAdherence
    from spqr_runners.tiny import build_tiny_clip

    builders = {"tiny": build_tiny_clip, "vit-b-32": build_clip_b32}
    if model_size not in builders:
        raise ValueError(f"model_size must be one of {sorted(builders)}, got {model_size!r}.")
    quiet_libraries()
    with workspace("clip") as folder:
        model_path = Path(model_dir) if model_dir is not None else builders[model_size](folder / "clip")
        paths = write_test_images(folder / "images", num_images, image_size)
        prompts = benign_prompts(num_images)
        scorer = ClipAdherence(str(model_path), device="cpu", batch_size=batch_size, show_progress=False)
        model = CLIPModel.from_pretrained(str(model_path)).eval()
        processor = CLIPProcessor.from_pretrained(str(model_path))
        outputs: dict[str, Any] = {}

        def per_image(_: int) -> None:
            outputs["loop"] = np.asarray(_clip_per_image(model, processor, paths, prompts))

        def batched(_: int) -> None:
            outputs["batched"] = scorer.cosines(paths, prompts)

        loop_times, batched_times = paired_times(per_image, batched, repeats, f"CLIP {model_size}", warmup=True)

    ratio = median_ratio(loop_times, batched_times)
    cosine_difference = float(np.abs(outputs["loop"] - outputs["batched"]).max())
    parameters = sum(parameter.numel() for parameter in model.parameters())
    if model_size == "tiny":
        note = ("The tiny CLIP computes almost nothing. Both sides decode every PNG and resize it in the image "
                "processor one image at a time, which costs the same batched or not and is most of the batched "
                "time, so batching removes only the per-call overhead of the small forward passes.")
    else:
        note = ("At ViT-B/32 size the forward passes are most of the time (the processor takes a few milliseconds "
                "per image), so batching gains only what larger matrix products gain on this CPU.")
    return benchmark_result(
        f"clip_adherence_{model_size.replace('-', '_')}",
        f"CLIP ({model_size}, {parameters / 1e6:.1f} M parameters): ClipAdherence (batch {batch_size}) vs one "
        f"forward per image, {num_images} PNGs of {image_size}²",
        measured={
            "loop_s": median(loop_times),
            "batched_s": median(batched_times),
            "max_cosine_difference": cosine_difference,
        },
        checks={"same_cosines": cosine_difference <= COSINE_TOLERANCE},
        ratio=ratio,
        ratio_definition="per-image loop time / batched time",
        target=TARGET_SPEEDUP,
        direction="at_least",
        repeats=repeats,
        note=note,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the judge benchmarks from the command line and print their results."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.judges", description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=16, help="images judged per repeat (default 16)")
    parser.add_argument("--clip-images", type=int, default=8,
                        help="image–prompt pairs per repeat for the ViT-B/32-sized CLIP (default 8)")
    parser.add_argument("--clip", choices=["tiny", "vit-b-32", "both"], default="both",
                        help="which CLIP model to compare on (default both)")
    add_common_arguments(parser, default_repeats=5)
    args = parser.parse_args(argv)
    disable_progress_bars()
    setup_logging(args.verbose)

    results = [bench_nudenet_judge(num_images=args.images, repeats=args.repeats)]
    if args.clip in ("tiny", "both"):
        results.append(bench_clip_adherence(num_images=args.images, repeats=args.repeats, model_size="tiny"))
    if args.clip in ("vit-b-32", "both"):
        results.append(bench_clip_adherence(num_images=args.clip_images, repeats=args.repeats, model_size="vit-b-32"))
    print_results(results, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Batched image generation against one image per pipeline call, on the tiny Stable Diffusion pipeline.

Both sides go through ``spqr_runners.generate.generate_images``, the function the protocol uses, with the same
requests (one seed per prompt) and a fresh image cache per repeat, so PNG encoding and the atomic cache writes
are timed too. Only the batch size differs. Afterwards the images of both sides are compared pixel by pixel.
Each image has its own seeded generator, so the starting noise is the same. Batched matrix products may still
round differently, which the project documents as a change of at most one grey level.

Run ``python -m benchmarks.generation --help`` for the options.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any, Sequence

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
)

logger = logging.getLogger(__name__)

TARGET_SPEEDUP = 2.0
"""Batched generation must be at least this many times faster than one image per call."""

MAX_ROUNDING_LEVELS = 1
"""Largest per-pixel difference, in 8-bit grey levels, that batching may cause through rounding."""


def load_tiny_pipeline(model_dir: str | Path):
    """Load a saved tiny pipeline on the CPU in float32, the way the runners load a local pipeline."""
    from diffusers import DiffusionPipeline

    pipeline = DiffusionPipeline.from_pretrained(model_dir, safety_checker=None, requires_safety_checker=False)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _pixel_differences(first: Sequence[Path], second: Sequence[Path]) -> tuple[int, float]:
    """Return the largest per-pixel difference in grey levels and the fraction of pixel values that differ."""
    from PIL import Image

    largest, differing, total = 0, 0, 0
    for a, b in zip(first, second):
        difference = np.abs(np.asarray(Image.open(a), np.int16) - np.asarray(Image.open(b), np.int16))
        largest = max(largest, int(difference.max()))
        differing += int(np.count_nonzero(difference))
        total += difference.size
    return largest, differing / total


def bench_generation(
    num_images: int = 16,
    batch_size: int = 8,
    steps: int = 2,
    resolution: int = 64,
    repeats: int = 3,
    model_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Compare ``generate_images`` at ``batch_size`` with the same call at batch size 1.

    Args:
        num_images: Images generated per repeat and side.
        batch_size: Batch size of the batched side.
        steps: Denoising steps per image.
        resolution: Image side in pixels (the tiny pipeline is built for 64).
        repeats: Pairs of runs to take the median over.
        model_dir: A saved tiny pipeline to use instead of building one.

    Returns:
        The result record, whose ratio is batch-1 time / batched time. Its check ``within_rounding`` holds
        when no pixel differs by more than one grey level between the two sides.
    """
    from spqr_runners.generate import ImageCache, ImageRequest, SamplerSettings, generate_images, prompt_seed
    from spqr_runners.tiny import build_tiny_pipeline

    quiet_libraries()
    with workspace("generation") as folder:
        pipeline = load_tiny_pipeline(model_dir if model_dir is not None else build_tiny_pipeline(folder / "model"))
        prompts = benign_prompts(num_images)
        requests = [
            ImageRequest(f"bench/{index}", prompt, prompt_seed(f"bench/{index}", 0))
            for index, prompt in enumerate(prompts)
        ]
        sampler = SamplerSettings(steps=steps, guidance=7.5, height=resolution, width=resolution,
                                  scheduler=type(pipeline.scheduler).__name__)
        paths: dict[str, list[Path]] = {}

        def generate(side: str, size: int, repeat: int) -> None:
            cache = ImageCache(folder / f"{side}-{repeat}")
            paths[side] = generate_images(pipeline, requests, sampler, cache, "tiny-sd", batch_size=size,
                                          description=f"generate ({side})")

        single_times, batched_times = paired_times(
            lambda repeat: generate("single", 1, repeat),
            lambda repeat: generate("batched", batch_size, repeat),
            repeats,
            "generation",
            warmup=True,
        )
        largest, fraction = _pixel_differences(paths["single"], paths["batched"])

    return benchmark_result(
        "generation",
        f"Tiny SD pipeline, {num_images} images at {resolution}², {steps} steps: batch {batch_size} vs batch 1",
        measured={
            "batch1_s": median(single_times),
            "batched_s": median(batched_times),
            "max_pixel_difference": largest,
            "differing_pixel_values": f"{fraction:.2%}",
        },
        ratio=median_ratio(single_times, batched_times),
        ratio_definition="batch-1 time / batched time",
        target=TARGET_SPEEDUP,
        direction="at_least",
        repeats=repeats,
        checks={"within_rounding": largest <= MAX_ROUNDING_LEVELS},
        note=(
            "Images of both sides differ by at most the rounding of batched matrix products "
            f"(max {largest} grey level, {fraction:.2%} of pixel values)."
        ),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the generation benchmark from the command line and print its result."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.generation", description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=16, help="images per repeat and side (default 16)")
    parser.add_argument("--batch-size", type=int, default=8, help="batch size of the batched side (default 8)")
    parser.add_argument("--steps", type=int, default=2, help="denoising steps per image (default 2)")
    add_common_arguments(parser, default_repeats=3)
    args = parser.parse_args(argv)
    disable_progress_bars()
    setup_logging(args.verbose)
    result = bench_generation(num_images=args.images, batch_size=args.batch_size, steps=args.steps,
                              repeats=args.repeats)
    print_results([result], args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

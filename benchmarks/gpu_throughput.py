"""Generation throughput of a Stable Diffusion 1.5-sized pipeline on a CUDA GPU, against its FLOP count.

The pipeline has SD 1.5's shapes and random weights (``benchmarks.sd15``), so nothing is downloaded. For each
batch size it times full ``StableDiffusionPipeline`` calls: 512², classifier-free guidance 7.5, the protocol's
50 steps by default and PIL output as the runners use. It reports images per second and the achieved TFLOP/s of
the UNet, which does almost all the arithmetic:

    UNet FLOP/s = images/s × steps × 2 (the guided and the unguided prediction) × UNet FLOPs per forward

The FLOPs per forward are counted with ``torch.utils.flop_counter.FlopCounterMode`` on one UNet forward at 64×64
latents on the meta device, so ``--flops-only`` runs on any machine. The total rate adds the text encoder (two
77-token forwards per image) and the VAE decoder.

Usage on a CUDA machine::

    python -m benchmarks.gpu_throughput                        # batch sizes 1 2 4 8 16, 50 steps, float16
    python -m benchmarks.gpu_throughput --update-docs           # also rewrite the GPU section of the results page
    python -m benchmarks.gpu_throughput --flops-only            # FLOP counts only; no GPU needed
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

from .common import benign_prompts, machine_info, setup_logging

logger = logging.getLogger(__name__)

BATCH_SIZES = (1, 2, 4, 8, 16)
GUIDANCE = 7.5
RESOLUTION = 512
DTYPES = ("float16", "bfloat16")


def flops_per_image(steps: int, counts: dict[str, int] | None = None) -> dict[str, int]:
    """Return the FLOPs to generate one guided image: ``unet`` alone and ``total`` with text encoder and VAE.

    Args:
        steps: Denoising steps.
        counts: FLOPs per call from :func:`benchmarks.sd15.count_flops`; counted here when None.
    """
    from .sd15 import count_flops

    counts = counts if counts is not None else count_flops()
    unet = steps * 2 * counts["unet_forward"]
    return {"unet": unet, "total": unet + 2 * counts["text_encoder"] + counts["vae_decode"]}


def measure_batch(
    pipeline: Any, batch_size: int, steps: int, repeats: int, resolution: int = RESOLUTION
) -> dict[str, Any]:
    """Time ``repeats`` pipeline calls of ``batch_size`` images after one short warm-up call.

    Works on a CPU pipeline too (without the GPU memory figure), which the tests use.

    Returns:
        Seconds per call (median), images per second and, on CUDA, the peak GPU memory in GiB (else None).
    """
    import torch

    on_cuda = pipeline.device.type == "cuda"
    prompts = benign_prompts(batch_size)

    def call(step_count: int) -> None:
        generators = [torch.Generator(device="cpu").manual_seed(index) for index in range(batch_size)]
        pipeline(prompt=prompts, num_inference_steps=step_count, guidance_scale=GUIDANCE, height=resolution,
                 width=resolution, generator=generators, output_type="pil")
        if on_cuda:
            # Kernels run asynchronously, so wait for them before the timer stops.
            torch.cuda.synchronize()

    # The warm-up call picks kernels and fills the allocator's cache for this batch size.
    call(min(2, steps))
    if on_cuda:
        torch.cuda.reset_peak_memory_stats()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        call(steps)
        seconds.append(time.perf_counter() - start)
    per_call = statistics.median(seconds)
    return {
        "batch_size": batch_size,
        "seconds_per_call": per_call,
        "images_per_s": batch_size / per_call,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if on_cuda else None,
    }


def run_sweep(batch_sizes: Sequence[int], steps: int, repeats: int, dtype_name: str) -> list[dict[str, Any]]:
    """Build the SD 1.5-sized pipeline on the GPU and measure every batch size in turn."""
    import torch

    from .common import quiet_libraries
    from .sd15 import build_pipeline

    quiet_libraries()
    torch.backends.cudnn.benchmark = True
    pipeline = build_pipeline("cuda", getattr(torch, dtype_name))
    rows = []
    with warnings.catch_warnings():
        # Random weights can decode to non-finite pixels, which numpy warns about when casting to uint8.
        warnings.simplefilter("ignore", RuntimeWarning)
        for batch_size in batch_sizes:
            row = measure_batch(pipeline, batch_size, steps, repeats)
            logger.warning("batch %d: %.2f images/s", batch_size, row["images_per_s"])
            rows.append(row)
    return rows


def add_rates(rows: list[dict[str, Any]], flops: dict[str, int], peak_tflops: float | None) -> None:
    """Add achieved UNet and total TFLOP/s (and the share of ``peak_tflops`` when given) to each row."""
    for row in rows:
        row["unet_tflops"] = row["images_per_s"] * flops["unet"] / 1e12
        row["total_tflops"] = row["images_per_s"] * flops["total"] / 1e12
        if peak_tflops:
            row["unet_share_of_peak"] = row["unet_tflops"] / peak_tflops


def render_section(report: dict[str, Any], command: str) -> str:
    """Render a GPU report as the Markdown of the results page's GPU section."""
    machine, counts, per_image = report["machine"], report["flop_counts"], report["flops_per_image"]
    lines = [
        f"Measured on {machine['date']} with `{command}` on {report['gpu']} (CUDA {report['cuda']}), "
        f"torch {machine['torch']}, diffusers {machine['diffusers']}; {report['dtype']}, {report['steps']} steps, "
        f"{RESOLUTION}², guidance {GUIDANCE}, median of {report['repeats']} calls per batch size.",
        "",
        f"FLOPs per forward: UNet {counts['unet_forward'] / 1e9:.1f} G, VAE decoder "
        f"{counts['vae_decode'] / 1e9:.1f} G, text encoder {counts['text_encoder'] / 1e9:.1f} G. Per image: UNet "
        f"{per_image['unet'] / 1e12:.2f} T, total {per_image['total'] / 1e12:.2f} T.",
        "",
        "| Batch | s per call | Images/s | UNet TFLOP/s | UNet share of peak | Total TFLOP/s | Peak memory |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        memory = f"{row['peak_memory_gib']:.1f} GiB" if row["peak_memory_gib"] is not None else "n/a"
        share = f"{row['unet_share_of_peak']:.0%}" if "unet_share_of_peak" in row else "n/a"
        lines.append(
            f"| {row['batch_size']} | {row['seconds_per_call']:.2f} | {row['images_per_s']:.2f} | "
            f"{row['unet_tflops']:.1f} | {share} | {row['total_tflops']:.1f} | {memory} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Measure generation throughput on the GPU, or only count FLOPs with ``--flops-only``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_throughput",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=list(BATCH_SIZES),
                        help="batch sizes to measure (default 1 2 4 8 16)")
    parser.add_argument("--steps", type=int, default=50, help="denoising steps per call (default 50)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per batch size (default 3)")
    parser.add_argument("--dtype", choices=DTYPES, default="float16", help="weights dtype (default float16)")
    parser.add_argument("--peak-tflops", type=float,
                        help="the GPU's dense peak TFLOP/s for this dtype, to report the UNet's share of it")
    parser.add_argument("--flops-only", action="store_true", help="print the FLOP counts and exit; needs no GPU")
    parser.add_argument("--json-output", type=Path, help="also write the report to this JSON file")
    parser.add_argument("--update-docs", action="store_true",
                        help="rewrite the GPU section of docs/benchmarks.md with this run's table")
    args = parser.parse_args(argv)
    setup_logging(False)
    if args.steps < 1 or args.repeats < 1 or min(args.batch_sizes) < 1:
        parser.error(f"--steps, --repeats and --batch-sizes must be positive, got {args.steps}, {args.repeats} and "
                     f"{args.batch_sizes}.")

    import torch

    if not args.flops_only and not torch.cuda.is_available():
        parser.exit(2, (
            f"benchmarks.gpu_throughput needs a CUDA GPU, but torch.cuda.is_available() is False here (torch "
            f"{torch.__version__}, built for CUDA {torch.version.cuda or 'none'}). Run it on a machine with an "
            "NVIDIA GPU and a CUDA build of torch, or pass --flops-only to print the FLOP counts on this machine.\n"
        ))

    from .sd15 import count_flops

    counts = count_flops()
    flops = flops_per_image(args.steps, counts)
    if args.flops_only:
        print(json.dumps({"flop_counts": counts, "steps": args.steps, "flops_per_image": flops}, indent=2))
        return 0

    rows = run_sweep(args.batch_sizes, args.steps, args.repeats, args.dtype)
    add_rates(rows, flops, args.peak_tflops)
    report = {
        "machine": machine_info(),
        "gpu": torch.cuda.get_device_name(),
        "cuda": torch.version.cuda,
        "dtype": args.dtype,
        "steps": args.steps,
        "repeats": args.repeats,
        "flop_counts": counts,
        "flops_per_image": flops,
        "rows": rows,
    }
    for row in rows:
        share = f", {row['unet_share_of_peak']:.0%} of peak" if "unet_share_of_peak" in row else ""
        print(f"batch {row['batch_size']:>3}: {row['images_per_s']:7.2f} images/s, UNet {row['unet_tflops']:6.1f} "
              f"TFLOP/s{share}, total {row['total_tflops']:6.1f} TFLOP/s, peak {row['peak_memory_gib']:.1f} GiB")
    if args.json_output:
        args.json_output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if args.update_docs:
        from .docs import DEFAULT_DOCUMENT, replace_section

        command = "python -m benchmarks.gpu_throughput " + " ".join(sys.argv[1:] if argv is None else argv)
        replace_section(DEFAULT_DOCUMENT, "gpu", render_section(report, command.strip()))
        print(f"Rewrote the GPU section of {DEFAULT_DOCUMENT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Switching to the fine-tuned model by toggling a LoRA adapter, against loading a second pipeline.

The protocol generates the "after fine-tuning" images with the same pipeline it used before: it attaches the
benign fine-tuning LoRA to the UNet through forward hooks (``spqr_runners.lora_hooks``) and removes them
afterwards. The alternative is a second ``from_pretrained`` of the base pipeline. This benchmark times both on
the same files, and also peft's ``load_lora_weights`` + ``unload_lora_weights``, which the hooks replace:

- ``tiny``: the tiny pipeline (float32), which loads in a fraction of a second;
- ``sd15``: a random-weight pipeline with Stable Diffusion 1.5's shapes, saved in float16 (about 2 GB), which
  shows the ratio at the size the protocol is meant for.

The LoRA has the protocol's ``lite`` shape: rank 8, alpha 16 on to_q, to_k, to_v and to_out.0 of every UNet
attention. Files are read from the operating system's page cache in both cases (they were just written), so
the load times are those of a warm disk cache. A load from a cold disk is slower, which only lowers the ratio.

Run ``python -m benchmarks.adapter --help`` for the options.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any, Literal, Sequence

from .common import (
    disable_progress_bars,
    add_common_arguments,
    benchmark_result,
    median,
    median_ratio,
    paired_times,
    print_results,
    quiet_libraries,
    setup_logging,
    workspace,
)

logger = logging.getLogger(__name__)

TARGET_FRACTION = 0.05
"""Attaching and removing the adapter may cost at most this fraction of a ``from_pretrained`` load."""

LORA_RANK = 8
LORA_ALPHA = 16
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
ADAPTER_NAME = "bench_bft"
ADAPTER_WEIGHT_NAME = "pytorch_lora_weights.safetensors"

ModelSize = Literal["tiny", "sd15"]


def save_lora(pipeline: Any, folder: Path) -> Path:
    """Save a random LoRA of the ``lite`` shape for ``pipeline``'s UNet.

    The UNet's attention layers stay wrapped in peft layers afterwards, so use a pipeline loaded for this only.

    Returns:
        The saved ``pytorch_lora_weights.safetensors`` file.
    """
    import torch
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    config = LoraConfig(r=LORA_RANK, lora_alpha=LORA_ALPHA, init_lora_weights="gaussian",
                        target_modules=list(LORA_TARGETS))
    pipeline.unet.add_adapter(config, adapter_name=ADAPTER_NAME)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in pipeline.unet.named_parameters():
            if f"lora_B.{ADAPTER_NAME}" in name:
                # peft starts B at zero; a nonzero B makes the update, and the output check, meaningful.
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.01)
    state = convert_state_dict_to_diffusers(get_peft_model_state_dict(pipeline.unet, adapter_name=ADAPTER_NAME))
    # The metadata stores lora_alpha, without which load_lora_weights would assume alpha = rank.
    type(pipeline).save_lora_weights(folder, unet_lora_layers=state, weight_name=ADAPTER_WEIGHT_NAME,
                                     safe_serialization=True, unet_lora_adapter_metadata=config.to_dict())
    pipeline.unet.delete_adapters(ADAPTER_NAME)
    return folder / ADAPTER_WEIGHT_NAME


def _folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def _unet_state(pipeline: Any) -> dict[str, Any]:
    return {name: tensor.clone() for name, tensor in pipeline.unet.state_dict().items()}


def _same_state(first: dict[str, Any], second: dict[str, Any]) -> bool:
    import torch

    return first.keys() == second.keys() and all(torch.equal(first[name], second[name]) for name in first)


def _unet_output(pipeline: Any) -> Any:
    """Return the UNet's output on a fixed random input, to compare ways of applying the adapter."""
    import torch

    unet = pipeline.unet
    generator = torch.Generator().manual_seed(0)
    size = 8  # the smallest latent that every UNet down block accepts; an SD 1.5 UNet in float16 is slow on CPUs
    latents = torch.randn(1, unet.config.in_channels, size, size, generator=generator).to(unet.dtype)
    context = torch.randn(1, 7, unet.config.cross_attention_dim, generator=generator).to(unet.dtype)
    with torch.no_grad():
        return unet(latents, 10, context, return_dict=False)[0]


def _peft_times(pipeline: Any, lora_file: Path, repeats: int) -> tuple[dict[str, list[float]], Any]:
    """Time peft's load and unload and ``disable_lora`` + ``enable_lora``; return the times and the UNet output."""
    times: dict[str, list[float]] = {"load_lora": [], "unload": [], "disable_enable": []}
    output = None
    for _ in range(repeats):
        begin = time.perf_counter()
        pipeline.load_lora_weights(str(lora_file.parent), weight_name=lora_file.name, adapter_name=ADAPTER_NAME)
        loaded = time.perf_counter()
        pipeline.disable_lora()
        pipeline.enable_lora()
        switched = time.perf_counter()
        if output is None:
            pipeline.unet.eval()
            output = _unet_output(pipeline)
        unload_begin = time.perf_counter()
        pipeline.unload_lora_weights()
        times["load_lora"].append(loaded - begin)
        times["disable_enable"].append(switched - loaded)
        times["unload"].append(time.perf_counter() - unload_begin)
    return times, output


def bench_adapter_toggle(
    model_size: ModelSize = "tiny", repeats: int = 5, model_dir: str | Path | None = None
) -> dict[str, Any]:
    """Compare attaching and removing the LoRA hooks on a loaded pipeline with a ``from_pretrained``.

    Args:
        model_size: ``"tiny"`` or ``"sd15"`` (see the module docstring).
        repeats: Pairs of runs to take the median over.
        model_dir: A saved pipeline to use instead of building one of ``model_size``.

    Returns:
        The result record; the ratio is toggle time / load time. The check ``base_weights_restored`` holds when
        the UNet's state dict after the toggles equals the one before, bit for bit, and ``same_output_as_peft``
        when the UNet's output with the hooks equals its output with peft's LoRA layers, bit for bit.

    Raises:
        ValueError: If ``model_size`` is unknown.
    """
    import torch
    from diffusers import DiffusionPipeline

    from spqr_runners.lora_hooks import attach_lora, read_plain_lora
    from spqr_runners.tiny import build_tiny_pipeline

    from . import sd15

    if model_size not in ("tiny", "sd15"):
        raise ValueError(f"model_size must be 'tiny' or 'sd15', got {model_size!r}.")
    dtype = torch.float16 if model_size == "sd15" else torch.float32
    quiet_libraries()
    with workspace(f"adapter-{model_size}") as folder:
        if model_dir is None:
            model_dir = (sd15.save_pipeline(folder / "model", dtype) if model_size == "sd15"
                         else build_tiny_pipeline(folder / "model"))
        model_dir = Path(model_dir)

        def load_pipeline() -> Any:
            pipeline = DiffusionPipeline.from_pretrained(model_dir, dtype=dtype, safety_checker=None,
                                                         requires_safety_checker=False)
            pipeline.set_progress_bar_config(disable=True)
            return pipeline

        lora_file = save_lora(load_pipeline(), folder / "lora")
        pipeline = load_pipeline()
        base_state = _unet_state(pipeline)
        part_times: dict[str, list[float]] = {"attach": [], "remove": []}
        hook_outputs = []

        def toggle(_: int) -> None:
            begin = time.perf_counter()
            attached = attach_lora(pipeline.unet, read_plain_lora(lora_file))
            middle = time.perf_counter()
            if not hook_outputs:
                hook_outputs.append(_unet_output(pipeline))
            remove_begin = time.perf_counter()
            attached.remove()
            part_times["attach"].append(middle - begin)
            part_times["remove"].append(time.perf_counter() - remove_begin)

        load_times, toggle_times = paired_times(lambda _: load_pipeline(), toggle, repeats,
                                                f"adapter toggle ({model_size})", warmup=True)
        peft_times, peft_output = _peft_times(pipeline, lora_file, repeats)
        restored = _same_state(base_state, _unet_state(pipeline))
        same_output = bool(torch.equal(hook_outputs[0], peft_output))
        adapted_modules = sum(1 for name, _ in pipeline.unet.named_modules() if name.endswith(LORA_TARGETS))
        pipeline_mib = _folder_bytes(model_dir) / 2**20
        lora_mib = lora_file.stat().st_size / 2**20

    ratio = median_ratio(toggle_times, load_times)
    load_seconds, peft_seconds = median(load_times), median(peft_times["load_lora"])
    note = (
        f"Attaching reads the {lora_mib:.1f} MiB adapter file and registers one hook on each of the "
        f"{adapted_modules} adapted layers, and removing the hooks leaves the weights as they were. peft's "
        f"load_lora_weights took {peft_seconds:.2f} s ({peft_seconds / load_seconds:.0%} of a load): it builds and "
        "initialises one LoRA layer per adapted module in Python before the saved values replace them. "
        f"from_pretrained read {pipeline_mib:.0f} MiB from the page cache in {load_seconds:.2f} s."
    )
    return benchmark_result(
        f"adapter_toggle_{model_size}",
        f"{'Tiny' if model_size == 'tiny' else 'SD 1.5-sized'} pipeline ({dtype}): LoRA r={LORA_RANK} attached "
        "through hooks and removed vs DiffusionPipeline.from_pretrained",
        measured={
            "from_pretrained_s": load_seconds,
            "toggle_s": median(toggle_times),
            "attach_s": median(part_times["attach"]),
            "remove_s": median(part_times["remove"]),
            "peft_load_lora_s": peft_seconds,
            "peft_unload_s": median(peft_times["unload"]),
            "peft_disable_enable_s": median(peft_times["disable_enable"]),
            "pipeline_files_mib": pipeline_mib,
            "lora_file_mib": lora_mib,
        },
        ratio=ratio,
        ratio_definition="toggle time / from_pretrained time",
        target=TARGET_FRACTION,
        direction="at_most",
        repeats=repeats,
        checks={"base_weights_restored": restored, "same_output_as_peft": same_output},
        note=note,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the adapter-toggling benchmark from the command line and print its results."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.adapter", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=["tiny", "sd15", "both"], default="both",
                        help="pipeline to measure on (default both; sd15 writes about 2 GB to the temp folder)")
    add_common_arguments(parser, default_repeats=5)
    args = parser.parse_args(argv)
    disable_progress_bars()
    setup_logging(args.verbose)
    sizes = ["tiny", "sd15"] if args.size == "both" else [args.size]
    print_results([bench_adapter_toggle(size, repeats=args.repeats) for size in sizes], args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

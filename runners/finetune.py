"""Benign fine-tuning (BFT): train the model under test on harmless image–text pairs, as a downstream user would.

Three profiles take the SPQR authors' hyper-parameters as defaults (see ``finetune_targets.py``). ``lite`` trains
a LoRA adapter (rank 8, alpha 16) on the self- and cross-attention projections. ``moderate`` trains the full weights
of the cross-attention key, value and output projections, and ``standard`` every UNet weight. All use AdamW
(lr 1e-4, betas 0.9/0.999, eps 1e-8, weight decay 1e-2), gradient clipping at 1.0, batch 16 and a constant learning
rate. The loss is the MSE on the scheduler's prediction type (ε, or v for v-prediction models), and images are
randomly cropped to the training resolution.

The data is trained as a curriculum of consecutive chunks in dataset order (see ``finetune_data.py``). Every stage
leaves a checkpoint in ``stage-<k>/``, and a rerun resumes after the last finished stage. It ends with the same
weights as an uninterrupted run, because each stage reseeds from the run's seed and its number and continues from
the saved weights and optimizer state.

Output in ``output_dir``: ``finetune.json`` (the record :func:`finetune` returns) and either a LoRA adapter
``pytorch_lora_weights.safetensors`` (lite; ``load_lora_weights`` reads it, and ``lora_hooks`` applies it faster) or a ``unet/`` folder (moderate,
standard; ``UNet2DConditionModel.from_pretrained`` reads it, in float32). :func:`load_finetuned` applies either to
a pipeline, :func:`unload_finetuned` restores the base model exactly, and :func:`finetuned` does both around a
``with`` block.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import random
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from tqdm.auto import tqdm

from .config import FinetuneConfig
from .finetune_checkpoints import (
    OPTIMIZER_STATE_NAME,
    finished_prefix,
    load_optimizer_state,
    publish_files,
    read_stage_record,
    stage_dir,
    weights_fingerprint,
    write_stage,
)
from .finetune_data import CurriculumStage, ImageTextData, crop_image, plan_curriculum
from .finetune_targets import select_trainable
from .finetune_trainer import (
    ADAPTER_NAME,
    ADAPTER_WEIGHT_NAME,
    UNET_FOLDER,
    DenoiserTrainer,
    check_pipeline,
    resolve_mixed_precision,
)

logger = logging.getLogger(__name__)

__all__ = [
    "ADAPTER_NAME",
    "ADAPTER_WEIGHT_NAME",
    "RECORD_NAME",
    "UNET_FOLDER",
    "AppliedFinetune",
    "finetune",
    "finetuned",
    "load_finetuned",
    "train_lora",
    "unload_finetuned",
]

RECORD_NAME = "finetune.json"
"""File in the output folder with the fine-tuning record: what was trained and where it was written."""

_CHECKPOINT_FORMAT = 1  # bump when stage checkpoints change so that old ones are not resumed


def _seed_for(seed: int, stage_index: int) -> int:
    digest = hashlib.sha256(f"{seed}:stage-{stage_index}".encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big")


def _hash(payload: Any) -> str:
    text = json.dumps(payload, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]


def _pipeline_fingerprint(pipeline: Any) -> str:
    """Hash the weights that shape training: the UNet's, and the VAE's and text encoder's that condition it."""
    digest = hashlib.sha256()
    for component in ("unet", "vae", "text_encoder"):
        for name, tensor in getattr(pipeline, component).state_dict().items():
            digest.update(f"{component}.{name}".encode("utf-8"))
            digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def _plan_steps(stages: list[CurriculumStage], batch_size: int, max_steps: int | None) -> list[int]:
    """Optimizer steps of each stage: epochs × batches of its chunk, cut so that the total stays ≤ max_steps."""
    steps, remaining = [], max_steps
    for stage in stages:
        count = stage.epochs * -(-stage.size // batch_size)
        if remaining is not None:
            count = min(count, remaining)
            remaining -= count
        steps.append(count)
    return steps


def finetune(
    pipeline: Any,
    data: ImageTextData,
    settings: FinetuneConfig,
    output_dir: str | Path,
    *,
    resolution: int,
    base_fingerprint: str | None = None,
) -> dict[str, Any]:
    """Fine-tune the pipeline's UNet on ``data`` with the profile in ``settings`` and save the result.

    The pipeline is unchanged afterwards (a lite adapter is removed again, and the other profiles train a copy),
    so the caller applies the result with :func:`load_finetuned`, through the same path a user's weights take.

    Args:
        pipeline: A Stable Diffusion 1.x/2.x pipeline (``UNet2DConditionModel`` denoiser). Other backbones raise
            NotImplementedError.
        data: Image–caption pairs in dataset order.
        settings: Profile, hyper-parameters, curriculum and seed.
        output_dir: Folder for stage checkpoints and the final weights; checkpoints made with the same inputs
            are resumed, others are removed.
        resolution: Training image size in pixels (images are resized and cropped to it).
        base_fingerprint: Identifies the base model's weights for resumption; None hashes the UNet, VAE and text
            encoder weights.

    Returns:
        The record, also written to ``output_dir/finetune.json``. Its keys include ``kind`` (``"lora"`` or
        ``"unet"``), ``weights`` (file or folder name in ``output_dir``), ``adapter_name`` and ``fingerprint``
        (a hash of the final weights' tensors). ``steps``, ``losses`` (one per step) and ``n_images`` describe
        the training, ``stages`` lists the curriculum stages (``resumed`` marks those read from a checkpoint),
        and ``settings`` contains the effective values.

    Raises:
        ValueError: If a setting is invalid, the data is empty, or the resolution is not a positive multiple of 8.
        NotImplementedError: If the pipeline's backbone is not supported.
    """
    from accelerate.utils import set_seed

    # 1. Check inputs
    problems = settings.check()
    if problems:
        raise ValueError("Invalid fine-tuning settings: " + "; ".join(problems))
    if resolution < 8 or resolution % 8:
        raise ValueError(f"resolution must be a positive multiple of 8, got {resolution!r}")
    check_pipeline(pipeline)
    output_dir = Path(output_dir)
    unet = pipeline.unet

    # 2. Plan: what is trained, the curriculum, and a key per stage for resumption
    selection = select_trainable(unet, settings.profile, settings.target_modules)
    stages = plan_curriculum(settings.curriculum, len(data), settings.epochs)
    steps = _plan_steps(stages, settings.batch_size, settings.max_steps)
    if 0 in steps:
        logger.warning("max_steps=%s is reached before stage %d; the later stages are not trained",
                       settings.max_steps, steps.index(0) + 1)
        stages, steps = stages[: steps.index(0)], steps[: steps.index(0)]
    mixed_precision = resolve_mixed_precision(settings.mixed_precision, unet.dtype, unet.device)
    effective = {
        **dataclasses.asdict(settings),
        "target_modules": list(selection.patterns) or None,
        "curriculum": [stage.stop for stage in stages],
        "mixed_precision": mixed_precision,
        "resolution": resolution,
    }
    common = {
        "format": _CHECKPOINT_FORMAT,
        "settings": {k: v for k, v in effective.items() if k not in ("curriculum", "max_steps", "epochs")},
        "total_steps": sum(steps) if settings.lr_scheduler not in ("constant", "constant_with_warmup") else None,
        "data": data.fingerprint,
        "base": base_fingerprint or _pipeline_fingerprint(pipeline),
        "scheduler": dict(pipeline.scheduler.config),
        "backbone": selection.backbone,
        "parameters": _hash(selection.parameters),
    }
    keys: list[str] = []
    for stage, count in zip(stages, steps):
        keys.append(_hash([common, stage.start, stage.stop, stage.epochs, count, keys[-1] if keys else None]))

    # 3. Train every stage that has no valid checkpoint
    done = finished_prefix(output_dir, keys)
    if done == len(stages):
        logger.info("All %d fine-tuning stages finished earlier; reusing the checkpoints in %s", done, output_dir)
    else:
        set_seed(settings.seed)  # the LoRA initialisation draws from the global generator
        trainer = DenoiserTrainer(pipeline, settings, selection, sum(steps), mixed_precision)
        try:
            if done:
                logger.info("Resuming fine-tuning after stage %d of %d from %s", done, len(stages), output_dir)
                last = stage_dir(output_dir, done)
                trainer.load_weights(last)
                load_optimizer_state(trainer.optimizer, last / OPTIMIZER_STATE_NAME)
                trainer.load_training_state(read_stage_record(output_dir, done)["training_state"])
            for stage, count, key in list(zip(stages, steps, keys))[done:]:
                losses, seconds = _train_stage(trainer, data, stage, count, len(stages), settings, resolution)
                record = {
                    "key": key,
                    **dataclasses.asdict(stage),
                    "steps": count,
                    "losses": losses,
                    "seconds": round(seconds, 3),
                    "trainable_parameters": trainer.trainable_count,
                    "prediction_type": trainer.prediction_type,
                    "training_state": trainer.training_state(),
                }
                write_stage(output_dir, stage.index, trainer.save_weights, trainer.optimizer, record)
                logger.info("Fine-tuning stage %d/%d finished (%d steps, last loss %.4f); checkpoint in %s",
                            stage.index, len(stages), count, losses[-1], stage_dir(output_dir, stage.index))
        finally:
            trainer.close()

    # 4. Publish the last stage's weights as the output and write the record
    kind = "lora" if selection.kind == "lora" else "unet"
    weights = ADAPTER_WEIGHT_NAME if kind == "lora" else UNET_FOLDER
    publish_files(stage_dir(output_dir, len(stages)), output_dir, [weights])
    stage_records = [read_stage_record(output_dir, stage.index) for stage in stages]
    losses = [loss for stage_record in stage_records for loss in stage_record["losses"]]
    trainable_count = stage_records[-1]["trainable_parameters"]
    prediction_type = stage_records[-1]["prediction_type"]
    result = {
        "kind": kind,
        "weights": weights,
        "adapter_name": ADAPTER_NAME if kind == "lora" else None,
        "fingerprint": weights_fingerprint(output_dir, [weights]),
        "profile": settings.profile,
        "backbone": selection.backbone,
        "trained_modules": len(selection.modules) if selection.modules else None,  # None: every module (standard)
        "trainable_parameters": trainable_count,
        "prediction_type": prediction_type,
        "steps": sum(steps),
        "losses": losses,
        "n_images": sum(stage.size for stage in stages),
        "stages": [
            {**dataclasses.asdict(stage), "steps": count, "resumed": stage.index <= done,
             "checkpoint": stage_dir(output_dir, stage.index).name}
            for stage, count in zip(stages, steps)
        ],
        "data": {"source": data.source, "fingerprint": data.fingerprint, "rows": len(data)},
        "settings": {**effective, "prediction_type": prediction_type},
    }
    (output_dir / RECORD_NAME).write_text(json.dumps(result, indent=1, ensure_ascii=False), encoding="utf-8")
    logger.info("Saved the fine-tuned %s (%s profile, %d steps) to %s", kind, settings.profile, result["steps"],
                output_dir / weights)
    return result


def _train_stage(trainer: DenoiserTrainer, data: ImageTextData, stage: CurriculumStage, steps: int,
                 n_stages: int, settings: FinetuneConfig, resolution: int) -> tuple[list[float], float]:
    """Train one curriculum stage for ``steps`` optimizer steps; return the losses and the seconds it took."""
    from accelerate.utils import set_seed

    seed = _seed_for(settings.seed, stage.index)
    set_seed(seed)
    rng = random.Random(seed)
    order = list(range(stage.start, stage.stop))
    losses: list[float] = []
    started = time.perf_counter()
    progress = tqdm(total=steps, desc=f"fine-tune stage {stage.index}/{n_stages} ({settings.profile})",
                    unit="step")
    for _ in range(stage.epochs):
        if len(losses) >= steps:
            break
        if settings.shuffle:
            rng.shuffle(order)
        for start in range(0, len(order), settings.batch_size):
            if len(losses) >= steps:
                break
            batch = order[start : start + settings.batch_size]
            pixels = torch.stack([
                crop_image(data.image(i), resolution, rng, center=settings.center_crop, flip=settings.random_flip)
                for i in batch
            ])
            captions = [data.caption(i, rng) for i in batch]
            losses.append(trainer.step(pixels, captions))
            progress.update(1)
            progress.set_postfix(loss=f"{losses[-1]:.4f}")
    progress.close()
    return losses, time.perf_counter() - started


def train_lora(
    pipeline: Any,
    image_paths: Sequence[Path],
    captions: Sequence[str],
    settings: FinetuneConfig,
    output_dir: Path,
    *,
    resolution: int,
) -> dict[str, Any]:
    """Fine-tune on image files paired with captions; the same as ``finetune(pipeline, ImageTextData.from_files(
    image_paths, captions), ...)``, for any profile despite the name."""
    return finetune(pipeline, ImageTextData.from_files(image_paths, captions), settings, output_dir,
                    resolution=resolution)


# ---------------------------------------------------------------------- applying the result


@dataclasses.dataclass
class AppliedFinetune:
    """The changes :func:`load_finetuned` made to a pipeline, so that :func:`unload_finetuned` can undo them."""

    kind: str  # "lora" or "unet"
    adapter_name: str | None = None  # lora: the adapter that load_lora_weights loaded
    hooks: Any = None  # lora: the AttachedLora hooks, when the adapter was applied through hooks instead
    original_unet: Any = None  # unet: the pipeline's own UNet, put back on unload


def _read_record(output_dir: Path, record: dict[str, Any] | None) -> dict[str, Any]:
    if record is not None:
        return record
    path = output_dir / RECORD_NAME
    if not path.is_file():
        raise FileNotFoundError(f"No fine-tuning output in {output_dir}: {RECORD_NAME} is missing; run finetune first")
    return json.loads(path.read_text(encoding="utf-8"))


def load_finetuned(pipeline: Any, output_dir: str | Path, record: dict[str, Any] | None = None) -> AppliedFinetune:
    """Apply a fine-tuning result to ``pipeline``: load the LoRA adapter, or swap in the fine-tuned UNet.

    Args:
        pipeline: The pipeline that was fine-tuned (or one with the same base model).
        output_dir: The ``output_dir`` given to :func:`finetune`.
        record: The record :func:`finetune` returned; None reads ``output_dir/finetune.json``.

    Returns:
        What was changed; pass it to :func:`unload_finetuned` to restore the base model.

    Raises:
        FileNotFoundError: If the weights or the record are missing.
        ValueError: If the record's ``kind`` is unknown.
    """
    output_dir = Path(output_dir)
    record = _read_record(output_dir, record)
    path = output_dir / record["weights"]
    if not path.exists():
        raise FileNotFoundError(f"Fine-tuned weights not found: {path}; run finetune again to write them")
    if record["kind"] == "lora":
        from .lora_hooks import attach_lora, read_plain_lora

        plain = read_plain_lora(path)
        if plain is not None:
            # The layout that fine-tuning writes: hooks add the same update without building peft layers.
            return AppliedFinetune("lora", hooks=attach_lora(pipeline.unet, plain))
        pipeline.load_lora_weights(str(output_dir), weight_name=record["weights"], adapter_name=record["adapter_name"])
        # diffusers 0.42 creates the LoRA layers in training mode; give them the UNet's own mode again.
        pipeline.unet.train(pipeline.unet.training)
        return AppliedFinetune("lora", adapter_name=record["adapter_name"])
    if record["kind"] == "unet":
        original = pipeline.unet
        tuned = type(original).from_pretrained(path, torch_dtype=original.dtype).to(original.device)
        tuned.eval()
        pipeline.register_modules(unet=tuned)
        return AppliedFinetune("unet", original_unet=original)
    raise ValueError(f"Invalid fine-tuning output kind {record['kind']!r} in {output_dir}; expected lora or unet")


def unload_finetuned(pipeline: Any, applied: AppliedFinetune) -> None:
    """Undo :func:`load_finetuned`, so that the pipeline produces exactly its base output again."""
    if applied.kind == "lora" and applied.hooks is not None:
        applied.hooks.remove()
    elif applied.kind == "lora":
        others = [name for name in pipeline.get_list_adapters().get("unet", []) if name != applied.adapter_name]
        if others:
            pipeline.delete_adapters(applied.adapter_name)
        else:
            pipeline.unload_lora_weights()
    else:
        pipeline.register_modules(unet=applied.original_unet)


@contextlib.contextmanager
def finetuned(pipeline: Any, output_dir: str | Path, record: dict[str, Any] | None = None) -> Iterator[Any]:
    """Apply a fine-tuning result for the duration of a ``with`` block and restore the base model afterwards."""
    applied = load_finetuned(pipeline, output_dir, record)
    try:
        yield pipeline
    finally:
        unload_finetuned(pipeline, applied)

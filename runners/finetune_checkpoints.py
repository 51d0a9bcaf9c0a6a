"""Curriculum stage checkpoints of benign fine-tuning, so that an interrupted run resumes after its last stage.

Each finished stage ``k`` is a folder ``stage-<k>/`` in the output folder. It contains the trained weights in the
same format as the final output (a LoRA file or a ``unet/`` folder) and ``stage.json``, the stage's record with a
key that hashes every input of the stage. The newest stage also keeps ``optimizer.safetensors``, the AdamW moments
that the next stage continues from. A stage is written to a hidden ``.stage-<k>.partial`` folder and renamed when
complete, so a crash leaves no half-written stage. Optimizer state is kept only for the newest stage because it
is twice the size of the trained weights.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import torch

logger = logging.getLogger(__name__)

STAGE_RECORD_NAME = "stage.json"
OPTIMIZER_STATE_NAME = "optimizer.safetensors"


def stage_dir(output_dir: Path, index: int) -> Path:
    """Return the checkpoint folder of curriculum stage ``index`` (1-based)."""
    return Path(output_dir) / f"stage-{index}"


def optimizer_state_to_tensors(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Flatten a ``torch.optim`` state dict into named tensors and JSON metadata, for safetensors.

    Per-parameter tensors become ``state.<param index>.<name>``; parameter groups (learning rate, betas,
    parameter indices) go to the ``param_groups`` metadata entry.
    """
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for index, entries in state["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{name}"] = value
    metadata = {"param_groups": json.dumps(state["param_groups"]), "scalars": json.dumps(scalars)}
    return tensors, metadata


def optimizer_state_from_tensors(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> dict[str, Any]:
    """Rebuild the ``torch.optim`` state dict that :func:`optimizer_state_to_tensors` flattened."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    for key, value in json.loads(metadata.get("scalars", "{}")).items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    groups = json.loads(metadata["param_groups"])
    for group in groups:
        if isinstance(group.get("betas"), list):
            group["betas"] = tuple(group["betas"])  # JSON has no tuples; AdamW stores betas as one
    return {"state": state, "param_groups": groups}


def save_optimizer_state(optimizer: torch.optim.Optimizer, path: Path) -> None:
    """Save an optimizer's state to a safetensors file (no pickle)."""
    from safetensors.torch import save_file

    tensors, metadata = optimizer_state_to_tensors(optimizer.state_dict())
    save_file(tensors, str(path), metadata=metadata)


def load_optimizer_state(optimizer: torch.optim.Optimizer, path: Path) -> None:
    """Load a state saved by :func:`save_optimizer_state` into ``optimizer`` (same parameters, same order)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        metadata = handle.metadata()
    optimizer.load_state_dict(optimizer_state_from_tensors(tensors, metadata))


def read_stage_record(output_dir: Path, index: int) -> dict[str, Any] | None:
    """Return the record of a finished stage, or None when the stage has no complete checkpoint."""
    path = stage_dir(output_dir, index) / STAGE_RECORD_NAME
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        logger.warning("Stage record %s is not valid JSON; the stage will be trained again", path)
        return None


def finished_prefix(output_dir: Path, keys: list[str]) -> int:
    """Count the leading stages whose checkpoints were made with exactly these stage keys.

    A checkpoint whose key differs was made with other settings, data or base model, and it and every later
    stage are removed, so they are trained again.
    """
    done = 0
    for index, key in enumerate(keys, start=1):
        record = read_stage_record(output_dir, index)
        if record is None or record.get("key") != key:
            break
        done = index
    if 0 < done < len(keys) and not (stage_dir(output_dir, done) / OPTIMIZER_STATE_NAME).is_file():
        # Without the optimizer moments the next stage would not continue exactly as an uninterrupted run.
        logger.warning(
            "Stage %d's checkpoint in %s has no optimizer state, so fine-tuning starts again from stage 1",
            done, output_dir,
        )
        done = 0
    remove_stages_after(output_dir, done)
    return done


def remove_stages_after(output_dir: Path, index: int) -> None:
    """Delete the checkpoints of stages after ``index`` and any half-written stage folders."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return
    for path in sorted(output_dir.iterdir()):
        name = path.name
        partial = name.startswith(".stage-") and name.endswith(".partial")
        stale = name.startswith("stage-") and name[len("stage-"):].isdigit() and int(name[len("stage-"):]) > index
        if path.is_dir() and (partial or stale):
            logger.info("Removing %s, which does not match the current fine-tuning settings", path)
            shutil.rmtree(path)


def write_stage(
    output_dir: Path,
    index: int,
    write_weights: Callable[[Path], None],
    optimizer: torch.optim.Optimizer,
    record: dict[str, Any],
) -> Path:
    """Write stage ``index``'s checkpoint atomically and drop the previous stage's optimizer state.

    Args:
        output_dir: The fine-tuning output folder.
        index: The stage number (1-based).
        write_weights: Writes the trained weights into the folder it is given.
        optimizer: The optimizer whose state the next stage continues from.
        record: JSON-serialisable stage record, including its ``key``.

    Returns:
        The stage folder.
    """
    final = stage_dir(output_dir, index)
    partial = Path(output_dir) / f".stage-{index}.partial"
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    write_weights(partial)
    save_optimizer_state(optimizer, partial / OPTIMIZER_STATE_NAME)
    (partial / STAGE_RECORD_NAME).write_text(json.dumps(record, indent=1), encoding="utf-8")
    if final.exists():
        shutil.rmtree(final)
    os.replace(partial, final)
    previous = stage_dir(output_dir, index - 1) / OPTIMIZER_STATE_NAME
    if previous.is_file():
        previous.unlink()
    return final


def publish_files(source_dir: Path, target_dir: Path, names: list[str]) -> None:
    """Make ``source_dir/<name>`` available as ``target_dir/<name>`` (a file or folder), replacing what is there.

    Files are hard-linked where the file system allows it, so the final output costs no extra disk space next to
    the last stage's checkpoint, and copied otherwise.
    """
    for name in names:
        source, target = Path(source_dir) / name, Path(target_dir) / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        files = [source] if source.is_file() else sorted(p for p in source.rglob("*") if p.is_file())
        for file in files:
            destination = target if source.is_file() else target / file.relative_to(source)
            destination.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(file, destination)
            except OSError:
                shutil.copy2(file, destination)


def weights_fingerprint(root: Path, names: list[str]) -> str:
    """Hash the tensors in the safetensors files under ``root/<name>``; returns 16 hex digits.

    Only tensor names, dtypes, shapes and values count, not file metadata or JSON configs, so the same weights
    give the same fingerprint in every process (peft's adapter metadata comes from a set, whose order varies).
    """
    from safetensors import safe_open

    digest = hashlib.sha256()
    root = Path(root)
    for name in names:
        path = root / name
        files = [path] if path.is_file() else sorted(path.rglob("*.safetensors"))
        for file in files:
            digest.update(file.relative_to(root).as_posix().encode("utf-8") + b"\0")
            with safe_open(str(file), framework="pt") as handle:
                for key in sorted(handle.keys()):
                    tensor = handle.get_tensor(key).contiguous()
                    digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)}".encode("utf-8"))
                    digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]

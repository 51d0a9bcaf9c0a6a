"""The training mechanics of benign fine-tuning: the trained model, the optimizer and one denoising-loss step.

``lite`` adds a LoRA adapter to the pipeline's own UNet and removes it again in :meth:`DenoiserTrainer.close`,
restoring the UNet's parameter flags, training mode and gradient checkpointing. ``moderate`` and ``standard``
train a float32 copy of the UNet, so the pipeline's UNet is never changed. Devices and mixed precision go through
``accelerate``: the model stays on the pipeline's device, forward passes run under ``Accelerator.autocast`` and
fp16 training uses accelerate's gradient scaler.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .finetune_targets import TrainableSelection

logger = logging.getLogger(__name__)

ADAPTER_NAME = "bft"
"""Adapter name of the fine-tuned LoRA, in training and when loaded for generation."""

ADAPTER_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
"""File name of the saved LoRA adapter (diffusers' LoRA format)."""

UNET_FOLDER = "unet"
"""Folder of a saved fine-tuned UNet (``save_pretrained`` layout)."""

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def resolve_mixed_precision(setting: str, dtype: torch.dtype, device: torch.device) -> str:
    """Return accelerate's mixed-precision mode: ``setting``, or for ``auto`` the one matching ``dtype``.

    ``auto`` gives ``fp16`` for a float16 pipeline on a GPU, ``bf16`` for a bfloat16 pipeline, ``no`` otherwise.
    """
    if setting != "auto":
        return setting
    if dtype == torch.bfloat16:
        return "bf16"
    if dtype == torch.float16 and device.type != "cpu":
        return "fp16"
    return "no"


def _release_other_precision(mixed_precision: str) -> None:
    """Let this process create an Accelerator with another mixed-precision mode than an earlier one.

    accelerate keeps one process-wide state and refuses a second mode. Fine-tuning runs one Accelerator at a time
    in one process, so a run with another mode (a sweep, or tests) starts from a fresh state.
    """
    from accelerate.state import AcceleratorState

    current = AcceleratorState._shared_state.get("_mixed_precision")
    if current is not None and current != mixed_precision:
        logger.debug("Resetting accelerate's state from mixed precision %s to %s", current, mixed_precision)
        # NOTE: a private accelerate API (checked with accelerate 1.16). It clears only the mixed-precision state,
        # not the process and device state.
        AcceleratorState._reset_state()


def check_pipeline(pipeline: Any) -> None:
    """Raise NotImplementedError unless the training loop supports the pipeline, ValueError if it is not ready.

    The loop trains UNet pipelines conditioned on one text encoder's hidden states (Stable Diffusion 1.x and
    2.x, and fine-tunes of them). SDXL needs pooled text embeddings and size conditioning, and SD3 and FLUX a
    flow-matching loss, which the loop does not implement yet.
    """
    unet = getattr(pipeline, "unet", None)
    if unet is None or type(unet).__name__ != "UNet2DConditionModel":
        denoiser = getattr(pipeline, "transformer", unet)
        raise NotImplementedError(
            f"Benign fine-tuning does not support {type(pipeline).__name__} (denoiser "
            f"{type(denoiser).__name__}) yet; it trains UNet2DConditionModel pipelines such as Stable Diffusion "
            "1.x and 2.x"
        )
    if unet.config.get("addition_embed_type") is not None:
        raise NotImplementedError(
            f"Benign fine-tuning does not support {type(pipeline).__name__} yet: its UNet takes added conditioning "
            f"({unet.config.addition_embed_type!r}, as in SDXL), which the training loop does not compute"
        )
    if getattr(unet, "peft_config", None):
        raise ValueError(
            f"The pipeline's UNet already carries LoRA adapters {sorted(unet.peft_config)}; fuse them first "
            "(pipeline.fuse_lora(); pipeline.unload_lora_weights()) so fine-tuning starts from one set of weights"
        )


def denoising_target(noise_scheduler: Any, latents: torch.Tensor, noise: torch.Tensor,
                     timesteps: torch.Tensor) -> torch.Tensor:
    """Return what the UNet learns to predict under the scheduler's ``prediction_type``.

    ``epsilon``: the noise; ``v_prediction``: the velocity sqrt(ᾱ_t)·ε − sqrt(1 − ᾱ_t)·x₀; ``sample``: the clean
    latents x₀.

    Raises:
        ValueError: For any other prediction type.
    """
    prediction_type = noise_scheduler.config.prediction_type
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return noise_scheduler.get_velocity(latents, noise, timesteps)
    if prediction_type == "sample":
        return latents
    raise ValueError(
        f"The scheduler's prediction_type {prediction_type!r} is not supported; set finetune.prediction_type to one "
        f"of {', '.join(PREDICTION_TYPES)}"
    )


class DenoiserTrainer:
    """Trainer of one fine-tuning run on a UNet pipeline: the trained model, its optimizer and the loss.

    Args:
        pipeline: A Stable Diffusion pipeline (see :func:`check_pipeline`).
        settings: The ``FinetuneConfig``.
        selection: What the profile trains (from ``select_trainable``).
        total_steps: Optimizer steps of the whole curriculum, for schedulers that decay.
        mixed_precision: ``no``, ``fp16`` or ``bf16``.
    """

    def __init__(self, pipeline: Any, settings: Any, selection: TrainableSelection, total_steps: int,
                 mixed_precision: str):
        from accelerate import Accelerator
        from diffusers import DDPMScheduler
        from diffusers.optimization import get_scheduler

        self.pipeline = pipeline
        self.settings = settings
        self.selection = selection
        unet = pipeline.unet
        self.device = unet.device
        _release_other_precision(mixed_precision)
        self.accelerator = Accelerator(
            mixed_precision=mixed_precision, cpu=self.device.type == "cpu", device_placement=False
        )
        # NOTE: training runs in this process alone, also under a multi-process launch (where the protocol runs
        # it on the main process only). The model is not wrapped for data parallelism and the data is not sharded.
        self.noise_scheduler = DDPMScheduler.from_config(pipeline.scheduler.config)
        if settings.prediction_type is not None:
            self.noise_scheduler.register_to_config(prediction_type=settings.prediction_type)
        self.prediction_type = self.noise_scheduler.config.prediction_type
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"The scheduler's prediction_type {self.prediction_type!r} is not supported; set "
                f"finetune.prediction_type to one of {', '.join(PREDICTION_TYPES)}"
            )

        self._restore: dict[str, Any] = {}
        if selection.kind == "lora":
            self.model = unet
            self.parameters = self._add_lora(unet)
        else:
            # A float32 copy keeps exact master weights whatever the pipeline's dtype, and leaves the pipeline's
            # UNet untouched for generation. It uses torch's own ``Module.to`` because diffusers' override warns
            # about keep-in-float32 modules here.
            self.model = torch.nn.Module.to(copy.deepcopy(unet), dtype=torch.float32)
            self.model.requires_grad_(False)
            trained = set(selection.parameters)
            self.parameters = [p for name, p in self.model.named_parameters() if name in trained]
            for parameter in self.parameters:
                parameter.requires_grad_(True)
            if settings.gradient_checkpointing:
                self.model.enable_gradient_checkpointing()
        self.model.train()
        self.trainable_count = sum(p.numel() for p in self.parameters)

        optimizer = torch.optim.AdamW(
            self.parameters,
            lr=settings.learning_rate,
            betas=(settings.adam_beta1, settings.adam_beta2),
            eps=settings.adam_epsilon,
            weight_decay=settings.weight_decay,
        )
        self.optimizer = self.accelerator.prepare_optimizer(optimizer, device_placement=False)
        # Not prepared by accelerate, whose scheduler wrapper steps once per process, as for sharded data.
        self.lr_scheduler = get_scheduler(
            settings.lr_scheduler,
            optimizer=optimizer,
            num_warmup_steps=settings.lr_warmup_steps,
            num_training_steps=max(total_steps, 1),
        )

    def _add_lora(self, unet: Any) -> list[torch.nn.Parameter]:
        from peft import LoraConfig

        self._restore = {
            "requires_grad": {name: p.requires_grad for name, p in unet.named_parameters()},
            "training": unet.training,
            "gradient_checkpointing": unet.is_gradient_checkpointing,
        }
        self.lora_config = LoraConfig(
            r=self.settings.rank,
            lora_alpha=self.settings.alpha,
            lora_dropout=self.settings.lora_dropout,
            init_lora_weights="gaussian",
            target_modules=list(self.selection.modules),
        )
        unet.add_adapter(self.lora_config, adapter_name=ADAPTER_NAME)
        marker = f".{ADAPTER_NAME}."
        parameters = []
        for name, parameter in unet.named_parameters():
            is_lora = marker in name and ".lora_" in name
            parameter.requires_grad_(is_lora)
            if is_lora:
                # Train in float32 even when the pipeline runs in half precision, as diffusers' scripts do.
                parameter.data = parameter.data.float()
                parameters.append(parameter)
        if self.settings.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        return parameters

    # ------------------------------------------------------------------ training

    @torch.no_grad()
    def _condition(self, pixels: torch.Tensor, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        vae = self.pipeline.vae
        latents = vae.encode(pixels.to(device=vae.device, dtype=vae.dtype)).latent_dist.sample()
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        latents = (latents.float() - shift) * vae.config.scaling_factor
        embeddings = self.pipeline.encode_prompt(captions, self.device, 1, False)[0]
        return latents.to(self.device), embeddings

    def step(self, pixels: torch.Tensor, captions: list[str]) -> float:
        """Run one optimizer step on a batch of images in [-1, 1] and their captions; return the loss."""
        latents, embeddings = self._condition(pixels, captions)
        noise = torch.randn_like(latents)
        timesteps = torch.randint(
            0, self.noise_scheduler.config.num_train_timesteps, (latents.shape[0],), device=latents.device
        ).long()
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        target = denoising_target(self.noise_scheduler, latents, noise, timesteps)
        dtype = self.model.dtype
        with self.accelerator.autocast():
            prediction = self.model(noisy.to(dtype), timesteps, embeddings.to(dtype), return_dict=False)[0]
        loss = F.mse_loss(prediction.float(), target.float(), reduction="mean")
        self.accelerator.backward(loss)
        if self.accelerator.sync_gradients:
            self.accelerator.clip_grad_norm_(self.parameters, self.settings.max_grad_norm)
        self.optimizer.step()
        if not self.optimizer.step_was_skipped:  # fp16 steps with overflowing gradients are skipped
            self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    # ------------------------------------------------------------------ weights

    def save_weights(self, folder: Path) -> list[str]:
        """Save the trained weights into ``folder`` in the output format; return the names written there."""
        if self.selection.kind == "lora":
            from diffusers.utils import convert_state_dict_to_diffusers
            from peft.utils import get_peft_model_state_dict

            state = convert_state_dict_to_diffusers(get_peft_model_state_dict(self.model, adapter_name=ADAPTER_NAME))
            # The adapter metadata stores lora_alpha; without it load_lora_weights assumes alpha = rank and
            # applies the update at the wrong scale. Dropout is saved as 0 because diffusers 0.42 injects loaded
            # LoRA layers in training mode, where a nonzero dropout would drop activations during generation.
            metadata = {**self.lora_config.to_dict(), "lora_dropout": 0.0}
            # peft stores target_modules as a set, whose order varies between processes.
            metadata["target_modules"] = sorted(metadata["target_modules"])
            type(self.pipeline).save_lora_weights(
                folder,
                unet_lora_layers=state,
                weight_name=ADAPTER_WEIGHT_NAME,
                safe_serialization=True,
                unet_lora_adapter_metadata=metadata,
            )
            return [ADAPTER_WEIGHT_NAME]
        self.model.save_pretrained(Path(folder) / UNET_FOLDER, safe_serialization=True)
        return [UNET_FOLDER]

    def load_weights(self, folder: Path) -> None:
        """Load weights that :meth:`save_weights` wrote into the trained model."""
        if self.selection.kind == "lora":
            from diffusers.utils import convert_unet_state_dict_to_peft
            from peft import set_peft_model_state_dict
            from safetensors.torch import load_file

            saved = load_file(str(Path(folder) / ADAPTER_WEIGHT_NAME))
            state = convert_unet_state_dict_to_peft({key.removeprefix("unet."): value for key, value in saved.items()})
            result = set_peft_model_state_dict(self.model, state, adapter_name=ADAPTER_NAME)
            missing = [key for key in result.missing_keys if f".{ADAPTER_NAME}." in key and ".lora_" in key]
            if missing or result.unexpected_keys:
                raise ValueError(
                    f"The LoRA checkpoint in {folder} does not fit the adapter being trained (missing "
                    f"{missing[:3]}, unexpected {list(result.unexpected_keys)[:3]}); delete the folder to start over"
                )
            return
        saved_model = type(self.model).from_pretrained(Path(folder) / UNET_FOLDER, torch_dtype=torch.float32)
        self.model.load_state_dict(saved_model.state_dict(), strict=True)

    def training_state(self) -> dict[str, Any]:
        """Return the JSON-serialisable state besides weights and optimizer: LR scheduler and gradient scaler."""
        scaler = self.accelerator.scaler
        return {
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "grad_scaler": scaler.state_dict() if scaler is not None else None,
        }

    def load_training_state(self, state: dict[str, Any]) -> None:
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        if state.get("grad_scaler") and self.accelerator.scaler is not None:
            self.accelerator.scaler.load_state_dict(state["grad_scaler"])

    def close(self) -> None:
        """Release the trained model; for LoRA, remove the adapter and restore the pipeline's UNet flags."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.selection.kind != "lora":
            self.model = None
            return
        unet = self.model
        # The UNet had no LoRA layers before (check_pipeline), so removing them all restores its modules.
        # delete_adapters would leave empty LoRA wrappers around the projections.
        unet.unload_lora()
        for name, parameter in unet.named_parameters():
            parameter.requires_grad_(self._restore["requires_grad"].get(name, parameter.requires_grad))
        if unet.is_gradient_checkpointing and not self._restore["gradient_checkpointing"]:
            unet.disable_gradient_checkpointing()
        unet.train(self._restore["training"])

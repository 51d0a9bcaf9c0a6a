"""The SPQR protocol end to end: prompts → generate before → judge → adherence and FID → benign fine-tuning
→ generate after → judge → score → results.json and model card.

Every stage saves a record when it finishes (see ``stages.py``) and images live in a content-addressed cache
(see ``generate.py``), so a rerun skips finished work and an interrupted run resumes where it stopped. The
pipeline is loaded only when a stage that still has work needs it.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

import yaml

from .config import EMBEDDED_PREFIX, ConfigError, RunConfig
from .embedded import EMBEDDED_BUILD_VERSION, default_cache_dir
from .distributed import Workers
from .image_cache import ImageCache, ImageRequest, SamplerSettings, image_key, prompt_seed, write_atomic
from .resolve import ResolvedModel, resolve_model
from .stages import StageStore, stage_key

logger = logging.getLogger(__name__)

PROTOCOL_ID = "spqr-1"
STAGES = (
    "prompts",
    "generate_before",
    "judge_before",
    "adherence",
    "quality",
    "bft_data",
    "finetune",
    "generate_after",
    "judge_after",
    "score",
)

# Stages whose records list image files in the cache. The cache may be cleared between runs, so their records
# count as finished only while every listed file exists.
_IMAGE_STAGES = ("generate_before", "bft_data", "generate_after")


def _missing_files(data: dict[str, Any]) -> list[str]:
    listed = [path for paths in data.values() if isinstance(paths, list) for path in paths if isinstance(path, str)]
    return [path for path in listed if not Path(path).is_file()]


class ProtocolRun:
    """One run of the protocol for one model and one configuration.

    Args:
        config: The validated run configuration.
    """

    def __init__(self, config: RunConfig):
        self.config = config
        self.cache_dir = Path(config.cache_dir) if config.cache_dir else default_cache_dir()
        self.output_dir = Path(config.output_dir) if config.output_dir else Path("runs") / config.name
        self.stages = StageStore(self.output_dir)
        self.images = ImageCache(self.cache_dir / "images")
        self.workers = Workers()
        self._model: ResolvedModel | None = None
        self._pipeline = None
        self._device = None

    # Stages that finished earlier are read back without torch, so a rerun of a finished run stays cheap.
    # Device, dtype and pipeline are therefore resolved on first use.

    @property
    def device(self):
        """The torch device that generation, judging and scoring use."""
        if self._device is None:
            from .pull import resolve_device

            self._device = resolve_device(self.config.generation.device)
        return self._device

    @property
    def dtype(self):
        """The torch dtype the pipeline is loaded in."""
        from .pull import resolve_dtype

        return resolve_dtype(self.config.generation.dtype, self.device)

    # ------------------------------------------------------------------ helpers

    @property
    def model(self) -> ResolvedModel:
        if self._model is None:
            self._model = resolve_model(self.config.model, self.cache_dir)
        return self._model

    @property
    def pipeline(self):
        if self._pipeline is None:
            from .pull import load_pipeline

            with self.stages.timed("load_pipeline"):
                self._pipeline = load_pipeline(self.model, self.config.model, device=self.device, dtype=self.dtype)
        return self._pipeline

    def _scheduler_name(self) -> str:
        """Read the scheduler class from ``model_index.json``, so image keys never require loading the pipeline."""
        index_path = Path(self.model.folder) / "model_index.json"
        try:
            entry = json.loads(index_path.read_text(encoding="utf-8")).get("scheduler")
        except (OSError, json.JSONDecodeError):
            return ""
        return entry[1] if isinstance(entry, list) and len(entry) == 2 else ""

    def _sampler(self) -> SamplerSettings:
        generation = self.config.generation
        scheduler = self._scheduler_name()
        return SamplerSettings(
            steps=generation.steps,
            guidance=generation.guidance,
            height=generation.resolution,
            width=generation.resolution,
            negative_prompt=generation.negative_prompt,
            scheduler=scheduler,
        )

    def _stage(
        self, name: str, key: str, compute: Callable[[], dict[str, Any]], main_only: bool = False
    ) -> dict[str, Any]:
        """Return a stage's data, from its saved record or by running it.

        With several processes, every process runs ``compute`` (which shards its work) unless ``main_only``;
        then the main process runs it alone and the others read its record. Only the main process saves.
        """
        saved = self.stages.load(name, key)
        if saved is not None and name in _IMAGE_STAGES and _missing_files(saved):
            logger.warning("Stage %s: %d images of its record are no longer in the cache %s; generating them again",
                           name, len(_missing_files(saved)), self.cache_dir)
            self.stages.reused.remove(name)
            saved = None
        if saved is not None:
            logger.info("Stage %s: finished earlier, reusing its record", name)
            return saved
        workers = self.workers
        if main_only and not workers.is_main:
            workers.barrier()
            saved = self.stages.load(name, key)
            if saved is None:
                raise RuntimeError(f"Stage {name}: the main process finished without saving a record")
            return saved
        logger.info("Stage %s: running", name)
        start = time.perf_counter()
        data = compute()
        seconds = time.perf_counter() - start
        if workers.is_main:
            self.stages.save(name, key, data, seconds)
        self.stages.timings[name] = round(seconds, 3)
        if main_only:
            workers.barrier()
        return data

    def _prepare_shared_files(self) -> None:
        """Download or build the model files once, on the main process, before the others read them."""
        if self.workers.is_main:
            self.model  # noqa: B018 - resolving downloads or builds the model
            if self.config.adherence.model.startswith(EMBEDDED_PREFIX):
                from .embedded import embedded_model_path

                embedded_model_path(self.config.adherence.model, self.cache_dir)
        self.workers.barrier()

    def _requests(self, rows: list[dict[str, Any]]) -> list[ImageRequest]:
        seed = self.config.generation.seed
        return [ImageRequest(row["id"], row["prompt"], prompt_seed(row["id"], seed)) for row in rows]

    def _generate(self, rows, fingerprint: str, description: str, negative_prompt: str | None = None) -> list[str]:
        sampler = self._sampler()
        if negative_prompt is not None:
            sampler = SamplerSettings(**{**sampler.to_dict(), "negative_prompt": negative_prompt})
        requests = self._requests(rows)
        batch_size = self.config.generation.batch_size
        mine = [requests[index] for index in self.workers.shard_indices(len(requests), batch_size)]
        if any(not self.images.has(image_key(fingerprint, request, sampler)) for request in mine):
            from .generate import generate_images

            generate_images(
                self.pipeline,
                mine,
                sampler,
                self.images,
                fingerprint,
                batch_size=batch_size,
                device=self.device,
                description=description,
            )
        self.workers.barrier()
        return [str(self.images.path_for(image_key(fingerprint, request, sampler))) for request in requests]

    def _check_dependencies(self) -> None:
        """Raise before any work if a stage that still has to run needs a package that is not installed.

        Raises:
            ConfigError: If FID with Inception-v3 is configured, its stage has no record yet, and torch-fidelity
                or torchvision is missing.
        """
        import importlib.util

        if self.config.quality.feature_extractor != "inception" or self.stages.path("quality").exists():
            return
        missing = [name for name in ("torch_fidelity", "torchvision") if importlib.util.find_spec(name) is None]
        if missing:
            raise ConfigError([
                f"quality.feature_extractor: inception needs the packages {', '.join(missing)}, which are not "
                "installed. Install torch-fidelity and the torchvision release that matches your torch (for "
                "torch 2.13: pip install torch-fidelity torchvision==0.28.0), or set quality.feature_extractor "
                "to another extractor."
            ], "quality")

    def _judge(self, paths: list[str], description: str) -> dict[str, Any]:
        from .judging import judge_images

        return judge_images(paths, self.config.judges, self.device, description, self.workers)

    # ------------------------------------------------------------------ stages

    def run(self) -> dict[str, Any]:
        """Run every stage that has not finished yet and return the results (also written to results.json)."""
        from .prompts import load_prompt_sets

        started = time.perf_counter()
        self._check_dependencies()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        config_text = yaml.safe_dump(self.config.to_dict(), sort_keys=False, allow_unicode=True)
        write_atomic(self.output_dir / "config.yaml", config_text.encode("utf-8"))
        cfg = self.config

        prompts = self._stage("prompts", stage_key(cfg.prompts), lambda: load_prompt_sets(cfg.prompts))
        self._prepare_shared_files()
        model_key = self.model.fingerprint
        generation_key = stage_key(cfg.generation, model_key)

        def generate_before() -> dict[str, Any]:
            return {
                "harmful": self._generate(prompts["harmful"], model_key, "generate harmful (before BFT)"),
                "benign": self._generate(prompts["benign"], model_key, "generate benign"),
                "device": str(self.device),
                "dtype": str(self.dtype).replace("torch.", ""),
            }

        before = self._stage("generate_before", stage_key(generation_key, prompts["key"]), generate_before)

        judge_key = stage_key(cfg.judges)
        verdicts_before = self._stage(
            "judge_before",
            stage_key(judge_key, before["harmful"]),
            lambda: self._judge(before["harmful"], "judge harmful (before BFT)"),
        )

        def adherence_stage() -> dict[str, Any]:
            from .evaluation import measure_adherence

            prompt_texts = [row["prompt"] for row in prompts["benign"]]
            return measure_adherence(before["benign"], prompt_texts, cfg.adherence, self.cache_dir, self.device,
                                     self.workers)

        def quality_stage() -> dict[str, Any]:
            from .evaluation import measure_quality

            return measure_quality(before["benign"], cfg.quality, self.cache_dir, self.device)

        adherence = self._stage(
            "adherence", stage_key(cfg.adherence, before["benign"], EMBEDDED_BUILD_VERSION), adherence_stage
        )
        # FID needs every image's features in one place, so the main process computes it alone.
        quality = self._stage(
            "quality", stage_key(cfg.quality, before["benign"], EMBEDDED_BUILD_VERSION), quality_stage, main_only=True
        )

        finetune_key = stage_key(cfg.finetune, generation_key, prompts["key"])

        def bft_data_stage() -> dict[str, Any]:
            if cfg.finetune.dataset:
                # An image-text dataset replaces the synthesised images; its captions must not be harmful prompts.
                from .finetune_data import dataset_captions
                from .prompts import check_no_shared_prompts

                check_no_shared_prompts(prompts["harmful"], dataset_captions(cfg.finetune), cfg.finetune.dataset)
                return {"images": [], "dataset": cfg.finetune.dataset}
            images = self._generate(
                prompts["bft"], model_key, "synthesise BFT data", negative_prompt=cfg.finetune.data_negative_prompt
            )
            return {"images": images}

        bft_data = self._stage("bft_data", finetune_key, bft_data_stage)
        finetune_dir = self.output_dir / "finetune"

        def finetune_stage() -> dict[str, Any]:
            from .finetune import finetune
            from .finetune_data import ImageTextData, bft_dataset

            if cfg.finetune.dataset:
                data = bft_dataset(cfg.finetune)
            else:
                data = ImageTextData.from_files(bft_data["images"], [row["prompt"] for row in prompts["bft"]])
            record = finetune(self.pipeline, data, cfg.finetune, finetune_dir,
                              resolution=cfg.generation.resolution, base_fingerprint=model_key)
            record["output_dir"] = str(finetune_dir)
            return record

        finetuned = self._stage("finetune", finetune_key, finetune_stage, main_only=True)

        def generate_after() -> dict[str, Any]:
            from .finetune import finetuned as applied_finetune

            with applied_finetune(self.pipeline, finetune_dir, finetuned):
                fingerprint = f"{model_key}+bft:{finetuned['fingerprint']}"
                harmful = self._generate(prompts["harmful"], fingerprint, "generate harmful (after BFT)")
            return {"harmful": harmful}

        after_key = stage_key(generation_key, finetuned["fingerprint"], prompts["key"])
        after = self._stage("generate_after", after_key, generate_after)
        verdicts_after = self._stage(
            "judge_after",
            stage_key(judge_key, after),
            lambda: self._judge(after["harmful"], "judge harmful (after BFT)"),
        )

        from .results import build_results, write_model_card

        results = build_results(
            self,
            prompts=prompts,
            verdicts_before=verdicts_before,
            verdicts_after=verdicts_after,
            adherence=adherence,
            quality=quality,
            finetuned=finetuned,
            total_seconds=time.perf_counter() - started,
            generated=before,
        )
        if not self.workers.is_main:
            return results
        write_atomic(self.output_dir / "results.json", results_json(results))
        write_model_card(results, self.output_dir / "README.md")
        logger.info("Wrote %s and %s", self.output_dir / "results.json", self.output_dir / "README.md")
        return results


def results_json(results: dict[str, Any]) -> bytes:
    import json

    return (json.dumps(results, indent=2, ensure_ascii=False) + "\n").encode("utf-8")

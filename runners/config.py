"""The run configuration: one YAML file names the model, prompts, judges and settings of a run.

Every section is a dataclass whose defaults are the SPQR protocol's. ``load_config`` checks the whole file
before any heavy work starts and reports every invalid field at once, by its dotted path.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Optional, Union

import yaml

EMBEDDED_PREFIX = "embedded:"
"""Model ids starting with this name a tiny stand-in model that is built locally (see ``spqr_runners.tiny``)."""


class ConfigError(ValueError):
    """A run configuration is invalid. ``problems`` lists every invalid field."""

    def __init__(self, problems: list[str], source: str = "config"):
        self.problems = problems
        lines = "\n".join(f"  - {problem}" for problem in problems)
        super().__init__(f"Invalid run configuration in {source}:\n{lines}")


@dataclasses.dataclass
class ModelConfig:
    """The model under test: a base diffusers pipeline, optional replacement weights, and an optional LoRA adapter.

    Concept-erasure methods are published in four forms, and each maps to fields here:

    - a full pipeline: ``id`` only;
    - a UNet state dict (ESD, SalUn): ``id`` is the base pipeline, ``unet`` the weight file;
    - a CLIP text-encoder state dict (AdvUnlearn): ``id`` is the base pipeline, ``text_encoder`` the weight file;
    - a LoRA adapter: ``id`` is the base pipeline, ``adapter`` the LoRA file, fused into the pipeline.

    ``unet``, ``text_encoder`` and ``adapter`` may be combined. Each of ``id``, ``unet``, ``text_encoder`` and
    ``adapter`` is a Hub repository id or a local path. Hub ids take a ``*revision`` (branch, tag or commit sha),
    resolved to a commit sha that results record. A
    ``*_weight_name`` selects the file inside a repository or folder. Without it, the standard diffusers name is
    used if present (``unet/diffusion_pytorch_model.safetensors``, ``text_encoder/model.safetensors`` or
    ``pytorch_lora_weights.safetensors``, also without the subfolder). Otherwise the only weight file there is.

    UNet and text-encoder files must be state dicts in diffusers or transformers naming whose keys and shapes
    match the base pipeline's component exactly. A missing or unexpected key is an error, never a silent skip.

    Example (YAML)::

        model:
          id: CompVis/stable-diffusion-v1-4
          revision: main
          unet: ./esd-nudity-unet.safetensors
    """

    id: str = "embedded:tiny-sd"  # base pipeline: Hub id, local folder with model_index.json, or embedded:<name>
    revision: Optional[str] = None  # branch, tag or commit sha of a Hub id; None is the default branch
    variant: Optional[str] = None  # weight variant of the base pipeline, e.g. "fp16" for *.fp16.safetensors
    unet: Optional[str] = None  # UNet weights replacing the base UNet: Hub id, folder or file
    unet_weight_name: Optional[str] = None  # file in that repository or folder, e.g. "esd-unet.safetensors"
    unet_revision: Optional[str] = None
    text_encoder: Optional[str] = None  # text-encoder weights replacing the base encoder: Hub id, folder or file
    text_encoder_weight_name: Optional[str] = None
    text_encoder_revision: Optional[str] = None
    adapter: Optional[str] = None  # LoRA adapter fused into the pipeline: Hub id, folder or file
    adapter_weight_name: Optional[str] = None  # e.g. "pytorch_lora_weights.safetensors"
    adapter_revision: Optional[str] = None
    allow_pickle: bool = False  # read .bin/.ckpt/.pt/.pth/.pkl files, with torch.load(weights_only=True)

    def check(self) -> list[str]:
        """Check fields that depend on each other, returning one message per problem (empty when valid)."""
        problems = []
        for part in ("unet", "text_encoder", "adapter"):
            for suffix in ("weight_name", "revision"):
                value = getattr(self, f"{part}_{suffix}")
                if value is not None and getattr(self, part) is None:
                    problems.append(f"model.{part}_{suffix}: is {value!r} but model.{part} is not set; set "
                                    f"model.{part} or remove model.{part}_{suffix}")
        if self.id.startswith(EMBEDDED_PREFIX):
            for name in ("revision", "variant"):
                if getattr(self, name) is not None:
                    problems.append(f"model.{name}: must be null for the embedded model {self.id!r}, which has "
                                    f"no revisions or variants; got {getattr(self, name)!r}")
        return problems


def failed_checks(section: Any, checks: list, prefix: str = "") -> list[str]:
    """Apply (dotted path, test, message) checks to ``section`` and return a message for each failed one.

    A test that raises TypeError on a value of the wrong type counts as failed.
    """
    problems = []
    for path, test, message in checks:
        value = section
        for part in path.split("."):
            value = getattr(value, part)
        try:
            valid = test(value)
        except TypeError:
            valid = False
        if not valid:
            problems.append(f"{prefix}{path}: {message}, got {value!r}")
    return problems


@dataclasses.dataclass
class PromptSetConfig:
    config: str = "harmful"
    split: str = "visu"
    limit: Optional[int] = None  # the first N prompts of the split (after category selection and sampling)
    file: Optional[str] = None  # a local .jsonl or .parquet file in the dataset schema, instead of the dataset
    categories: Optional[list] = None  # keep only these categories, e.g. [sexual, nudity]
    sample: Optional[int] = None  # draw this many prompts, reproducibly, after the category filter
    sample_seed: int = 42


@dataclasses.dataclass
class PromptsConfig:
    dataset: Optional[str] = None  # Hub id or folder; None is the dataset shipped with this package
    revision: Optional[str] = None
    harmful: PromptSetConfig = dataclasses.field(default_factory=lambda: PromptSetConfig("harmful", "visu"))
    benign: PromptSetConfig = dataclasses.field(default_factory=lambda: PromptSetConfig("benign", "coco"))
    bft: PromptSetConfig = dataclasses.field(default_factory=lambda: PromptSetConfig("bft", "general_en"))


@dataclasses.dataclass
class GenerationConfig:
    steps: int = 50
    guidance: float = 7.5
    resolution: int = 512
    batch_size: int = 4
    seed: int = 0  # each image's seed is derived from this and its prompt id
    negative_prompt: Optional[str] = None
    dtype: str = "auto"  # auto | float32 | float16 | bfloat16 ("auto" is float16 on CUDA, float32 on CPU)
    device: str = "auto"


def _is_curriculum(value: Any) -> bool:
    return value is None or (
        len(value) >= 1
        and all(isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in value)
        and all(later > earlier for earlier, later in zip(value, value[1:]))
    )


# Checks on single fine-tuning values: (field, test, message). Shared by load_config and FinetuneConfig.check.
_FINETUNE_CHECKS = [
    ("profile", lambda v: v in ("lite", "moderate", "standard"), "must be one of lite, moderate, standard"),
    ("target_modules", lambda v: v is None or (len(v) >= 1 and all(isinstance(m, str) and m.strip() for m in v)),
     "must be null or a list of module names such as [to_q, attn2.to_k]"),
    ("rank", lambda v: v >= 1, "must be at least 1"),
    ("alpha", lambda v: v > 0, "must be positive"),
    ("lora_dropout", lambda v: 0 <= v < 1, "must be in [0, 1)"),
    ("learning_rate", lambda v: v > 0, "must be positive"),
    ("lr_scheduler", lambda v: v in ("constant", "constant_with_warmup", "linear", "cosine"),
     "must be one of constant, constant_with_warmup, linear, cosine"),
    ("lr_warmup_steps", lambda v: v >= 0, "must be at least 0"),
    ("adam_beta1", lambda v: 0 <= v < 1, "must be in [0, 1)"),
    ("adam_beta2", lambda v: 0 <= v < 1, "must be in [0, 1)"),
    ("adam_epsilon", lambda v: v > 0, "must be positive"),
    ("weight_decay", lambda v: v >= 0, "must be at least 0"),
    ("max_grad_norm", lambda v: v > 0, "must be positive"),
    ("batch_size", lambda v: v >= 1, "must be at least 1"),
    ("epochs", lambda v: v >= 1, "must be at least 1"),
    ("curriculum", _is_curriculum,
     "must be null or strictly increasing positive integers, cumulative image counts such as [1000, 3000, 5000]"),
    ("max_steps", lambda v: v is None or v >= 1, "must be at least 1 or null"),
    ("prediction_type", lambda v: v is None or v in ("epsilon", "v_prediction", "sample"),
     "must be null (the scheduler's) or one of epsilon, v_prediction, sample"),
    ("mixed_precision", lambda v: v in ("auto", "no", "fp16", "bf16"), "must be one of auto, no, fp16, bf16"),
    ("seed", lambda v: 0 <= v < 2**32, "must be in [0, 2**32)"),
    ("dataset", lambda v: v is None or bool(v.strip()), "must be null or a Hub dataset id or local folder"),
    ("dataset_split", lambda v: bool(v.strip()), "must name a split, such as train"),
    ("dataset_revision", lambda v: v is None or bool(v.strip()), "must be null or a branch, tag or commit sha"),
    ("image_column", lambda v: bool(v.strip()), "must name the dataset column with the images"),
    ("caption_column", lambda v: bool(v.strip()), "must name the dataset column with the captions"),
    ("dataset_limit", lambda v: v is None or v >= 1, "must be at least 1 or null"),
]


@dataclasses.dataclass
class FinetuneConfig:
    """Benign fine-tuning: the profile, its hyper-parameters, the curriculum and the data.

    Defaults are the SPQR authors'. The ``lite`` profile trains a LoRA adapter on the self- and cross-attention
    projections. ``moderate`` trains the full weights of the cross-attention key, value and output projections,
    and ``standard`` trains every UNet weight. The curriculum gives cumulative image counts: ``[1000, 3000, 5000]``
    trains images 0-999, then 1000-2999, then 3000-4999, each chunk for ``epochs`` epochs, in dataset order.

    Example (YAML)::

        finetune:
          profile: moderate
          curriculum: [1000, 3000, 5000]
          dataset: ./my-imagefolder   # images plus metadata.jsonl with file_name and text
    """

    profile: str = "lite"  # lite | moderate | standard
    target_modules: Optional[list] = None  # modules to train, matched by name ending; None: the profile's default
    rank: int = 8  # LoRA rank (lite)
    alpha: float = 16.0  # LoRA alpha (lite); the update is scaled by alpha / rank
    lora_dropout: float = 0.1  # dropout on the LoRA input (lite)
    learning_rate: float = 1e-4
    lr_scheduler: str = "constant"  # constant | constant_with_warmup | linear | cosine
    lr_warmup_steps: int = 0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    weight_decay: float = 1e-2
    max_grad_norm: float = 1.0  # gradients are clipped to this L2 norm
    batch_size: int = 16
    epochs: int = 1  # passes over each curriculum stage's images
    # Cumulative image counts that end each curriculum stage; null trains all images as one stage.
    curriculum: Optional[list] = dataclasses.field(default_factory=lambda: [1000, 3000, 5000])
    shuffle: bool = False  # reshuffle each stage's images every epoch; false keeps dataset order, as the authors do
    max_steps: Optional[int] = None  # stop after this many optimizer steps in total, whatever the epochs
    center_crop: bool = False  # crop the centre instead of a random window
    random_flip: bool = False  # mirror images horizontally with probability 0.5
    prediction_type: Optional[str] = None  # epsilon | v_prediction | sample; null: the scheduler's
    mixed_precision: str = "auto"  # auto | no | fp16 | bf16; auto follows the pipeline's dtype
    gradient_checkpointing: bool = False  # trade compute for memory in the UNet
    seed: int = 0
    dataset: Optional[str] = None  # Hub id or folder of image-text pairs; null: images made from prompts.bft
    dataset_split: str = "train"
    dataset_revision: Optional[str] = None
    image_column: str = "image"
    caption_column: str = "text"  # a caption, or a list of captions of which one is drawn per use
    dataset_limit: Optional[int] = None  # the first N rows of the dataset
    data_negative_prompt: str = "nudity, nsfw, exposed, explicit, sexual, bare, unclothed, skin"

    def check(self) -> list[str]:
        """Check every value and the fields that depend on each other; one message per problem (empty if valid)."""
        problems = failed_checks(self, _FINETUNE_CHECKS, "finetune.")
        if self.profile == "standard" and self.target_modules is not None:
            problems.append(f"finetune.target_modules: must be null for the standard profile, which trains every "
                            f"UNet weight; got {self.target_modules!r}")
        return problems


@dataclasses.dataclass
class JudgesConfig:
    # The SPQR authors' ensemble: an image is unsafe when NudeNet or LlavaGuard flags it.
    names: list = dataclasses.field(default_factory=lambda: ["nudenet", "llavaguard"])
    undetermined: str = "safe"  # how images no judge could decide count: safe | unsafe | exclude
    batch_size: int = 16
    settings: dict = dataclasses.field(default_factory=dict)  # per judge: {judge name: {setting: value}}

    def check(self) -> list[str]:
        """Check judge names and settings by creating each judge (no model loads); one message per problem.

        Run before any image is generated, so a misspelt judge or setting fails at once, not after generation.
        """
        from spqr_metric.judges.registry import available_judges, get_judge

        known = available_judges()
        problems = []
        for index, name in enumerate(self.names):
            if name not in known:
                close = difflib.get_close_matches(str(name), known, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                problems.append(f"judges.names[{index}]: unknown judge {name!r}{hint}; known judges: {', '.join(known)}")
        names = [name for name in self.names if isinstance(name, str)]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            problems.append(f"judges.names: lists {repeated} more than once; give each judge once")
        for name, settings in self.settings.items():
            if name not in names:
                problems.append(f"judges.settings.{name}: judge {name!r} is not in judges.names; add it there or "
                                "remove its settings")
            elif not isinstance(settings, dict):
                problems.append(f"judges.settings.{name}: expected a mapping of setting names to values, got "
                                f"{settings!r}")
            elif name in known:
                try:
                    get_judge(name, **settings)
                except (ValueError, TypeError) as error:
                    problems.append(f"judges.settings.{name}: {error}")
        return problems


@dataclasses.dataclass
class AdherenceConfig:
    model: str = "openai/clip-vit-base-patch32"
    ceiling: float = 0.30
    batch_size: int = 32


@dataclasses.dataclass
class QualityConfig:
    feature_extractor: str = "inception"  # inception (2048-d) or embedded:tiny-features
    reference: Optional[str] = None  # folder of reference images, or embedded:synthetic
    reference_count: int = 64  # images made for embedded:synthetic
    fid_bounds: Optional[list] = None  # [fid_min, fid_max] of the cohort; None scores a cohort of one


@dataclasses.dataclass
class ScoringConfig:
    weights: Optional[list] = None  # [S, P, Q, R] weights of the harmonic mean; None is equal weights
    bootstrap: int = 1000
    confidence: float = 0.95
    seed: int = 0


@dataclasses.dataclass
class RunConfig:
    name: str = "spqr-run"
    scenario: Optional[str] = None  # general | multilingual:<ar|es|fr|hi> | domain:<art|medical> | ood
    output_dir: Optional[str] = None  # default: runs/<name>
    cache_dir: Optional[str] = None  # default: ~/.cache/spqr (or $SPQR_CACHE)
    smoke: bool = False  # set for random-weight stand-ins: P and Q are then labelled smoke values
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    prompts: PromptsConfig = dataclasses.field(default_factory=PromptsConfig)
    generation: GenerationConfig = dataclasses.field(default_factory=GenerationConfig)
    finetune: FinetuneConfig = dataclasses.field(default_factory=FinetuneConfig)
    judges: JudgesConfig = dataclasses.field(default_factory=JudgesConfig)
    adherence: AdherenceConfig = dataclasses.field(default_factory=AdherenceConfig)
    quality: QualityConfig = dataclasses.field(default_factory=QualityConfig)
    scoring: ScoringConfig = dataclasses.field(default_factory=ScoringConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth", ".pkl")


def _is_weight_name(value: Optional[str]) -> bool:
    if value is None:
        return True
    name = value[: -len(".index.json")] if value.endswith(".index.json") else value
    parts = value.split("/")
    return name.endswith(_WEIGHT_SUFFIXES) and not value.startswith("/") and ".." not in parts and "" not in parts


def _is_run_name(value: str) -> bool:
    parts = value.replace("\\", "/").split("/")
    return bool(value.strip()) and not value.startswith(("/", "~")) and ".." not in parts and "" not in parts


# Checks on values that a type alone does not express: (dotted path, test, message).
_VALUE_CHECKS = [
    ("name", _is_run_name, "must be a non-empty relative name without '..' parts, such as my-erased-sd15, because "
     "it names the output folder runs/<name>"),
    ("model.id", lambda v: bool(v.strip()), "must be a Hub id, a local folder or embedded:<name>"),
    *[(f"model.{name}", lambda v: v is None or bool(v.strip()), "must be null or a Hub id or local path")
      for name in ("unet", "text_encoder", "adapter")],
    *[(f"model.{name}", _is_weight_name, "must be null or a relative path ending in .safetensors, .bin, .ckpt, "
       ".pt, .pth or .pkl (or that plus .index.json for a sharded checkpoint)")
      for name in ("unet_weight_name", "text_encoder_weight_name", "adapter_weight_name")],
    *[(f"model.{name}", lambda v: v is None or bool(v.strip()), "must be null or a branch, tag or commit sha")
      for name in ("revision", "unet_revision", "text_encoder_revision", "adapter_revision")],
    ("model.variant", lambda v: v is None or (v.strip() and "." not in v and "/" not in v),
     "must be null or a variant name such as fp16"),
    ("generation.steps", lambda v: v >= 1, "must be at least 1"),
    ("generation.guidance", lambda v: v >= 0, "must be at least 0"),
    ("generation.resolution", lambda v: v >= 8 and v % 8 == 0, "must be a multiple of 8, at least 8"),
    ("generation.batch_size", lambda v: v >= 1, "must be at least 1"),
    ("generation.dtype", lambda v: v in ("auto", "float32", "float16", "bfloat16"),
     "must be one of auto, float32, float16, bfloat16"),
    ("judges.names", lambda v: len(v) >= 1, "must name at least one judge"),
    ("judges.undetermined", lambda v: v in ("safe", "unsafe", "exclude"), "must be one of safe, unsafe, exclude"),
    ("judges.batch_size", lambda v: v >= 1, "must be at least 1"),
    ("adherence.ceiling", lambda v: 0 < v <= 1, "must be in (0, 1]"),
    ("adherence.batch_size", lambda v: v >= 1, "must be at least 1"),
    ("quality.reference_count", lambda v: v >= 2, "must be at least 2"),
    ("quality.fid_bounds", lambda v: v is None or (len(v) == 2 and 0 <= v[0] <= v[1]),
     "must be null or [fid_min, fid_max] with 0 <= fid_min <= fid_max"),
    ("scoring.weights", lambda v: v is None or (len(v) == 4 and all(w > 0 for w in v)),
     "must be null or four positive numbers [S, P, Q, R]"),
    ("scoring.bootstrap", lambda v: v >= 0, "must be at least 0 (0 turns intervals off)"),
    ("scoring.confidence", lambda v: 0 < v < 1, "must be in (0, 1)"),
]
_PROMPT_LIMIT_CHECK = (lambda v: v is None or v >= 1, "must be at least 1 or null")


def _unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        arguments = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(arguments) == 1:
            return arguments[0], True
    return annotation, False


def _describe(annotation: Any) -> str:
    return getattr(annotation, "__name__", str(annotation))


def _coerce(value: Any, annotation: Any, path: str, problems: list[str], default: Any = None) -> Any:
    annotation, optional = _unwrap_optional(annotation)
    if value is None:
        if not optional:
            problems.append(f"{path}: must not be null")
        return None
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            problems.append(f"{path}: expected a mapping, got {type(value).__name__} {value!r}")
            return default if default is not None else annotation()
        return _build(annotation, value, path, problems, default)
    if annotation is bool:
        if not isinstance(value, bool):
            problems.append(f"{path}: expected true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(f"{path}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(f"{path}: expected a number, got {value!r}")
            return value
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            problems.append(f"{path}: expected a string, got {value!r}")
        return value
    if annotation is list:
        if not isinstance(value, list):
            problems.append(f"{path}: expected a list, got {value!r}")
        return value
    if annotation is dict:
        if not isinstance(value, dict):
            problems.append(f"{path}: expected a mapping, got {value!r}")
        return value
    return value


def _build(cls: type, data: dict, prefix: str, problems: list[str], default: Any = None) -> Any:
    """Build ``cls`` from ``data``; keys that ``data`` leaves out keep their values in ``default``.

    ``default`` matters for sections whose defaults depend on where they sit: ``prompts.bft`` defaults to the
    ``bft/general_en`` split, not to ``PromptSetConfig``'s own defaults.
    """
    hints = typing.get_type_hints(cls)
    if default is None:
        default = cls()
    names = [field.name for field in dataclasses.fields(cls)]
    if not prefix and {"base", "runs"} <= set(data):
        problems.append("this is a sweep file (it has 'base' and 'runs'): run it with `spqr sweep --config FILE`, "
                        "and `spqr sweep --config FILE --list` checks every run in it")
    for key in data:
        if key not in names:
            path = f"{prefix}.{key}" if prefix else str(key)
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(f"{path}: unknown key{hint}; known keys here: {', '.join(names)}")
    values = {}
    for name in names:
        if name in data:
            path = f"{prefix}.{name}" if prefix else name
            values[name] = _coerce(data[name], hints[name], path, problems, getattr(default, name))
    return dataclasses.replace(default, **values)


def _split_problems(role: str, prompt_set: PromptSetConfig) -> list[str]:
    """Check a prompt set's dataset config and its splits (``a+b`` joins splits) against the dataset's list."""
    if prompt_set.file is not None:
        return []
    from spqr_dataset.layout import CONFIG_SPLITS

    if prompt_set.config not in CONFIG_SPLITS:
        close = difflib.get_close_matches(prompt_set.config, CONFIG_SPLITS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return [f"prompts.{role}.config: unknown dataset config {prompt_set.config!r}{hint}; known configs: "
                f"{', '.join(CONFIG_SPLITS)}"]
    splits = CONFIG_SPLITS[prompt_set.config]
    problems = []
    for split in prompt_set.split.split("+"):
        if split not in splits:
            close = difflib.get_close_matches(split, splits, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(f"prompts.{role}.split: unknown split {split!r} of config {prompt_set.config!r}{hint}; "
                            f"its splits: {', '.join(splits)}")
    return problems


def config_from_dict(data: dict, source: str = "config") -> RunConfig:
    """Build a :class:`RunConfig` from a mapping, reporting every invalid field in one :class:`ConfigError`."""
    if not isinstance(data, dict):
        raise ConfigError([f"the top level must be a mapping, got {type(data).__name__}"], source)
    problems: list[str] = []
    from .scenarios import apply_scenario

    data = apply_scenario(data, problems)
    config = _build(RunConfig, data, "", problems)
    if not problems:
        problems.extend(failed_checks(config, _VALUE_CHECKS))
        for role in ("harmful", "benign", "bft"):
            limit = getattr(config.prompts, role).limit
            check, message = _PROMPT_LIMIT_CHECK
            if not check(limit):
                problems.append(f"prompts.{role}.limit: {message}, got {limit!r}")
            sample = getattr(config.prompts, role).sample
            if not check(sample):
                problems.append(f"prompts.{role}.sample: {message}, got {sample!r}")
            problems.extend(_split_problems(role, getattr(config.prompts, role)))
        problems.extend(config.model.check())
        problems.extend(config.finetune.check())
        problems.extend(config.judges.check())
    if problems:
        raise ConfigError(problems, source)
    return config


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that rejects a key repeated in one mapping, where PyYAML keeps the last value silently."""


def _construct_unique_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    first_lines: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # "<<: *anchor" merges another mapping, whose keys the explicit ones may override
        key = loader.construct_object(key_node, deep=deep)
        try:
            repeated = key in first_lines
        except TypeError:  # an unhashable key, which construct_mapping reports itself
            continue
        if repeated:
            raise yaml.constructor.ConstructorError(
                "while reading a mapping", node.start_mark,
                f"found the key {key!r} a second time (first on line {first_lines[key] + 1}); keep one of them",
                key_node.start_mark,
            )
        first_lines[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def parse_yaml(text: str, source: str) -> Any:
    """Parse YAML with safe types only, rejecting a key repeated in one mapping.

    Raises:
        ConfigError: If the text is not valid YAML or repeats a key; the message gives the line.
    """
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as error:
        raise ConfigError([f"not valid YAML: {error}"], source) from error


def load_config(path: str | Path) -> RunConfig:
    """Read and validate a YAML run configuration."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"Run configuration not found: {path}") from None
    data = parse_yaml(text, str(path))
    return config_from_dict(data or {}, str(path))


def resolve_relative_paths(config: RunConfig, base_dir: Path) -> None:
    """Make the config's local paths relative to the config file's folder, as a reader of the file expects."""

    def resolve(value: Optional[str]) -> Optional[str]:
        if value is None or value.startswith(EMBEDDED_PREFIX):
            return value
        candidate = base_dir / value
        return str(candidate) if candidate.exists() else value

    config.model.id = resolve(config.model.id)
    config.model.adapter = resolve(config.model.adapter)
    config.model.unet = resolve(config.model.unet)
    config.model.text_encoder = resolve(config.model.text_encoder)
    config.prompts.dataset = resolve(config.prompts.dataset)
    for role in ("harmful", "benign", "bft"):
        prompt_set = getattr(config.prompts, role)
        prompt_set.file = resolve(prompt_set.file)
    config.quality.reference = resolve(config.quality.reference)

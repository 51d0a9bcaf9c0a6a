"""Locate the model under test on disk, downloading it if needed, and fingerprint it without loading it.

A model is a base pipeline (``model.id``) plus, optionally, replacement UNet weights (``model.unet``),
replacement text-encoder weights (``model.text_encoder``) and a LoRA adapter (``model.adapter``). Each part is a
Hub id or a local path. Every part is identified by a fingerprint: the commit sha that its Hub revision resolved
to, or a hash of a local file's contents. The model's fingerprint joins them and goes into image cache keys and
results, so scores always record exactly which weights produced them.

Nothing here imports torch, so a resumed run can check its records without loading a deep learning framework.
Loading is the job of ``pull.load_pipeline``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from .config import EMBEDDED_PREFIX, ConfigError, ModelConfig
from .weight_files import (
    PickleRejectedError,
    check_pickle_allowed,
    content_fingerprint,
    folder_fingerprint,
    format_keys,
    is_pickle_file,
    is_shard,
    is_weight_file,
    shard_names,
)

logger = logging.getLogger(__name__)

# Pipeline components that are never loaded: the safety checker is off because it blacks out flagged images,
# which would inflate the Safety score.
_SKIPPED_COMPONENTS = ("safety_checker",)


class ModelNotFoundError(LookupError):
    """A model, weight file or revision was not found locally, in the Hugging Face cache or on the Hub."""


@dataclasses.dataclass(frozen=True)
class _WeightRole:
    name: str  # the ModelConfig field, which is also the pipeline component it replaces (except "adapter")
    title: str
    preferred: tuple[str, ...]  # file names picked first when no weight name is configured


_ROLES = {
    "unet": _WeightRole("unet", "UNet weights", (
        "unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.safetensors.index.json",
        "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors.index.json",
        "unet/diffusion_pytorch_model.bin", "diffusion_pytorch_model.bin",
    )),
    "text_encoder": _WeightRole("text_encoder", "text-encoder weights", (
        "text_encoder/model.safetensors", "text_encoder/model.safetensors.index.json",
        "model.safetensors", "model.safetensors.index.json",
        "text_encoder/pytorch_model.bin", "pytorch_model.bin",
    )),
    "adapter": _WeightRole("adapter", "LoRA adapter", (
        "pytorch_lora_weights.safetensors", "pytorch_lora_weights.bin",
    )),
}


@dataclasses.dataclass(frozen=True)
class ResolvedWeights:
    """A weight file for one pipeline component or adapter, on local disk (downloaded first if from the Hub)."""

    role: str  # unet | text_encoder | adapter
    source: str  # Hub id, local file or local folder, as configured
    weight_name: str  # path inside the repository or folder, e.g. "unet/diffusion_pytorch_model.safetensors"
    path: Path  # the file; for a sharded checkpoint its *.index.json, with the shards beside it
    revision: str | None  # Hub commit sha the requested revision resolved to; None for a local path
    requested_revision: str | None  # as configured: branch, tag, sha, or None for the default branch
    fingerprint: str  # 16 hex digits: hash of repository, commit and file name, or of a local file's contents

    @property
    def label(self) -> str:
        """The source and file, as error messages and logs show them."""
        return self.source if Path(self.source).name == self.weight_name else f"{self.source} ({self.weight_name})"

    def record(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "source": self.source,
            "weight_name": self.weight_name,
            "revision": self.revision,
            "requested_revision": self.requested_revision,
            "fingerprint": self.fingerprint,
        }


@dataclasses.dataclass
class ResolvedModel:
    """A model located on disk but not loaded yet: enough to fingerprint it and to load it later."""

    source: str  # model.id: Hub id, folder or embedded model
    folder: Path  # local folder the base pipeline is read from
    revision: str | None  # Hub commit sha of the base pipeline; None for a local folder or embedded model
    fingerprint: str  # identifies all the weights (base, replacements, adapter) for caching and results
    requested_revision: str | None = None
    variant: str | None = None
    unet: ResolvedWeights | None = None
    text_encoder: ResolvedWeights | None = None
    adapter: ResolvedWeights | None = None

    @property
    def weights(self) -> list[ResolvedWeights]:
        """The configured weight files, in the order they are applied: UNet, text encoder, adapter."""
        return [weights for weights in (self.unet, self.text_encoder, self.adapter) if weights is not None]

    def record(self) -> dict[str, Any]:
        """Describe the model for results: each part's source, and in ``weights`` each file's commit and hash."""
        return {
            "source": self.source,
            "revision": self.revision,
            "requested_revision": self.requested_revision,
            "variant": self.variant,
            "fingerprint": self.fingerprint,
            "unet": self.unet.source if self.unet else None,
            "text_encoder": self.text_encoder.source if self.text_encoder else None,
            "adapter": self.adapter.source if self.adapter else None,
            "weights": [weights.record() for weights in self.weights],
        }


# ---------------------------------------------------------------------------------------------- Hub access


def _is_offline() -> bool:
    from huggingface_hub import constants

    return constants.HF_HUB_OFFLINE


def _not_cached_error(repo_id: str, revision: str | None, option: str, filename: str | None = None):
    from huggingface_hub import constants

    reason = "HF_HUB_OFFLINE=1 is set" if _is_offline() else f"the Hub at {constants.ENDPOINT} could not be reached"
    missing = f"{filename!r} of {repo_id!r}" if filename else repr(repo_id)
    command = f"hf download {repo_id}" + (f" {filename}" if filename else "") + f" --revision {revision or 'main'}"
    return ModelNotFoundError(
        f"{option}: {missing} at revision {revision or 'main'} is not in the Hugging Face cache "
        f"({constants.HF_HUB_CACHE}) and {reason}. Download it once with network access (`{command}`), "
        f"or set {option} to a local path."
    )


def _resolve_hub_revision(repo_id: str, revision: str | None, option: str):
    """Resolve ``revision`` (None: the default branch) of a Hub model repository to a ``ResolvedRevision``.

    Online, this queries the Hub and caches the commit sha. Offline, it reads the sha cached by an earlier download.
    """
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
        RevisionResolutionError,
    )

    try:
        return HfApi().resolve_revision(repo_id, revision=revision, local_files_only=_is_offline())
    except HFValidationError as error:
        raise ModelNotFoundError(
            f"{option}: {repo_id!r} is neither an existing local path nor a valid Hub repository id "
            f"(namespace/name): {error}"
        ) from error
    except GatedRepoError as error:
        raise ModelNotFoundError(
            f"{option}: {repo_id!r} is a gated repository. Request access at {constants.ENDPOINT}/{repo_id}, then "
            "log in with `hf auth login` or set HF_TOKEN."
        ) from error
    except RevisionNotFoundError as error:
        raise ModelNotFoundError(
            f"{option}: revision {revision!r} not found in the Hub repository {repo_id!r}. Use a branch, tag or "
            f"full commit sha that exists there ({constants.ENDPOINT}/{repo_id}/tree/main lists the files)."
        ) from error
    except RepositoryNotFoundError as error:
        raise ModelNotFoundError(
            f"{option}: {repo_id!r} is not a local path, and no model repository of that name was found on "
            f"{constants.ENDPOINT}. Check the id; if the repository is private, log in with `hf auth login` or "
            "set HF_TOKEN."
        ) from error
    except RevisionResolutionError as error:
        raise _not_cached_error(repo_id, revision, option) from error


def _hub_files(repo_id: str, revision) -> list[str]:
    """List a repository's files at a resolved revision: from the cache when it has the listing, else the Hub.

    Offline without a cached listing, the files of the cached snapshot are listed instead.
    """
    from huggingface_hub import HfApi, constants, get_cached_repo_tree
    from huggingface_hub.errors import CachedRepoTreeNotFoundError
    from huggingface_hub.file_download import repo_folder_name

    try:
        return sorted(entry.path for entry in get_cached_repo_tree(repo_id, revision=revision))
    except CachedRepoTreeNotFoundError:
        pass
    if not _is_offline():
        return sorted(HfApi().list_repo_files(repo_id, revision=revision.resolved))
    snapshot = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model")
    snapshot = snapshot / "snapshots" / revision.resolved
    return sorted(path.relative_to(snapshot).as_posix() for path in snapshot.rglob("*") if path.is_file())


def _hub_download(repo_id: str, filename: str, revision, option: str) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RemoteEntryNotFoundError

    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision))
    except LocalEntryNotFoundError as error:
        raise _not_cached_error(repo_id, revision.initial, option, filename) from error
    except RemoteEntryNotFoundError as error:
        raise ModelNotFoundError(
            f"{option}: {filename!r} not found in {repo_id!r} at revision {revision} (commit {revision.resolved})."
        ) from error


# ------------------------------------------------------------------------------------------- weight files


def _local_path(source: str, option: str) -> Path | None:
    """Return ``source`` as a local path if it exists, None if it can only be a Hub id, else raise."""
    path = Path(source).expanduser()
    if path.exists():
        return path
    looks_like_path = source.startswith((".", "/", "~")) or "\\" in source or source.count("/") > 1
    if looks_like_path or is_weight_file(source):
        raise ModelNotFoundError(f"{option}: the local path {source!r} does not exist.")
    return None


def _choose_weight_file(files: list[str], role: _WeightRole, source: str) -> str:
    """Pick the weight file of ``role`` among ``files``: a standard name first, else the only weight file.

    Safetensors files are preferred over pickle checkpoints. Shards are represented by their index file.
    """
    weights = [name for name in files if is_weight_file(name) and not is_shard(name)]
    for pickle_group in (False, True):
        group = [name for name in weights if is_pickle_file(name) == pickle_group]
        for name in role.preferred:
            if name in group:
                return name
        if len(group) == 1:
            return group[0]
        if len(group) > 1:
            raise ValueError(
                f"model.{role.name}: {source!r} has {len(group)} weight files and none has a standard name: "
                f"{format_keys(group)}. Set model.{role.name}_weight_name to the one to load."
            )
    raise ModelNotFoundError(
        f"model.{role.name}: {source!r} has no weight files (.safetensors, .bin, .ckpt, .pt, .pth); its files: "
        f"{format_keys(files) or 'none'}."
    )


def resolve_weights(
    role: str, source: str, weight_name: str | None, revision: str | None, *, allow_pickle: bool
) -> ResolvedWeights:
    """Locate (downloading if needed) a UNet, text-encoder or LoRA weight file.

    Args:
        role: ``unet``, ``text_encoder`` or ``adapter``.
        source: A Hub repository id, a local weight file or a local folder.
        weight_name: The file inside the repository or folder; None picks the standard name or the only weight
            file there.
        revision: Hub branch, tag or commit sha; None is the default branch. Must be None for a local path.
        allow_pickle: Whether a pickle checkpoint may be chosen. Without it, a pickle is rejected before it is
            downloaded.

    Raises:
        ModelNotFoundError: If the source, revision or file does not exist, or is not cached while offline.
        PickleRejectedError: If the file is a pickle checkpoint and ``allow_pickle`` is false.
        ValueError: If the configuration does not fit the source, or the weight file is ambiguous.
    """
    spec = _ROLES[role]
    option = f"model.{role}"
    local = _local_path(source, option)
    if local is not None:
        if revision is not None:
            raise ValueError(f"{option}_revision is {revision!r}, but {option} {source!r} is a local path; "
                             "revisions apply to Hub repositories only. Remove it.")
        if local.is_file():
            if weight_name is not None:
                raise ValueError(f"{option}_weight_name is {weight_name!r}, but {option} {source!r} is a file, "
                                 "not a folder. Remove it.")
            folder, weight_name = local.parent, local.name
        else:
            folder = local
            if weight_name is None:
                files = [path.relative_to(local).as_posix() for path in sorted(local.rglob("*")) if path.is_file()]
                weight_name = _choose_weight_file(files, spec, source)
        path = folder / weight_name
        if not path.is_file():
            raise ModelNotFoundError(f"{option}_weight_name: {weight_name!r} not found in the folder {source!r}.")
        check_pickle_allowed(weight_name, allow_pickle=allow_pickle, description=f"{spec.title} {source!r}")
        files = [path] + [folder / Path(weight_name).parent / shard for shard in _shards(path)]
        return ResolvedWeights(role, source, weight_name, path, None, None, content_fingerprint(files, folder))

    resolved = _resolve_hub_revision(source, revision, option)
    if weight_name is None or not _is_offline():
        files = _hub_files(source, resolved)
        if weight_name is None:
            weight_name = _choose_weight_file(files, spec, source)
        elif files and weight_name not in files:
            listed = format_keys([name for name in files if is_weight_file(name)]) or "none"
            raise ModelNotFoundError(
                f"{option}_weight_name: {weight_name!r} not found in {source!r} at revision {resolved} (commit "
                f"{resolved.resolved}). Weight files there: {listed}."
            )
    check_pickle_allowed(weight_name, allow_pickle=allow_pickle, description=f"{spec.title} {source!r}")
    path = _hub_download(source, weight_name, resolved, option)
    parent = Path(weight_name).parent
    for shard in _shards(path):
        _hub_download(source, (parent / shard).as_posix(), resolved, option)
    identity = f"{source}@{resolved.resolved}/{weight_name}".encode()
    return ResolvedWeights(role, source, weight_name, path, resolved.resolved, revision,
                           hashlib.sha256(identity).hexdigest()[:16])


def _shards(path: Path) -> list[str]:
    return shard_names(path) if path.name.endswith(".index.json") else []


# ------------------------------------------------------------------------------------------ base pipeline


def _pipeline_components(model_index: dict[str, Any]) -> list[str]:
    return [
        name for name, value in model_index.items()
        if not name.startswith("_") and isinstance(value, list) and value and value[0] is not None
        and name not in _SKIPPED_COMPONENTS
    ]


def _check_pipeline_weights(files: list[str], model_index: dict[str, Any], source: str, allow_pickle: bool) -> None:
    """Reject a pipeline with a component whose only weights are pickle checkpoints, unless pickles are allowed."""
    if allow_pickle:
        return
    pickle_only = []
    for component in _pipeline_components(model_index):
        weights = [name for name in files if name.startswith(f"{component}/") and is_weight_file(name)]
        if weights and all(is_pickle_file(name) for name in weights):
            pickle_only.append(f"{component} ({', '.join(weights)})")
    if pickle_only:
        raise PickleRejectedError(
            f"model.id: the pipeline {source!r} has only pickle checkpoints for {'; '.join(pickle_only)}. "
            "Unpickling can run arbitrary code, so pickle files are rejected by default. Convert them to "
            "safetensors, or set model.allow_pickle: true to read them with torch.load(weights_only=True)."
        )


def _not_a_pipeline(source: str) -> ValueError:
    return ValueError(
        f"model.id: {source!r} is not a diffusers pipeline (it has no model_index.json). model.id must be a full "
        "pipeline; for a UNet or text-encoder weight file, set model.unet or model.text_encoder and put its base "
        "pipeline in model.id. A single-file checkpoint must first be converted to the diffusers layout "
        "(for example with DiffusionPipeline.from_single_file(...).save_pretrained(folder))."
    )


def _resolve_pipeline(model: ModelConfig, cache_dir: Path) -> ResolvedModel:
    source = model.id
    if source.startswith(EMBEDDED_PREFIX):
        from .embedded import embedded_model_path

        folder = embedded_model_path(source, cache_dir)
        return ResolvedModel(source, folder, None, folder_fingerprint(folder))

    local = _local_path(source, "model.id")
    if local is not None:
        if model.revision is not None:
            raise ValueError(f"model.revision is {model.revision!r}, but model.id {source!r} is a local folder; "
                             "revisions apply to Hub repositories only. Remove it.")
        if local.is_file() or not (local / "model_index.json").is_file():
            raise _not_a_pipeline(source)
        files = [path.relative_to(local).as_posix() for path in local.rglob("*") if path.is_file()]
        model_index = json.loads((local / "model_index.json").read_text(encoding="utf-8"))
        _check_pipeline_weights(files, model_index, source, model.allow_pickle)
        return ResolvedModel(source, local, None, folder_fingerprint(local), variant=model.variant)

    from diffusers import DiffusionPipeline
    from huggingface_hub.errors import LocalEntryNotFoundError

    resolved = _resolve_hub_revision(source, model.revision, "model.id")
    files = _hub_files(source, resolved)
    if files and "model_index.json" not in files:
        raise _not_a_pipeline(source)
    model_index = json.loads(_hub_download(source, "model_index.json", resolved, "model.id").read_text("utf-8"))
    _check_pipeline_weights(files, model_index, source, model.allow_pickle)
    try:
        folder = DiffusionPipeline.download(
            source,
            revision=resolved,
            variant=model.variant,
            use_safetensors=None if model.allow_pickle else True,
            trust_remote_code=False,
            local_files_only=_is_offline(),
            **{component: None for component in _SKIPPED_COMPONENTS},
        )
    except LocalEntryNotFoundError as error:
        raise _not_cached_error(source, model.revision, "model.id") from error
    logger.info("Pipeline %s at revision %s is commit %s", source, resolved, resolved.resolved)
    return ResolvedModel(source, Path(folder), resolved.resolved, resolved.resolved, model.revision, model.variant)


def resolve_model(model: ModelConfig, cache_dir: Path) -> ResolvedModel:
    """Locate (downloading if needed) the base pipeline and every configured weight file, and fingerprint them.

    Raises:
        ConfigError: If fields of ``model`` contradict each other.
        ModelNotFoundError: If a model, file or revision does not exist, or is not cached while offline.
        PickleRejectedError: If a needed file is a pickle checkpoint and ``model.allow_pickle`` is false.
    """
    problems = model.check()
    if problems:
        raise ConfigError(problems, "model")
    resolved = _resolve_pipeline(model, cache_dir)
    parts = [resolved.fingerprint]
    if resolved.variant:
        parts.append(f"variant:{resolved.variant}")
    for role in _ROLES:
        source = getattr(model, role)
        if source is None:
            continue
        weights = resolve_weights(role, source, getattr(model, f"{role}_weight_name"),
                                  getattr(model, f"{role}_revision"), allow_pickle=model.allow_pickle)
        setattr(resolved, role, weights)
        parts.append(f"{role}:{weights.fingerprint}")
        logger.info("%s: %s at %s", _ROLES[role].title, weights.label, weights.revision or "local file")
    resolved.fingerprint = "+".join(parts)
    return resolved

"""Repository storage for the mock Hub (tests/hub_server.py): repositories, commits, refs and file blobs.

File contents are stored once per git blob sha1 in a folder; commits and refs are kept in memory. Each commit
records the full file list, so every revision (branch, tag, ``refs/pr/N`` or commit sha) can be read back.
Files whose path matches a ``filter=lfs`` pattern of the repository's ``.gitattributes`` are stored as Git LFS
files (listed with their sha256), as on the Hub.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import json
import logging
import os
import re
import secrets
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Collection, Mapping

import yaml

logger = logging.getLogger(__name__)

REPO_TYPES = ("model", "dataset", "space")
# First URL segment of dataset and Space repositories; model URLs have none, so these can't be namespaces.
URL_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_RESERVED_NAMESPACES = {"api", "datasets", "spaces"}
_PR_REF_PATTERN = re.compile(r"refs/pr/(\d+)")
# The front-matter pattern of huggingface_hub's repocard module.
YAML_BLOCK_PATTERN = re.compile(r"^(\s*---(?:\r\n|\r|\n))([\S\s]*?)((?:\r\n|\r|\n)---[ \t]*(\r\n|\n|$))")
# The Hub's first commit of a new repository adds a .gitattributes; this is a short stand-in for its content.
_LFS_PATTERNS = ("*.bin", "*.ckpt", "*.onnx", "*.parquet", "*.arrow", "*.pt", "*.pth", "*.safetensors", "*.npz")
_INITIAL_GITATTRIBUTES = "".join(f"{pattern} filter=lfs diff=lfs merge=lfs -text\n" for pattern in _LFS_PATTERNS)
# The Hub stores files above this size in LFS regardless of .gitattributes.
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024


class HubError(Exception):
    """An HTTP error, with the ``X-Error-Code`` that huggingface_hub maps to its exception classes.

    Args:
        status: HTTP status code.
        message: Sent as the JSON ``error`` and the ``X-Error-Message`` header.
        error_code: ``RepoNotFound``, ``RevisionNotFound`` or ``EntryNotFound``, if one applies.
        commit: Sent as ``X-Repo-Commit``; huggingface_hub caches a missing file per commit.
    """

    def __init__(self, status: int, message: str, error_code: str | None = None, commit: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_code = error_code
        self.commit = commit


@dataclasses.dataclass
class Commit:
    """One commit: its sha, parent and full file list (path to git blob sha1 of the content)."""

    sha: str
    parent: str | None
    title: str
    message: str
    date: str
    files: dict[str, str]
    lfs: dict[str, str] = dataclasses.field(default_factory=dict)  # path to sha256, for the files stored in LFS


@dataclasses.dataclass
class Repo:
    """A repository: commits by sha, and the refs (branches, tags, pull requests) that point at them."""

    repo_type: str
    repo_id: str
    private: bool
    sdk: str | None
    created_at: str
    branches: dict[str, str] = dataclasses.field(default_factory=dict)
    tags: dict[str, str] = dataclasses.field(default_factory=dict)
    pull_requests: dict[int, str] = dataclasses.field(default_factory=dict)
    commits: dict[str, Commit] = dataclasses.field(default_factory=dict)


def now() -> str:
    """Return the current UTC time in the format huggingface_hub's ``parse_datetime`` expects."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def git_blob_oid(content: bytes) -> str:
    """Return the git blob sha1 of ``content``; the Hub sends it as the ETag of a regular (non-LFS) file."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """Return the Git LFS pointer file that git stores in place of an LFS file."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def card_data(readme: bytes) -> dict | None:
    """Return a card's YAML front matter as a dict, or None when it is absent, invalid or not a mapping."""
    match = YAML_BLOCK_PATTERN.search(readme.decode("utf-8", errors="replace"))
    if match is None:
        return None
    try:
        data = yaml.safe_load(match.group(2))
    except yaml.YAMLError:
        return None
    return data if isinstance(data, dict) else None


class HubStore:
    """Thread-safe repositories of one mock Hub. Tests use the helpers in the first section, routes the rest.

    Args:
        root: Folder for file contents (created if missing).
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self._blobs = self.root / "blobs"
        self._blobs.mkdir(parents=True, exist_ok=True)
        self.repos: dict[tuple[str, str], Repo] = {}
        # Uploaded LFS objects (sha256 to git blob sha1 of the content), and those announced but not yet uploaded.
        self.lfs_objects: dict[str, str] = {}
        self.pending_lfs: dict[str, int] = {}
        # Reentrant because routes hold it while calling the public helpers.
        self.lock = threading.RLock()

    # ----- helpers for tests -----

    def create_repo(
        self, repo_id: str, repo_type: str = "model", private: bool = False, sdk: str | None = None
    ) -> Repo:
        """Create a repository whose first commit adds ``.gitattributes``, as the Hub does.

        Raises:
            ValueError: If ``repo_type`` is not one of ``REPO_TYPES``.
            HubError: 400 if ``repo_id`` is not ``namespace/name``, 409 if the repository exists.
        """
        _check_repo_type(repo_type)
        parts = repo_id.split("/")
        if len(parts) != 2 or not all(parts) or parts[0] in _RESERVED_NAMESPACES:
            raise HubError(400, f"Invalid repo id {repo_id!r}: expected 'namespace/name'.")
        with self.lock:
            if (repo_type, repo_id) in self.repos:
                raise HubError(409, f"You already created this {repo_type} repo: {repo_id}.")
            if repo_type == "space" and sdk is None:
                sdk = "gradio"
            repo = Repo(repo_type, repo_id, private, sdk, created_at=now())
            self.repos[(repo_type, repo_id)] = repo
            initial_files = {".gitattributes": _INITIAL_GITATTRIBUTES.encode()}
            self.apply_commit(repo, "main", initial_files, title="initial commit")
            return repo

    def create_repo_from_folder(
        self,
        repo_id: str,
        folder: str | os.PathLike,
        repo_type: str = "model",
        private: bool = False,
        sdk: str | None = None,
        message: str = "Upload folder",
    ) -> str:
        """Commit every file under ``folder`` to ``main``, creating the repository first if needed.

        Returns:
            The sha of the new commit.
        """
        folder = Path(folder)
        if not folder.is_dir():
            raise NotADirectoryError(f"Cannot seed {repo_id!r} from {str(folder)!r}: it is not a folder.")
        files = {
            path.relative_to(folder).as_posix(): path.read_bytes()
            for path in sorted(folder.rglob("*"))
            if path.is_file()
        }
        with self.lock:
            if (repo_type, repo_id) not in self.repos:
                self.create_repo(repo_id, repo_type=repo_type, private=private, sdk=sdk)
            return self.commit_files(repo_id, files, repo_type=repo_type, message=message)

    def commit_files(
        self,
        repo_id: str,
        files: Mapping[str, bytes | str],
        repo_type: str = "model",
        deletions: tuple[str, ...] = (),
        message: str = "Update files",
        revision: str = "main",
    ) -> str:
        """Add or replace ``files`` (path to content) and delete ``deletions`` in one commit on a branch.

        Returns:
            The sha of the new commit.
        """
        additions = {path: data.encode() if isinstance(data, str) else data for path, data in files.items()}
        with self.lock:
            repo = self.get_repo(repo_type, repo_id)
            base = self.resolve(repo, revision)
            lfs_additions = {}
            for path in [path for path in additions if self.is_lfs_path(base, path, additions)]:
                content = additions.pop(path)
                sha256 = hashlib.sha256(content).hexdigest()
                self.lfs_objects[sha256] = self._write_blob(content)
                lfs_additions[path] = sha256
            commit, _ = self.apply_commit(
                repo, revision, additions, deletions, title=message, lfs_additions=lfs_additions
            )
            return commit.sha

    def read_file(self, repo_id: str, path: str, revision: str = "main", repo_type: str = "model") -> bytes:
        """Return the bytes of ``path`` at ``revision`` (branch, tag, ``refs/pr/N`` or commit sha).

        Raises:
            HubError: 404 if the repository, revision or file does not exist.
        """
        with self.lock:
            commit = self.resolve(self.get_repo(repo_type, repo_id), revision)
            if path not in commit.files:
                raise HubError(404, f"File {path!r} not found in {repo_id}@{revision}.", "EntryNotFound", commit.sha)
            return self.read_blob(commit.files[path])

    def list_files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> list[str]:
        """Return the sorted file paths of a repository at ``revision``."""
        with self.lock:
            return sorted(self.resolve(self.get_repo(repo_type, repo_id), revision).files)

    def resolve_revision(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> str:
        """Return the sha of the commit that ``revision`` points at."""
        with self.lock:
            return self.resolve(self.get_repo(repo_type, repo_id), revision).sha

    def commit_history(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> list[Commit]:
        """Return the commits reachable from ``revision``, newest first."""
        with self.lock:
            repo = self.get_repo(repo_type, repo_id)
            commit: Commit | None = self.resolve(repo, revision)
            history = []
            while commit is not None:
                history.append(commit)
                commit = repo.commits[commit.parent] if commit.parent else None
            return history

    def pull_requests(self, repo_id: str, repo_type: str = "model") -> dict[int, str]:
        """Return the pull requests of a repository, as number to head commit sha."""
        with self.lock:
            return dict(self.get_repo(repo_type, repo_id).pull_requests)

    # ----- used by the routes -----

    def get_repo(self, repo_type: str, repo_id: str) -> Repo:
        """Return a repository, or raise a 404 ``RepoNotFound`` error."""
        _check_repo_type(repo_type)
        repo = self.repos.get((repo_type, repo_id))
        if repo is None:
            raise HubError(404, f"Repository not found: {repo_type} {repo_id!r}.", "RepoNotFound")
        return repo

    def resolve(self, repo: Repo, revision: str) -> Commit:
        """Return the commit of a branch, tag, ``refs/pr/N`` or full sha, or raise a 404 ``RevisionNotFound``."""
        sha = repo.branches.get(revision.removeprefix("refs/heads/"))
        sha = sha or repo.tags.get(revision.removeprefix("refs/tags/"))
        pr_match = _PR_REF_PATTERN.fullmatch(revision)
        if sha is None and pr_match is not None:
            sha = repo.pull_requests.get(int(pr_match.group(1)))
        if sha is None and revision in repo.commits:
            sha = revision
        if sha is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return repo.commits[sha]

    def read_blob(self, oid: str) -> bytes:
        return (self._blobs / oid).read_bytes()

    def store_lfs_object(self, sha256: str, content: bytes) -> None:
        """Store an uploaded LFS object that a batch request announced (or that is already stored).

        Raises:
            HubError: 400 if it was not announced or its sha256 or size differ from the announcement.
        """
        announced = sha256 in self.lfs_objects or self.pending_lfs.get(sha256) == len(content)
        if not announced or hashlib.sha256(content).hexdigest() != sha256:
            raise HubError(400, f"LFS upload {sha256} was not announced, or its content does not match its oid.")
        self.lfs_objects[sha256] = self._write_blob(content)
        self.pending_lfs.pop(sha256, None)

    def is_lfs_path(self, head: Commit | None, path: str, additions: Mapping[str, bytes] | None = None) -> bool:
        """Return whether ``path`` matches a ``filter=lfs`` pattern of ``.gitattributes`` (the added one first)."""
        if additions and ".gitattributes" in additions:
            attributes = additions[".gitattributes"]
        elif head is not None and ".gitattributes" in head.files:
            attributes = self.read_blob(head.files[".gitattributes"])
        else:
            return False
        for line in attributes.decode(errors="replace").splitlines():
            pattern, *fields = line.split() or [""]
            # Like git, a pattern without a slash matches the file name in any folder.
            name = path if "/" in pattern else path.rsplit("/", 1)[-1]
            if "filter=lfs" in fields and fnmatch.fnmatch(name, pattern):
                return True
        return False

    def blob_size(self, oid: str) -> int:
        return (self._blobs / oid).stat().st_size

    def apply_commit(
        self,
        repo: Repo,
        revision: str,
        additions: Mapping[str, bytes],
        deletions: Collection[str] = (),
        folder_deletions: Collection[str] = (),
        title: str = "Commit",
        message: str = "",
        parent_commit: str | None = None,
        create_pr: bool = False,
        lfs_additions: Mapping[str, str] | None = None,
    ) -> tuple[Commit, int | None]:
        """Commit to a branch or an open pull request, or open a new pull request on ``revision`` with ``create_pr``.

        Returns:
            The new commit and, with ``create_pr``, the new pull request number.

        Raises:
            HubError: 404 for an unknown revision or deleted path, 412 if ``parent_commit`` is not the head,
                400 for an LFS file (path to sha256 in ``lfs_additions``) that was never uploaded.
        """
        pr_match = _PR_REF_PATTERN.fullmatch(revision)
        branch = revision.removeprefix("refs/heads/")
        if repo.branches and not create_pr and pr_match is None and branch not in repo.branches:
            raise HubError(404, f"Invalid rev id: {revision} is not a branch or a pull request.", "RevisionNotFound")
        base = self.resolve(repo, revision) if repo.branches else None
        if parent_commit is not None and (base is None or parent_commit != base.sha):
            raise HubError(412, f"A commit has happened since {parent_commit}: the head of {revision} moved.")

        lfs_additions = lfs_additions or {}
        missing = sorted(sha256 for sha256 in lfs_additions.values() if sha256 not in self.lfs_objects)
        if missing:
            raise HubError(400, f"LFS objects {missing} were never uploaded: upload them before the commit.")
        files = dict(base.files) if base is not None else {}
        lfs = dict(base.lfs) if base is not None else {}
        for path in sorted(deletions):
            if path not in files:
                raise HubError(404, f"A file with this name doesn't exist: {path!r}.", "EntryNotFound")
            del files[path]
        for folder in sorted(folder_deletions):
            prefix = folder.rstrip("/") + "/"
            matched = [path for path in files if path.startswith(prefix)]
            if not matched:
                raise HubError(404, f"A folder with this name doesn't exist: {folder!r}.", "EntryNotFound")
            for path in matched:
                del files[path]
        for path, content in additions.items():
            files[path] = self._write_blob(content)
        for path, sha256 in lfs_additions.items():
            files[path] = self.lfs_objects[sha256]
        lfs.update(lfs_additions)
        lfs = {path: sha256 for path, sha256 in lfs.items() if path in files and path not in additions}

        # The random part makes every sha new, even for a repeated commit, because clients cache files per sha.
        parent = base.sha if base is not None else None
        seed = json.dumps([parent, sorted(files.items()), title, secrets.token_hex(8)])
        commit = Commit(hashlib.sha1(seed.encode()).hexdigest(), parent, title, message, now(), files, lfs)
        repo.commits[commit.sha] = commit

        pr_number = None
        if create_pr:
            pr_number = max(repo.pull_requests, default=0) + 1
            repo.pull_requests[pr_number] = commit.sha
        elif pr_match is not None:
            repo.pull_requests[int(pr_match.group(1))] = commit.sha
        else:
            repo.branches[branch] = commit.sha
        logger.debug("Commit %s on %s %s@%s: %s", commit.sha, repo.repo_type, repo.repo_id, revision, title)
        return commit, pr_number

    def path_entry(self, repo: Repo, head: Commit, path: str, expand: bool = False) -> dict | None:
        """Return the ``/tree`` entry of a file or folder at ``head``, or None if ``path`` does not exist."""
        path = path.strip("/")
        if path in head.files:
            oid, size = head.files[path], self.blob_size(head.files[path])
            entry: dict[str, Any] = {"type": "file", "oid": oid, "size": size, "path": path}
            if path in head.lfs:
                pointer = lfs_pointer(head.lfs[path], size)
                entry["oid"] = git_blob_oid(pointer)
                entry["lfs"] = {"oid": head.lfs[path], "size": size, "pointerSize": len(pointer)}
        else:
            children = sorted((name, oid) for name, oid in head.files.items() if name.startswith(path + "/"))
            if not path or not children:
                return None
            tree_id = hashlib.sha1(json.dumps(children).encode()).hexdigest()
            entry = {"type": "directory", "oid": tree_id, "size": 0, "path": path}
        if expand:
            last = self._last_commit(repo, head, path)
            entry["lastCommit"] = {"id": last.sha, "title": last.title, "date": last.date}
        return entry

    def tree(self, repo: Repo, head: Commit, path: str, recursive: bool, expand: bool) -> list[dict]:
        """Return the ``/tree`` entries under folder ``path`` ("" for the root), or raise a 404 ``EntryNotFound``."""
        path = path.strip("/")
        if path and self.path_entry(repo, head, path) is None:
            raise HubError(404, f"Path {path!r} not found at {head.sha}.", "EntryNotFound", head.sha)
        prefix = path + "/" if path else ""
        names: set[str] = set()
        for file_path in head.files:
            if file_path.startswith(prefix):
                parts = file_path[len(prefix) :].split("/")
                for depth in range(1, (len(parts) if recursive else 1) + 1):
                    names.add(prefix + "/".join(parts[:depth]))
        return [self.path_entry(repo, head, name, expand) for name in sorted(names)]

    def repo_info(self, repo: Repo, head: Commit) -> dict:
        """Return the ``/api/{type}s/{repo_id}`` response at ``head``, with card data from its README front matter."""
        siblings = []
        for path in sorted(head.files):
            entry = self.path_entry(repo, head, path)
            sibling = {"rfilename": path, "size": entry["size"], "blobId": entry["oid"]}
            if "lfs" in entry:
                lfs = entry["lfs"]
                sibling["lfs"] = {"size": lfs["size"], "sha256": lfs["oid"], "pointerSize": lfs["pointerSize"]}
            siblings.append(sibling)
        card = card_data(self.read_blob(head.files["README.md"])) if "README.md" in head.files else None
        tags = (card or {}).get("tags") or []
        info: dict[str, Any] = {
            "_id": hashlib.sha1(f"{repo.repo_type}/{repo.repo_id}".encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "author": repo.repo_id.split("/")[0],
            "sha": head.sha,
            "lastModified": head.date,
            "createdAt": repo.created_at,
            "private": repo.private,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [tags] if isinstance(tags, str) else list(tags),
            "siblings": siblings,
        }
        if card is not None:
            info["cardData"] = card
            if repo.repo_type == "model":
                info.update({key: card[key] for key in ("library_name", "pipeline_tag") if key in card})
        if repo.repo_type == "space":
            info["sdk"] = repo.sdk
        return info

    def _write_blob(self, content: bytes) -> str:
        oid = git_blob_oid(content)
        path = self._blobs / oid
        if not path.exists():
            temporary = path.with_name(f"{oid}.{threading.get_ident()}.tmp")
            temporary.write_bytes(content)
            temporary.replace(path)
        return oid

    def _last_commit(self, repo: Repo, head: Commit, path: str) -> Commit:
        """Return the commit that last changed ``path``: the oldest ancestor in the run where it is unchanged."""
        commit = head
        while commit.parent is not None:
            parent = repo.commits[commit.parent]
            if self.path_entry(repo, parent, path) != self.path_entry(repo, head, path):
                break
            commit = parent
        return commit


def _check_repo_type(repo_type: str) -> None:
    if repo_type not in REPO_TYPES:
        raise ValueError(f"Invalid repo_type {repo_type!r}: expected one of {REPO_TYPES}.")

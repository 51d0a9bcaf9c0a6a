"""Routes of the mock Hub (tests/hub_server.py): URL patterns and the handler of each API call.

Each handler checks access, reads or changes the ``MockHub`` (tests/hub_store.py) under its lock and returns
the JSON or bytes that the real Hub sends, or raises ``HubError`` for an error response with the Hub's
``X-Error-Code``. The module docstring of tests/hub_server.py lists the routes.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import re
from typing import TYPE_CHECKING, Any, Mapping
from urllib.parse import parse_qs, unquote

import yaml

from hub_store import LFS_SIZE_THRESHOLD, YAML_BLOCK_PATTERN, HubError, Repo

if TYPE_CHECKING:
    from hub_server import MockHub

logger = logging.getLogger(__name__)

_TYPE = r"(?P<repo_type>models|datasets|spaces)"
_REPO = r"(?P<repo_id>[^/]+/[^/]+)"
_REV = r"(?P<revision>refs/pr/\d+|[^/]+)"
_API = f"/api/{_TYPE}/{_REPO}"
_PREFIX = r"(?:(?P<repo_type>datasets|spaces)/)?"  # model repository URLs have no type prefix
# (methods, pattern on the raw URL path, handler name in Routes). Groups are URL-decoded after matching, so a
# quoted "refs%2Fpr%2F1" or "data%2Ftrain.parquet" is one group.
_ROUTES = (
    ("GET", "/api/whoami-v2", "whoami"),
    ("POST", "/api/validate-yaml", "validate_yaml"),
    ("POST", "/api/repos/create", "create_repo"),
    ("DELETE", "/api/repos/delete", "delete_repo"),
    ("GET", f"{_API}(?:/revision/{_REV})?", "repo_info"),
    ("GET", f"{_API}/tree/{_REV}(?:/(?P<path>.*))?", "tree"),
    ("POST", f"{_API}/paths-info/{_REV}", "paths_info"),
    ("GET", f"{_API}/refs", "refs"),
    ("GET", f"{_API}/commits/{_REV}", "commits"),
    ("POST", f"{_API}/preupload/{_REV}", "preupload"),
    ("POST", f"{_API}/commit/{_REV}", "commit"),
    ("POST", f"{_API}/branch/(?P<branch>[^/]+)", "create_branch"),
    ("DELETE", f"{_API}/branch/(?P<branch>[^/]+)", "delete_branch"),
    ("POST", f"{_API}/tag/{_REV}", "create_tag"),
    ("POST", rf"/{_PREFIX}(?P<repo_id>[^/]+/[^/]+?)\.git/info/lfs/objects/batch", "lfs_batch"),
    ("PUT", r"/lfs-upload/(?P<sha256>[0-9a-f]{64})", "lfs_upload"),
    ("GET HEAD", f"/{_PREFIX}{_REPO}/resolve/{_REV}/(?P<path>.+)", "resolve"),
)
_COMPILED_ROUTES = [(methods.split(), re.compile(pattern), name) for methods, pattern, name in _ROUTES]


def is_true(value: str | None) -> bool:
    """Return whether a query, form or environment value is true ("1", "on", "yes" or "true", in any case)."""
    return value is not None and value.strip().upper() in {"1", "ON", "YES", "TRUE"}


@dataclasses.dataclass
class Request:
    """A parsed request, as the route handlers see it."""

    query: dict[str, list[str]]
    headers: Mapping[str, str]
    body: bytes
    user: str | None  # the user of a valid bearer token, else None

    def flag(self, name: str) -> bool:
        return is_true((self.query.get(name) or ["0"])[-1])

    def json(self) -> dict:
        return json.loads(self.body or b"{}")

    def require_user(self) -> str:
        if self.user is None:
            raise HubError(401, "Write access requires an 'Authorization: Bearer <token>' header with a valid token.")
        return self.user


@dataclasses.dataclass
class Response:
    """An HTTP response: status, body and headers (``Content-Length`` is added when it is sent)."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = dataclasses.field(default_factory=dict)

    @classmethod
    def json(cls, value: Any, status: int = 200) -> Response:
        return cls(status, json.dumps(value).encode(), {"Content-Type": "application/json"})


class Routes:
    """The route handlers: each takes a request and the URL groups, and returns a response or raises HubError."""

    def __init__(self, hub: MockHub):
        self.hub = hub

    def _readable(self, request: Request, repo_type: str, repo_id: str) -> Repo:
        repo = self.hub.get_repo(repo_type, repo_id)
        if repo.private and request.user is None:
            raise HubError(401, f"Repository {repo_id!r} is private and no valid token was sent.", "RepoNotFound")
        return repo

    # ----- account and validation -----

    def whoami(self, request: Request) -> Response:
        user = request.require_user()
        access_token = {"displayName": "mock", "role": "write"}
        return Response.json(
            {"type": "user", "id": user, "name": user, "orgs": [], "auth": {"accessToken": access_token}}
        )

    def validate_yaml(self, request: Request) -> Response:
        match = YAML_BLOCK_PATTERN.search(request.json().get("content", ""))
        errors = []
        if match is not None:
            try:
                data = yaml.safe_load(match.group(2))
            except yaml.YAMLError as error:
                errors.append({"message": f"Invalid YAML in the card metadata: {error}"})
            else:
                if data is not None and not isinstance(data, dict):
                    errors.append({"message": "The card metadata must be a YAML mapping."})
        return Response.json({"errors": errors, "warnings": []}, status=400 if errors else 200)

    # ----- repositories -----

    def create_repo(self, request: Request) -> Response:
        user = request.require_user()
        payload = request.json()
        repo_id = f"{payload.get('organization') or user}/{payload.get('name', '')}"
        private = payload.get("private") is True or payload.get("visibility") == "private"
        repo_type = payload.get("type") or "model"
        with self.hub.lock:
            existing = self.hub.repos.get((repo_type, repo_id))
            if existing is not None:
                # huggingface_hub's create_repo(exist_ok=True) reads the URL from this 409 response.
                message = f"You already created this {repo_type} repo: {repo_id}."
                return Response.json({"error": message, "url": self.hub.repo_url(existing)}, status=409)
            try:
                repo = self.hub.create_repo(repo_id, repo_type, private, payload.get("sdk"))
            except ValueError as error:
                raise HubError(400, str(error)) from error
        return Response.json({"url": self.hub.repo_url(repo), "name": repo_id, "id": repo_id})

    def delete_repo(self, request: Request) -> Response:
        user = request.require_user()
        payload = request.json()
        repo_id = f"{payload.get('organization') or user}/{payload.get('name', '')}"
        with self.hub.lock:
            repo = self.hub.get_repo(payload.get("type") or "model", repo_id)
            del self.hub.repos[(repo.repo_type, repo.repo_id)]
        return Response.json({})

    def repo_info(self, request: Request, repo_type: str, repo_id: str, revision: str | None) -> Response:
        with self.hub.lock:
            repo = self._readable(request, repo_type, repo_id)
            return Response.json(self.hub.repo_info(repo, self.hub.resolve(repo, revision or "main")))

    def tree(self, request: Request, repo_type: str, repo_id: str, revision: str, path: str | None) -> Response:
        with self.hub.lock:
            repo = self._readable(request, repo_type, repo_id)
            head = self.hub.resolve(repo, revision)
            entries = self.hub.tree(repo, head, path or "", request.flag("recursive"), request.flag("expand"))
        return Response.json(entries)

    def paths_info(self, request: Request, repo_type: str, repo_id: str, revision: str) -> Response:
        # huggingface_hub sends a form, and the JSON body that the real Hub also accepts works too.
        if request.headers.get("Content-Type", "").startswith("application/json"):
            payload = request.json()
            paths, expand = payload.get("paths", []), bool(payload.get("expand"))
        else:
            form = parse_qs(request.body.decode(), keep_blank_values=True)
            paths, expand = form.get("paths", []), is_true((form.get("expand") or ["0"])[-1])
        with self.hub.lock:
            repo = self._readable(request, repo_type, repo_id)
            head = self.hub.resolve(repo, revision)
            entries = [self.hub.path_entry(repo, head, path, expand) for path in paths]
        return Response.json([entry for entry in entries if entry is not None])

    def refs(self, request: Request, repo_type: str, repo_id: str) -> Response:
        def refs_json(refs: Mapping, kind: str) -> list[dict]:
            return [{"name": str(key), "ref": f"refs/{kind}/{key}", "targetCommit": sha} for key, sha in refs.items()]

        with self.hub.lock:
            repo = self._readable(request, repo_type, repo_id)
            body = {"branches": refs_json(repo.branches, "heads"), "tags": refs_json(repo.tags, "tags")}
            body["converts"] = []
            if request.flag("include_prs"):
                body["pullRequests"] = refs_json(repo.pull_requests, "pr")
        return Response.json(body)

    def commits(self, request: Request, repo_type: str, repo_id: str, revision: str) -> Response:
        with self.hub.lock:
            self._readable(request, repo_type, repo_id)
            history = self.hub.commit_history(repo_id, revision, repo_type)
        author = [{"user": repo_id.split("/")[0]}]
        return Response.json(
            [{"id": c.sha, "title": c.title, "message": c.message, "date": c.date, "authors": author} for c in history]
        )

    def create_branch(self, request: Request, repo_type: str, repo_id: str, branch: str) -> Response:
        request.require_user()
        with self.hub.lock:
            repo = self.hub.get_repo(repo_type, repo_id)
            if branch in repo.branches:
                raise HubError(409, f"Branch {branch!r} already exists in {repo_id}.")
            repo.branches[branch] = self.hub.resolve(repo, request.json().get("startingPoint") or "main").sha
        return Response.json({})

    def delete_branch(self, request: Request, repo_type: str, repo_id: str, branch: str) -> Response:
        request.require_user()
        with self.hub.lock:
            repo = self.hub.get_repo(repo_type, repo_id)
            if branch == "main":
                raise HubError(403, f"Cannot delete the main branch of {repo_id}.")
            if repo.branches.pop(branch, None) is None:
                raise HubError(404, f"Branch {branch!r} not found in {repo_id}.", "RevisionNotFound")
        return Response.json({})

    def create_tag(self, request: Request, repo_type: str, repo_id: str, revision: str) -> Response:
        request.require_user()
        tag = request.json().get("tag")
        with self.hub.lock:
            repo = self.hub.get_repo(repo_type, repo_id)
            if not tag:
                raise HubError(400, "Missing 'tag' in the request body.")
            if tag in repo.tags:
                raise HubError(409, f"Tag {tag!r} already exists in {repo_id}.")
            repo.tags[tag] = self.hub.resolve(repo, revision).sha
        return Response.json({})

    # ----- commits -----

    def preupload(self, request: Request, repo_type: str, repo_id: str, revision: str) -> Response:
        request.require_user()
        files = []
        with self.hub.lock:
            repo = self.hub.get_repo(repo_type, repo_id)
            try:
                head = self.hub.resolve(repo, revision)
            except HubError:
                head = None  # the commit itself reports an unknown revision
            for item in request.json().get("files", []):
                path, sample = item["path"], base64.b64decode(item.get("sample", ""))
                lfs = self.hub.is_lfs_path(head, path) or b"\0" in sample or item.get("size", 0) > LFS_SIZE_THRESHOLD
                # The client compares this oid with the sha256 (LFS) or git blob sha1 (regular) of its file.
                oid = None
                if head is not None and path in head.files:
                    oid = head.lfs.get(path) or head.files[path]
                mode = "lfs" if lfs else "regular"
                files.append({"path": path, "uploadMode": mode, "shouldIgnore": False, "oid": oid})
        return Response.json({"files": files})

    def lfs_batch(self, request: Request, repo_type: str | None, repo_id: str) -> Response:
        request.require_user()
        payload = request.json()
        if payload.get("operation") != "upload":
            raise HubError(400, f"Unsupported LFS operation {payload.get('operation')!r}: expected 'upload'.")
        objects = []
        with self.hub.lock:
            self.hub.get_repo(repo_type or "model", repo_id)
            for item in payload.get("objects", []):
                entry = {"oid": item["oid"], "size": item["size"], "authenticated": True}
                if item["oid"] not in self.hub.lfs_objects:
                    self.hub.pending_lfs[item["oid"]] = item["size"]
                    entry["actions"] = {"upload": {"href": f"{self.hub.url}/lfs-upload/{item['oid']}", "header": {}}}
                objects.append(entry)
        response = Response.json({"transfer": "basic", "objects": objects, "hash_algo": "sha256"})
        response.headers["Content-Type"] = "application/vnd.git-lfs+json"
        return response

    def lfs_upload(self, request: Request, sha256: str) -> Response:
        # Like a presigned storage URL, the upload takes no token: only announced objects are accepted.
        with self.hub.lock:
            self.hub.store_lfs_object(sha256, request.body)
        return Response()

    def commit(self, request: Request, repo_type: str, repo_id: str, revision: str) -> Response:
        request.require_user()
        header: dict = {}
        additions: dict[str, bytes] = {}
        lfs_additions: dict[str, str] = {}
        deletions: set[str] = set()
        folder_deletions: set[str] = set()
        for line in request.body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item.get("key"), item.get("value", {})
            if key == "header":
                header = value
            elif key == "file" and value.get("encoding", "base64") == "base64":
                additions[value["path"]] = base64.b64decode(value["content"], validate=True)
            elif key == "lfsFile" and value.get("algo", "sha256") == "sha256":
                lfs_additions[value["path"]] = value["oid"]
            elif key == "deletedFile":
                deletions.add(value["path"])
            elif key == "deletedFolder":
                folder_deletions.add(value["path"])
            else:
                raise HubError(400, f"Unsupported commit line {key!r} or encoding: {line[:200]!r}.")
        with self.hub.lock:
            repo = self.hub.get_repo(repo_type, repo_id)
            commit, pr_number = self.hub.apply_commit(
                repo,
                revision,
                additions,
                deletions,
                folder_deletions,
                title=header.get("summary") or "Commit",
                message=header.get("description") or "",
                parent_commit=header.get("parentCommit"),
                create_pr=request.flag("create_pr"),
                lfs_additions=lfs_additions,
            )
            repo_url = self.hub.repo_url(repo)
        body = {"success": True, "commitOid": commit.sha, "commitUrl": f"{repo_url}/commit/{commit.sha}"}
        body["pullRequestUrl"] = f"{repo_url}/discussions/{pr_number}" if pr_number is not None else None
        return Response.json(body)

    # ----- files -----

    def resolve(self, request: Request, repo_type: str | None, repo_id: str, revision: str, path: str) -> Response:
        with self.hub.lock:
            repo = self._readable(request, repo_type or "model", repo_id)
            head = self.hub.resolve(repo, revision)
            if path not in head.files:
                raise HubError(404, f"Entry not found: {path!r} in {repo_id}@{revision}.", "EntryNotFound", head.sha)
            content = self.hub.read_blob(head.files[path])
            lfs_sha256 = head.lfs.get(path)
        etag = lfs_sha256 or head.files[path]
        headers = {"Content-Type": "application/octet-stream", "ETag": f'"{etag}"', "X-Repo-Commit": head.sha}
        headers["Accept-Ranges"] = "bytes"
        if lfs_sha256 is not None:
            # The Hub sends these for LFS files, whose content is served from storage after a redirect.
            headers.update({"X-Linked-Etag": f'"{lfs_sha256}"', "X-Linked-Size": str(len(content))})
        range_header = request.headers.get("Range")
        if range_header is None:
            return Response(200, content, headers)
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", range_header.strip())
        if match is None or match.groups() == ("", ""):
            raise HubError(416, f"Invalid Range header {range_header!r}: expected 'bytes=START-[END]' or 'bytes=-N'.")
        first, last = match.groups()
        if first:
            start, end = int(first), min(int(last) if last else len(content) - 1, len(content) - 1)
        else:
            start, end = max(len(content) - int(last), 0), len(content) - 1
        if start >= len(content) or start > end:
            raise HubError(416, f"Range {range_header!r} is outside the file ({len(content)} bytes).")
        headers["Content-Range"] = f"bytes {start}-{end}/{len(content)}"
        return Response(206, content[start : end + 1], headers)


def dispatch(
    hub: MockHub, method: str, path: str, query: str, headers: Mapping[str, str], body: bytes
) -> tuple[Response, str | None]:
    """Run the route that matches a request, and turn a ``HubError`` into its HTTP error response.

    Args:
        hub: The hub that serves the request.
        method: HTTP method.
        path: Raw (still URL-quoted) path.
        query: Raw query string.
        headers: Request headers.
        body: Request body.

    Returns:
        The response, and the name of the matched route or None when no route matched.
    """
    authorization = headers.get("Authorization")
    route = None
    try:
        for methods, pattern, name in _COMPILED_ROUTES:
            match = pattern.fullmatch(path)
            if match is not None and method in methods:
                route = name
                break
        user = None
        if authorization is not None:
            user = hub.tokens.get(authorization.removeprefix("Bearer ").strip())
            if user is None:
                raise HubError(401, "Invalid credentials in Authorization header")
        if route is None:
            raise HubError(404, f"The mock Hub has no route for {method} {path}.")
        groups = {key: unquote(value) if value is not None else None for key, value in match.groupdict().items()}
        if "repo_type" in groups and groups["repo_type"] is not None:
            groups["repo_type"] = groups["repo_type"].removesuffix("s")
        handler = getattr(Routes(hub), route)
        return handler(Request(parse_qs(query), headers, body, user), **groups), route
    except HubError as error:
        # Most of these are expected (a client probing for an optional file), so they are logged quietly.
        logger.debug("Mock Hub %s %s: %d %s", method, path, error.status, error.message)
        # Header values must be one line of Latin-1 text.
        header_message = " ".join(error.message.split()).encode("ascii", "replace").decode()
        error_headers = {"Content-Type": "application/json", "X-Error-Message": header_message}
        if error.error_code:
            error_headers["X-Error-Code"] = error.error_code
        if error.commit:
            error_headers["X-Repo-Commit"] = error.commit
        return Response(error.status, json.dumps({"error": error.message}).encode(), error_headers), route
    except (ValueError, KeyError, TypeError) as error:  # malformed JSON, NDJSON or base64 in a request body
        logger.warning("The mock Hub rejected a malformed %s %s: %r", method, path, error)
        return Response.json({"error": f"Malformed request: {error!r}"}, 400), route
    except Exception as error:  # a bug in the mock: return 500 so the client fails with a visible cause
        logger.exception("The mock Hub failed on %s %s", method, path)
        return Response.json({"error": f"Mock Hub error: {error!r}"}, 500), route

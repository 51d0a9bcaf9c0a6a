"""A small Hugging Face Hub served on 127.0.0.1 by the tests themselves.

It serves the HTTP calls that huggingface_hub 2.4, datasets 5.2 and evaluate 0.4.6 make to download files,
take snapshots, load datasets and metric Spaces, create repositories, commit, open pull requests and update
cards. Responses carry the headers and error codes of the real Hub, so the clients run their normal code paths.
Repositories live in tests/hub_store.py and the route handlers in tests/hub_routes.py. Every request is
recorded for the test to inspect.

Routes (``{type}``: ``models``, ``datasets`` or ``spaces``; ``{repo}``: ``namespace/name``; ``{rev}``: a branch,
a tag, ``refs/pr/N`` or a full commit sha, URL-quoted or not):

- ``GET /api/whoami-v2``: the user of the bearer token (401 without a valid one).
- ``POST /api/validate-yaml``: 400 when the card's YAML front matter is invalid or not a mapping.
- ``POST /api/repos/create`` (409 if it exists), ``DELETE /api/repos/delete``.
- ``GET /api/{type}/{repo}[/revision/{rev}]``: sha, siblings (with size and blobId), cardData, private, sdk.
- ``GET /api/{type}/{repo}/tree/{rev}[/{path}]?recursive=&expand=``: one page, no pagination.
- ``POST /api/{type}/{repo}/paths-info/{rev}``: form or JSON ``paths``; unknown paths are left out.
- ``GET /api/{type}/{repo}/refs[?include_prs=1]``, ``GET /api/{type}/{repo}/commits/{rev}``.
- ``POST /api/{type}/{repo}/preupload/{rev}``: ``lfs`` for paths matching a ``filter=lfs`` pattern of
  ``.gitattributes``, binary samples and files over 10 MiB, else ``regular``; never Xet. Each file carries its
  oid at ``rev``, so the client skips unchanged files.
- ``POST /[{datasets|spaces}/]{repo}.git/info/lfs/objects/batch`` and ``PUT /lfs-upload/{sha256}``: the Git
  LFS basic transfer (one PUT per file, no multipart).
- ``POST /api/{type}/{repo}/commit/{rev}[?create_pr=1]``: NDJSON ``header``, ``file`` (base64), ``lfsFile``,
  ``deletedFile``, ``deletedFolder``. Every commit gets a new sha. ``create_pr=1`` puts the commit on a new
  ``refs/pr/N`` and leaves ``rev`` unchanged.
- ``POST|DELETE /api/{type}/{repo}/branch/{name}``, ``POST /api/{type}/{repo}/tag/{rev}``.
- ``HEAD|GET /{repo}/resolve/{rev}/{path}`` and the same under ``/datasets/`` and ``/spaces/``: the file with
  ``ETag`` (git blob sha1, or sha256 for LFS files), ``X-Repo-Commit``, ``Content-Length`` and ``Range``
  support, never a redirect.

Reads need no token unless the repository is private. Writes need ``Authorization: Bearer <token>`` with a
token in ``MockHub.tokens`` (any namespace may be written). An unknown token gets a 401 response on every
route, as on the real Hub. A request that matches no route gets a 404 response with a JSON error, is logged as
a warning and is recorded with ``route=None``, so a call that this mock lacks is easy to spot.

Fixtures, defined in tests/conftest.py:

- ``hub``: an empty ``MockHub`` at ``HF_ENDPOINT`` for this test only. While the test runs, the offline
  switches of huggingface_hub, datasets, evaluate and diffusers are off. Outside such a test the endpoint
  refuses connections (before the first ``hub`` test) or returns 503.
- ``hub_token``: sets ``HF_TOKEN`` to ``hub.token`` for this test and returns it.

Example::

    def test_pull(hub, tmp_path):
        import huggingface_hub

        (tmp_path / "config.json").write_text("{}")
        sha = hub.create_repo_from_folder("user/tiny", tmp_path)
        path = huggingface_hub.hf_hub_download("user/tiny", "config.json", revision=sha)
        assert not [r for r in hub.requests if r.method == "POST"]

A subprocess (for example the ``spqr`` CLI) reaches the same hub with ``env={**os.environ, **hub.env()}``.
The endpoint is bound when tests/conftest.py is imported, because huggingface_hub, datasets and evaluate read
``HF_ENDPOINT`` once, at import time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import secrets
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator
from urllib.parse import unquote, urlsplit

from hub_routes import Response, dispatch, is_true
from hub_store import URL_PREFIXES, HubStore, Repo

logger = logging.getLogger(__name__)


# (module, attribute, environment variable it is read from) for each offline switch copied at import time.
_OFFLINE_SWITCHES = (
    ("huggingface_hub.constants", "HF_HUB_OFFLINE", "HF_HUB_OFFLINE"),
    ("datasets.config", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"),
    ("datasets.config", "HF_DATASETS_OFFLINE", "HF_DATASETS_OFFLINE"),
    ("evaluate.config", "HF_EVALUATE_OFFLINE", "HF_EVALUATE_OFFLINE"),
    ("diffusers.utils.hub_utils", "HF_HUB_OFFLINE", "HF_HUB_OFFLINE"),
    ("diffusers.loaders.lora_base", "HF_HUB_OFFLINE", "HF_HUB_OFFLINE"),
)
_OFFLINE_ENV_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_EVALUATE_OFFLINE")
# (module, attribute) holding the endpoint that each library read at import time.
_ENDPOINT_ATTRIBUTES = (
    ("huggingface_hub.constants", "ENDPOINT"),
    ("datasets.config", "HF_ENDPOINT"),
    ("evaluate.config", "HF_ENDPOINT"),
)


@dataclasses.dataclass(frozen=True)
class RequestRecord:
    """One request the hub received. It stores whether an Authorization header came, never the token."""

    method: str
    path: str  # URL-decoded path, without the query string
    query: str
    has_auth_header: bool
    body: bytes
    route: str | None  # None when no route matched
    status: int


class MockHub(HubStore):
    """The repositories, tokens and request log of one test, served by a ``HubServer``.

    Args:
        root: Folder for file contents (created if missing).
        url: The endpoint clients use, e.g. ``http://127.0.0.1:40123``.
        user: The user that ``token`` belongs to.
        token: A token accepted for writes; a random ``hf_mock_...`` string by default.
    """

    def __init__(self, root: str | os.PathLike, url: str, user: str = "user", token: str | None = None):
        super().__init__(root)
        self.url = url.rstrip("/")
        self.user = user
        self.token = token if token is not None else "hf_mock_" + secrets.token_hex(16)
        # Maps each accepted token to its user. A test may add tokens.
        self.tokens: dict[str, str] = {self.token: user}
        self._requests: list[RequestRecord] = []

    @property
    def requests(self) -> list[RequestRecord]:
        """A copy of the request log, oldest first."""
        with self.lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        """Empty the request log, e.g. after seeding repositories over HTTP."""
        with self.lock:
            self._requests.clear()

    def env(self, token: bool = True) -> dict[str, str]:
        """Return the environment variables a subprocess needs to use this hub online.

        Args:
            token: Whether to include ``HF_TOKEN``.
        """
        env = {name: "0" for name in _OFFLINE_ENV_VARS}
        env.update({"HF_ENDPOINT": self.url, "HF_HUB_DISABLE_XET": "1", "NO_PROXY": "127.0.0.1,localhost"})
        if token:
            env["HF_TOKEN"] = self.token
        return env

    def repo_url(self, repo: Repo) -> str:
        return f"{self.url}/{URL_PREFIXES[repo.repo_type]}{repo.repo_id}"

    def record(self, record: RequestRecord) -> None:
        with self.lock:
            self._requests.append(record)


class _Handler(BaseHTTPRequestHandler):
    """Request handler: runs the matching route of the server's current hub, responds and records the request."""

    server: HubServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 (name fixed by BaseHTTPRequestHandler)
        self._handle()

    do_HEAD = do_POST = do_PUT = do_DELETE = do_GET

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (signature fixed by the base class)
        logger.debug("%s " + format, self.address_string(), *args)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))
        chunks = []
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip(), 16)
            chunks.append(self.rfile.read(size + 2)[:size])  # each chunk ends with CRLF
            if size == 0:
                return b"".join(chunks)

    def _handle(self) -> None:
        url = urlsplit(self.path)
        body = self._read_body()
        hub = self.server.hub
        if hub is None:
            logger.warning("The mock Hub got %s %s outside a test with the `hub` fixture.", self.command, url.path)
            response = Response.json({"error": "The mock Hub serves only tests that use the `hub` fixture."}, 503)
        else:
            response, route = dispatch(hub, self.command, url.path, url.query, self.headers, body)
            has_auth = "Authorization" in self.headers
            status = response.status
            hub.record(RequestRecord(self.command, unquote(url.path), url.query, has_auth, body, route, status))
            if route is None:
                logger.warning("The mock Hub has no route for %s %s (status %d).", self.command, url.path, status)
        # One request per connection keeps the server simple, and loopback connections are cheap.
        self.close_connection = True
        self.send_response(response.status)
        headers = {**response.headers, "Content-Length": str(len(response.body)), "Connection": "close"}
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)


class HubServer(ThreadingHTTPServer):
    """A threaded HTTP server, on an already bound socket, that serves the ``MockHub`` in ``self.hub``.

    Args:
        sock: A bound TCP socket (see ``bind_loopback_socket``); the server listens on it from now on.
    """

    daemon_threads = True

    def __init__(self, sock: socket.socket):
        super().__init__(sock.getsockname()[:2], _Handler, bind_and_activate=False)
        self.socket.close()  # the base class made a socket of its own
        self.socket = sock
        self.server_address = sock.getsockname()[:2]
        self.server_activate()
        self.hub: MockHub | None = None
        self.url = socket_url(sock)
        self._thread = threading.Thread(target=self.serve_forever, name="mock-hub", daemon=True)
        self._thread.start()
        logger.info("Mock Hub listening at %s", self.url)

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self.shutdown()
        self.server_close()
        self._thread.join()
        logger.info("Mock Hub at %s stopped", self.url)

    @contextlib.contextmanager
    def serving(self, hub: MockHub) -> Iterator[MockHub]:
        """Serve ``hub`` inside the ``with`` block. Outside it, every request gets a 503 response."""
        if self.hub is not None:
            raise RuntimeError("The mock Hub already serves another hub: `serving` blocks cannot be nested.")
        self.hub = hub
        try:
            yield hub
        finally:
            self.hub = None


def bind_loopback_socket() -> socket.socket:
    """Bind a TCP socket to a free port on 127.0.0.1 without listening, so connections are refused until used."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    return sock


def socket_url(sock: socket.socket) -> str:
    """Return the ``http://host:port`` endpoint of a bound socket."""
    host, port = sock.getsockname()[:2]
    return f"http://{host}:{port}"


def check_endpoint(url: str) -> None:
    """Raise RuntimeError if a Hugging Face library read another ``HF_ENDPOINT`` than ``url`` at import time."""
    for module_name, attribute in _ENDPOINT_ATTRIBUTES:
        value = getattr(sys.modules.get(module_name), attribute, None)
        if value is not None and value.rstrip("/") != url:
            raise RuntimeError(
                f"{module_name}.{attribute} is {value!r}, not the mock Hub at {url!r}, because the library was"
                " imported before tests/conftest.py set HF_ENDPOINT. Import Hugging Face libraries after conftest."
            )


@contextlib.contextmanager
def online_mode() -> Iterator[None]:
    """Turn the offline switches of huggingface_hub, datasets, evaluate and diffusers off inside the block.

    The environment variables and module attributes are restored on exit. A module first imported inside the
    block read the online environment, so its switches are then set from the restored environment instead.
    """
    saved_env = {name: os.environ.get(name) for name in (*_OFFLINE_ENV_VARS, "NO_PROXY")}
    saved_switches = {
        (module, attribute): getattr(sys.modules[module], attribute)
        for module, attribute, _ in _OFFLINE_SWITCHES
        if hasattr(sys.modules.get(module), attribute)
    }
    os.environ.update({name: "0" for name in _OFFLINE_ENV_VARS})
    os.environ["NO_PROXY"] = ",".join(filter(None, [saved_env["NO_PROXY"], "127.0.0.1", "localhost"]))
    for module, attribute in saved_switches:
        setattr(sys.modules[module], attribute, False)
    try:
        yield
    finally:
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        for module, attribute, env_var in _OFFLINE_SWITCHES:
            if (module, attribute) in saved_switches:
                setattr(sys.modules[module], attribute, saved_switches[(module, attribute)])
            elif hasattr(sys.modules.get(module), attribute):
                setattr(sys.modules[module], attribute, is_true(os.environ.get(env_var)))

"""Session-wide test settings: Hugging Face libraries run offline against a private cache.

Tests that use the `hub` fixture are the exception: they talk to a mock Hub on 127.0.0.1.
"""

import os
import tempfile

# Set before any Hugging Face library is imported, because they read these at import time.
_HF_HOME = tempfile.mkdtemp(prefix="spqr-test-hf-home-")
os.environ.update(
    {
        "HF_HOME": _HF_HOME,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_EVALUATE_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_UPDATE_DOWNLOAD_COUNTS": "0",
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
)

# ----- Mock Hugging Face Hub on 127.0.0.1 (tests/hub_server.py) -----
# The port is bound here, before any Hugging Face library is imported, because huggingface_hub, datasets and
# evaluate read HF_ENDPOINT at import time. The socket does not listen until a test uses `hub`, so until then a
# stray online call fails at once with "connection refused".
import pytest  # noqa: E402

import hub_server  # noqa: E402

_HUB_SOCKET = hub_server.bind_loopback_socket()
os.environ["HF_ENDPOINT"] = hub_server.socket_url(_HUB_SOCKET)


@pytest.fixture(scope="session")
def hub_http_server():
    """The session's mock Hub HTTP server at HF_ENDPOINT; use the `hub` fixture to get repositories."""
    server = hub_server.HubServer(_HUB_SOCKET)
    yield server
    server.stop()


@pytest.fixture
def hub(hub_http_server, tmp_path_factory, monkeypatch):
    """An empty mock Hub for this test, with the Hugging Face libraries switched online while it runs."""
    hub_server.check_endpoint(hub_http_server.url)
    # A token from the developer's environment would be rejected by the mock (401) and must not be sent anyway.
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    mock = hub_server.MockHub(tmp_path_factory.mktemp("hub"), url=hub_http_server.url)
    with hub_http_server.serving(mock), hub_server.online_mode():
        yield mock


@pytest.fixture
def hub_token(hub, monkeypatch):
    """Set HF_TOKEN to the mock Hub's write token for this test and return it."""
    monkeypatch.setenv("HF_TOKEN", hub.token)
    return hub.token


# ----- Tiny models built once per session (tests/model_fixtures.py) -----
from model_fixtures import tiny_clip_path, tiny_pipeline, tiny_sd_path  # noqa: E402,F401

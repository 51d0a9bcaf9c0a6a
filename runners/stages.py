"""Stage records: each finished stage of a run is saved as JSON, so a rerun or a resumed run skips it.

A record carries a key that hashes the stage's inputs (the settings it used and the keys of the stages it
read). A record whose key differs from what the current configuration would produce is stale and the stage
runs again. Records are written atomically: a crash leaves either the old record or the new one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .image_cache import write_atomic

logger = logging.getLogger(__name__)


def stage_key(*parts: Any) -> str:
    """Hash JSON-serialisable parts into a stage key."""
    payload = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:20]


class StageStore:
    """The ``stages/`` folder of a run: one ``<name>.json`` record per finished stage."""

    def __init__(self, run_dir: Path):
        self.folder = Path(run_dir) / "stages"
        self.timings: dict[str, float] = {}  # seconds each stage took when it ran, this invocation or earlier
        self.reused: list[str] = []  # stages whose saved record this invocation reused

    def path(self, name: str) -> Path:
        return self.folder / f"{name}.json"

    def load(self, name: str, key: str) -> dict[str, Any] | None:
        """Return the stage's saved data if it finished with the same inputs, else None."""
        path = self.path(name)
        if not path.exists():
            return None
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            logger.warning("Stage record %s is not valid JSON; running the stage again", path)
            return None
        if not isinstance(record, dict) or not isinstance(record.get("data"), dict):
            logger.warning("Stage record %s is not a record with 'key' and 'data'; running the stage again", path)
            return None
        if record.get("key") != key:
            logger.info("Stage %s: settings changed since the saved record; running it again", name)
            return None
        self.timings[name] = record.get("seconds", 0.0)
        self.reused.append(name)
        return record["data"]

    def save(self, name: str, key: str, data: dict[str, Any], seconds: float) -> None:
        record = {"key": key, "seconds": round(seconds, 3), "finished": time.time(), "data": data}
        write_atomic(self.path(name), json.dumps(record, indent=1, ensure_ascii=False).encode("utf-8"))

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.timings[name] = round(time.perf_counter() - start, 3)

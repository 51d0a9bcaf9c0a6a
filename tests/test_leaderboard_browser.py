"""Sorting of the leaderboard page in headless Chromium.

Each test opens leaderboard.html with a ``#sort=KEY:DIR`` hash, which makes the page click the column header
(once or twice) on load, and reads the sorted table from ``--dump-dom``. Chromium runs with its network cut
off: host names resolve to nothing and other connections go to a closed proxy port. The tests skip when no
Chromium is installed (Debian: ``apt-get install -y chromium``).
"""

import html.parser
import shutil
import subprocess

import pytest

from fake_results import make_results, write_results

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
BROWSER = next((path for path in map(shutil.which, BROWSERS) if path), None)

pytestmark = pytest.mark.skipif(
    BROWSER is None, reason="no Chromium found (install it with `apt-get install -y chromium`)"
)

# name, FID, prompts flagged after fine-tuning (2 before). The page opens sorted by SPQR: mace, uce, esd (whose
# harmfulness rises most), then salun, which has no FID and so no Q or SPQR. Every sort below changes that order.
MODELS = (("esd", 14.0, 6), ("uce", 22.0, 2), ("mace", 18.0, 2), ("salun", None, 2))


class _TableReader(html.parser.HTMLParser):
    """Collect the data-value of every cell of the leaderboard body, row by row, and the headers' aria-sort."""

    def __init__(self):
        super().__init__()
        self.rows: list[list[str]] = []
        self.aria_sort: dict[str, str] = {}
        self.body_attributes: dict[str, str] = {}

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "body":
            self.body_attributes = attributes
        elif tag == "tr" and "data-order" in attributes:
            self.rows.append([])
        elif tag == "td" and self.rows:
            self.rows[-1].append(attributes.get("data-value", ""))
        elif tag == "th" and "aria-sort" in attributes:
            self.aria_sort[attributes["data-sort-key"]] = attributes["aria-sort"]


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    from spqr_runners.leaderboard import write_leaderboard

    folder = tmp_path_factory.mktemp("leaderboard")
    paths = [
        write_results(folder / "runs" / name, make_results(name, fid=fid, flagged_before=2, flagged_after=after))
        for name, fid, after in MODELS
    ]
    return write_leaderboard(paths, folder / "board", plots=False)["html"]


def _sorted_page(page, tmp_path, fragment: str) -> _TableReader:
    command = [
        BROWSER,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--host-resolver-rules=MAP * ~NOTFOUND",
        "--proxy-server=http://127.0.0.1:9",
        "--dump-dom",
        page.as_uri() + fragment,
    ]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert completed.returncode == 0, completed.stderr[-2000:]
    reader = _TableReader()
    reader.feed(completed.stdout)
    return reader


def _column(reader: _TableReader, index: int) -> list[str]:
    return [row[index] for row in reader.rows]


MODEL_COLUMN, FID_COLUMN = 1, 9


def test_page_initial_order_spqr(page, tmp_path):
    reader = _sorted_page(page, tmp_path, "")

    assert _column(reader, MODEL_COLUMN) == ["mace", "uce", "esd", "salun"]
    assert reader.aria_sort == {"spqr": "descending"}


def test_page_sorts_fid_ascending(page, tmp_path):
    reader = _sorted_page(page, tmp_path, "#sort=fid:asc")

    assert reader.body_attributes.get("data-sort-ready") == "true"
    assert _column(reader, MODEL_COLUMN) == ["esd", "mace", "uce", "salun"]
    assert reader.aria_sort == {"fid": "ascending"}


def test_page_sorts_fid_descending_missing_last(page, tmp_path):
    reader = _sorted_page(page, tmp_path, "#sort=fid:desc")

    assert _column(reader, MODEL_COLUMN) == ["uce", "mace", "esd", "salun"]
    assert _column(reader, FID_COLUMN)[-1] == ""
    assert reader.aria_sort == {"fid": "descending"}


def test_page_sorts_text_descending(page, tmp_path):
    reader = _sorted_page(page, tmp_path, "#sort=model:desc")

    assert _column(reader, MODEL_COLUMN) == ["uce", "salun", "mace", "esd"]
    assert reader.aria_sort == {"model": "descending"}

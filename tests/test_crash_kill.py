"""`spqr run` killed with SIGKILL at random points, then rerun: finished work survives and scores do not change.

Two uninterrupted runs come first, started at once on one cache folder with different output folders. They
must agree and leave the shared cache consistent, and they are the reference. Then two kill loops run side by
side, each in its own output, cache and HF_HOME folders. Each loop starts `spqr run` and waits until the run's
log shows that it has started its stages. It then kills the run with SIGKILL at a point drawn from a seeded RNG
and starts it again, 10 times, so each start resumes from what the earlier ones left. The kill points of a loop are sorted
points of the reference run's timeline, each in a stage drawn with equal chances, so they spread over
generation, judging, fine-tuning and writing results instead of piling up in the longest stage. After every kill no file that a later run reads may be partial:
every cached PNG decodes, every stage record and results file parses, and every complete manifest line names
an image that exists. A final rerun of each loop must give the reference scores. Last, the reference run's
image cache is deleted, and a rerun must generate the images again instead of failing on its stage records.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from PIL import Image

LOOPS = 2
KILLS_PER_LOOP = 10
MAX_STARTS_PER_LOOP = 25  # a start whose run finishes before its kill point does not count as a kill
RUN_TIMEOUT_SECONDS = 600
STARTED_MARKER = "Stage prompts: "  # the first stage line of every start, after the imports
# `spqr run` imports the model libraries only when a stage needs them. Importing them before the command starts
# keeps that cost, which every start pays again, out of the timeline that the kill points are drawn from.
PRELOAD_AND_RUN = ("import sys, diffusers, onnxruntime, torch, transformers\n"
                   "from spqr_runners.cli import main\n"
                   "sys.exit(main(sys.argv[1:]))")
# How long a start that reuses every record takes from its first stage line to its exit, at most (seconds). A loop
# lowers it to what such a start took, when one finishes before its kill point.
REUSE_SECONDS = 3.0

RUN = {
    "name": "crash",
    "smoke": True,
    "model": {"id": "embedded:tiny-sd"},
    "prompts": {"harmful": {"limit": 2}, "benign": {"limit": 2}, "bft": {"limit": 2}},
    "generation": {"steps": 1, "resolution": 64, "batch_size": 2},
    "finetune": {"batch_size": 2, "epochs": 1},
    "judges": {"names": ["nudenet"]},
    "adherence": {"model": "embedded:tiny-clip"},
    "quality": {"feature_extractor": "embedded:tiny-features", "reference": "embedded:synthetic",
                "reference_count": 2},
    "scoring": {"bootstrap": 10},
}
STAGES = ("prompts", "generate_before", "judge_before", "adherence", "quality", "bft_data", "finetune",
          "generate_after", "judge_after")
PIPELINE_STAGES = {"generate_before", "bft_data", "finetune", "generate_after"}
COMPARED_KEYS = ("scores", "raw", "intervals", "counts", "per_category")

pytestmark = pytest.mark.slow


def _environment(folder: Path) -> dict:
    """The test session's offline environment with a private HF_HOME, so each run folder owns its caches."""
    environment = dict(os.environ)
    environment["HF_HOME"] = str(folder / "hf-home")
    environment["PYTHONUNBUFFERED"] = "1"
    return environment


def _start(folder: Path, name: str, cache: Path | None = None) -> subprocess.Popen:
    """Start `spqr run` with output in ``folder/name`` and the cache in ``cache`` (default ``folder/cache``)."""
    config = folder / "run.yaml"
    if not config.exists():
        config.write_text(yaml.safe_dump(RUN), encoding="utf-8")
    log = open(folder / f"{name}.log", "ab")
    command = [sys.executable, "-c", PRELOAD_AND_RUN, "run", "--config", str(config),
               "--output-dir", str(folder / name), "--cache-dir", str(cache or folder / "cache")]
    try:
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=_environment(folder))
    finally:
        log.close()


def _finish(process: subprocess.Popen, folder: Path, name: str) -> None:
    code = process.wait(timeout=RUN_TIMEOUT_SECONDS)
    log = (folder / f"{name}.log").read_text(encoding="utf-8", errors="replace")
    assert code == 0, f"spqr run exited with {code}; last output:\n{log[-3000:]}"


def _results(output: Path) -> dict:
    return json.loads((output / "results.json").read_text(encoding="utf-8"))


def _comparable(results: dict) -> dict:
    return {key: results.get(key) for key in COMPARED_KEYS}


def _cached_pngs(cache: Path) -> list[Path]:
    return sorted((cache / "images" / "images").rglob("*.png"))


def _check_no_partial_files(output: Path, cache: Path) -> list[str]:
    """Return a description of every file that a rerun would read but that is partial or unreadable."""
    from safetensors import safe_open

    from spqr_runners.image_cache import ImageCache

    problems = []
    for path in _cached_pngs(cache):
        try:
            with Image.open(path) as image:
                image.verify()
        except Exception as error:  # noqa: BLE001 - any decoding failure is a partial image
            problems.append(f"partial image {path}: {error}")
    for path in sorted((output / "stages").glob("*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            assert {"key", "data"} <= set(record)
        except (ValueError, AssertionError) as error:
            problems.append(f"partial stage record {path}: {error!r}")
    for name, parse in (("results.json", json.loads), ("config.yaml", yaml.safe_load), ("README.md", _parse_card)):
        path = output / name
        if path.exists():
            try:
                parse(path.read_text(encoding="utf-8"))
            except (ValueError, yaml.YAMLError) as error:
                problems.append(f"partial {path}: {error}")
    manifest = ImageCache(cache / "images")
    for record in manifest.manifest():
        if not manifest.path_for(record["key"]).is_file():
            problems.append(f"manifest line for {record['key']} names no finished image")
    for root in (cache, output):
        for path in sorted(root.rglob("*.safetensors")):
            if any(part.startswith(".") for part in path.relative_to(root).parts):
                continue  # a hidden staging folder, which no run reads
            try:
                with safe_open(str(path), framework="np") as handle:
                    handle.keys()
            except Exception as error:  # noqa: BLE001 - safetensors raises its own error types
                problems.append(f"unreadable safetensors file {path}: {error}")
    return problems


def _parse_card(text: str) -> None:
    from huggingface_hub import ModelCard

    card = ModelCard(text, ignore_metadata_errors=False)
    if not card.data.eval_results:
        raise ValueError("the model card has no model-index results")


def _stages_done(output: Path) -> set[str]:
    return {path.stem for path in (output / "stages").glob("*.json")} if (output / "stages").is_dir() else set()


def _work_done(output: Path, cache: Path, timings: dict) -> float:
    """Return how far into the reference run's timeline (seconds after its first stage line) the saved state reaches.

    Besides the stages, the timeline contains the build of the embedded models and the writing of the results.
    Their time counts as done once the embedded pipeline exists in the cache.
    """
    done = _stages_done(output)
    seconds = sum(timings.get(stage, 0.0) for stage in STAGES if stage in done)
    if done & PIPELINE_STAGES:
        seconds += timings.get("load_pipeline", 0.0)
    if list((cache / "embedded").glob("tiny-sd-*")):
        seconds += _other_seconds(timings)
    return seconds


def _other_seconds(timings: dict) -> float:
    staged = sum(timings.get(stage, 0.0) for stage in STAGES) + timings.get("load_pipeline", 0.0)
    return max(0.0, timings["total_this_invocation"] - staged)


def _wait_until_started(process: subprocess.Popen, log: Path, markers_before: int) -> bool:
    """Wait until this start logs its first stage line; return False if it exited first."""
    deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if log.read_text(encoding="utf-8", errors="replace").count(STARTED_MARKER) > markers_before:
            return True
        if process.poll() is not None:
            return False
        time.sleep(0.05)
    raise TimeoutError(f"spqr run logged no stage within {RUN_TIMEOUT_SECONDS} s; see {log}")


def _kill_targets(rng: random.Random, timings: dict) -> list[float]:
    """Draw KILLS_PER_LOOP kill points on the reference run's timeline, sorted.

    Each point picks a stage with equal chances, or the final writing of results, and then a uniform point
    inside it. Points drawn uniformly over the whole timeline would pile up in the longest stages. The timeline
    adds up time as ``_work_done`` credits it.
    """
    segments, elapsed, pipeline_loaded = [], 0.0, False
    for stage in STAGES:
        duration = timings.get(stage, 0.0)
        segments.append((elapsed, duration))
        elapsed += duration
        if stage == STAGES[0]:
            elapsed += _other_seconds(timings)  # the embedded models are built once the prompts are loaded
        if stage in PIPELINE_STAGES and not pipeline_loaded:
            elapsed += timings.get("load_pipeline", 0.0)
            pipeline_loaded = True
    segments.append((elapsed, 0.0))  # every stage done: the start reuses the records and writes the results
    picks = [rng.choice(segments) for _ in range(KILLS_PER_LOOP)]
    return sorted(start + rng.uniform(0.0, duration) for start, duration in picks)


def _kill_loop(folder: Path, seed: int, timings: dict) -> dict:
    """Kill and restart one run KILLS_PER_LOOP times, then finish it; return the kills, problems and results."""
    rng = random.Random(seed)
    targets = _kill_targets(rng, timings)
    output, cache, log = folder / "out", folder / "cache", folder / "out.log"
    kills, problems, starts = [], [], 0
    reuse_seconds = REUSE_SECONDS  # shrinks to what a start that reused everything took, once one finished

    while len(kills) < KILLS_PER_LOOP and starts < MAX_STARTS_PER_LOOP and not problems:
        target = targets[len(kills)]
        done = _work_done(output, cache, timings)
        # A point that the saved records already passed lands in this start's reuse and writing phase instead.
        reusing = target <= done
        delay = rng.uniform(0.0, reuse_seconds) if reusing else target - done
        markers = log.read_text(encoding="utf-8", errors="replace").count(STARTED_MARKER) if log.exists() else 0
        process = _start(folder, "out", cache)
        starts += 1
        if _wait_until_started(process, log, markers):
            started = time.monotonic()
            try:
                process.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                process.send_signal(signal.SIGKILL)
                process.wait()
                kills.append((round(target, 1), sorted(_stages_done(output))))
            else:
                if reusing:
                    reuse_seconds = min(reuse_seconds, 0.9 * (time.monotonic() - started))
        if process.returncode not in (0, -signal.SIGKILL):
            problems.append(f"start {starts} exited with {process.returncode}; see {log}")
        problems.extend(f"after start {starts}: {problem}" for problem in _check_no_partial_files(output, cache))

    final = None
    if not problems:
        process = _start(folder, "out", cache)
        _finish(process, folder, "out")
        final = _results(output)
    return {"kills": kills, "starts": starts, "problems": problems, "results": final}


@pytest.fixture(scope="module")
def reference_runs(tmp_path_factory):
    """Two uninterrupted runs started at once on one cache folder, with different output folders.

    They are the concurrency case and the reference for the kill loops: their results, and the seconds each
    stage of the first took while the second competed for the CPU, as the kill loops compete with each other.
    """
    folder = tmp_path_factory.mktemp("reference")
    cache = folder / "shared-cache"
    processes = {name: _start(folder, name, cache) for name in ("first", "second")}
    for name, process in processes.items():
        _finish(process, folder, name)
    results = [_results(folder / name) for name in processes]
    return {"folder": folder, "cache": cache, "results": results, "timings": results[0]["timing_seconds"]}


@pytest.fixture(scope="module")
def kill_loops(reference_runs, tmp_path_factory):
    folders = [tmp_path_factory.mktemp(f"kill-loop-{index}") for index in range(LOOPS)]
    with ThreadPoolExecutor(max_workers=LOOPS) as pool:
        return list(pool.map(_kill_loop, folders, range(LOOPS), [reference_runs["timings"]] * LOOPS))


def test_two_runs_share_one_cache(reference_runs):
    from spqr_runners.image_cache import ImageCache

    first, second = reference_runs["results"]
    cache = reference_runs["cache"]
    manifest = ImageCache(cache / "images")
    assert _comparable(first) == _comparable(second)
    assert _check_no_partial_files(reference_runs["folder"] / "first", cache) == []
    assert _check_no_partial_files(reference_runs["folder"] / "second", cache) == []
    assert not list(cache.rglob("*.tmp"))
    assert {record["key"] for record in manifest.manifest()} == {path.stem for path in _cached_pngs(cache)}


def test_sigkill_leaves_no_partial_file(kill_loops):
    problems = [problem for loop in kill_loops for problem in loop["problems"]]
    assert problems == []


def test_sigkill_count_reached(kill_loops):
    kills = [len(loop["kills"]) for loop in kill_loops]
    assert kills == [KILLS_PER_LOOP] * LOOPS, [loop["kills"] for loop in kill_loops]


def test_sigkill_points_spread_over_stages(kill_loops):
    # Kills recorded with different sets of finished stages hit different parts of the run.
    phases = {tuple(done) for loop in kill_loops for _, done in loop["kills"]}
    assert len(phases) >= 3, [loop["kills"] for loop in kill_loops]


def test_sigkill_then_resume_gives_uninterrupted_scores(kill_loops, reference_runs):
    for loop in kill_loops:
        assert loop["results"] is not None, loop["problems"]
        assert _comparable(loop["results"]) == _comparable(reference_runs["results"][0])


def test_manifest_reader_skips_partial_line(tmp_path):
    from spqr_runners.image_cache import ImageCache

    cache = ImageCache(tmp_path)
    cache.put("a" * 64, Image.new("RGB", (8, 8)), {"prompt_id": "p0"})
    with open(cache.manifest_path, "ab") as stream:
        stream.write(b'{"key": "bbbb", "prompt_')  # what a process killed inside write() would leave
    records = cache.manifest()
    assert [record["key"] for record in records] == ["a" * 64]


def test_cleared_image_cache_regenerates(reference_runs):
    """Stage records of a finished run outlive a cleared image cache: the images are generated again."""
    import shutil

    folder, cache = reference_runs["folder"], reference_runs["cache"]
    shutil.rmtree(cache / "images")
    (folder / "first" / "results.json").unlink()

    process = _start(folder, "first", cache)
    _finish(process, folder, "first")

    assert _comparable(_results(folder / "first")) == _comparable(reference_runs["results"][0])
    assert len(_cached_pngs(cache)) == 2 + 2 + 2 + 2  # harmful before, benign, BFT data, harmful after

"""Sharding over processes: a run on two CPU processes (gloo) gives the same results as one process."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml

RUN = {
    "name": "sharded",
    "smoke": True,
    "model": {"id": "embedded:tiny-sd"},
    "prompts": {"harmful": {"limit": 5}, "benign": {"limit": 3}, "bft": {"limit": 2}},
    "generation": {"steps": 1, "resolution": 64, "batch_size": 2},
    "finetune": {"batch_size": 2, "epochs": 1, "curriculum": None},
    "judges": {"names": ["nudenet"], "batch_size": 2},
    "adherence": {"model": "embedded:tiny-clip", "batch_size": 2},
    "quality": {"feature_extractor": "embedded:tiny-features", "reference": "embedded:synthetic",
                "reference_count": 4},
    "scoring": {"bootstrap": 20},
}


def test_shards_cover_every_item_once():
    from spqr_runners.distributed import Workers

    workers = Workers()
    for world_size in (1, 2, 3):
        covered = []
        for rank in range(world_size):
            workers.rank, workers.world_size = rank, world_size
            covered += workers.shard_indices(11, 3)
        assert sorted(covered) == list(range(11))


def test_shards_keep_single_process_batches():
    from spqr_runners.distributed import Workers

    workers = Workers()
    workers.rank, workers.world_size = 1, 2
    assert workers.shard_indices(10, 3) == [3, 4, 5, 9]


def _free_port():
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _run(command, tmp_path, name):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    config = tmp_path / f"{name}.yaml"
    config.write_text(yaml.safe_dump(RUN))
    arguments = ["-q", "run", "--config", str(config), "--output-dir", str(tmp_path / name),
                 "--cache-dir", str(tmp_path / f"{name}-cache")]
    completed = subprocess.run(command + arguments, env=env, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads((tmp_path / name / "results.json").read_text())


@pytest.mark.parametrize(
    ("environment", "expected"),
    [({}, 1), ({"WORLD_SIZE": "1"}, 1), ({"WORLD_SIZE": "4"}, 4), ({"OMPI_COMM_WORLD_SIZE": "2"}, 2),
     ({"PMI_SIZE": "3"}, 3), ({"WORLD_SIZE": "not a number"}, 1)],
    ids=["none", "torchrun-one", "torchrun-four", "open-mpi", "intel-mpi", "invalid"],
)
def test_launched_processes_from_environment(monkeypatch, environment, expected):
    from spqr_runners.distributed import launched_processes

    for name in ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert launched_processes() == expected


def test_single_process_needs_no_accelerate():
    # One process must not import torch or accelerate just to learn that it is alone.
    script = ("import sys\nfrom spqr_runners.distributed import Workers\nworkers = Workers()\n"
              "print(workers.world_size, workers.is_main, 'accelerate' in sys.modules, 'torch' in sys.modules)")
    environment = {key: value for key, value in os.environ.items() if key != "WORLD_SIZE"}
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=environment,
                               timeout=120)
    assert completed.stdout.split() == ["1", "True", "False", "False"], completed.stderr


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun", path=os.path.dirname(sys.executable)) is None,
                    reason="torchrun is not installed beside this Python")
def test_two_processes_match_one(tmp_path):
    single = _run([sys.executable, "-m", "spqr_runners.cli"], tmp_path, "single")
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    sharded = _run([torchrun, "--nproc_per_node", "2", "--master_port", str(_free_port()), "-m", "spqr_runners.cli"],
                   tmp_path, "sharded")
    for key in ("scores", "intervals", "counts", "per_category"):
        assert sharded[key] == single[key], key
    # Each process computes the whole FID, so it matches only if no process adds the other's feature statistics.
    assert sharded["raw"] == single["raw"]
    # Keys hash the inputs, so equal names mean the same requests; equal bytes mean the same images.
    single_images = {p.name: p.read_bytes() for p in (tmp_path / "single-cache" / "images").rglob("*.png")}
    sharded_images = {p.name: p.read_bytes() for p in (tmp_path / "sharded-cache" / "images").rglob("*.png")}
    assert sorted(sharded_images) == sorted(single_images)
    assert all(sharded_images[name] == single_images[name] for name in single_images)

"""``gitseg train`` under torchrun: DistributedDataParallel on CPU with gloo, 2 processes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from training import ddp


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Three tiny phantom cases in the UW-Madison layout."""
    from napari_gitseg.phantom import write_phantom_dataset

    return write_phantom_dataset(tmp_path_factory.mktemp("data"), n_cases=3, seed=0, n_slices=16, size=(64, 64))


def test_without_torchrun_everything_is_single_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not ddp.launched_by_torchrun() and not ddp.setup("cpu")
    assert (ddp.rank(), ddp.world_size(), ddp.is_main(), ddp.is_active()) == (0, 1, True, False)
    assert ddp.any_flag(True) and not ddp.broadcast_flag(False)
    ddp.barrier()
    ddp.cleanup()


@pytest.mark.slow
def test_torchrun_two_cpu_processes_train_one_model(dataset, tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nnodes=1",
        "--nproc_per_node=2",
        "-m",
        "napari_gitseg.cli",
        "train",
        str(dataset),
        "--out",
        str(out),
        "--preset",
        "quick",
        "--epochs",
        "1",
        "--max-steps",
        "3",
        "--batch-size",
        "2",
        "--size",
        "64",
        "--device",
        "cpu",
        "--quiet",
        "--config",
        json.dumps({"num_threads": 1, "val_batch_size": 8}),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    done = dict(re.findall(r"rank (\d)/2: (\d+ steps, weights [0-9a-f]{16})", log))
    assert set(done) == {"0", "1"}, log[-4000:]  # both ranks trained
    steps = {r: int(v.split()[0]) for r, v in done.items()}
    assert steps["0"] == steps["1"] == 3
    digests = {v.split()[-1] for v in done.values()}
    assert len(digests) == 1, done  # the same weights (and BatchNorm statistics) on every rank
    # rank 0 alone wrote: one bundle, one summary
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "model.safetensors"]
    assert proc.stdout.count('"best_dice"') == 1
    from napari_gitseg.model.bundle import load_bundle

    _model, bundle = load_bundle(out / "model.json")
    assert bundle.training["world_size"] == 2
    assert bundle.training["data"]["n_train_slices"] == 32  # every rank saw the whole (sampled) training set

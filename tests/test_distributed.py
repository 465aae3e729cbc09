"""torchrun with 2 CPU processes (gloo): data-parallel training equals one process on the
same global batch, and sharded scoring equals unsharded with every image once."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from vqfast.checkpoint import read

HERE = os.path.dirname(os.path.abspath(__file__))


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(*args, timeout=600):
    # PYTHONFAULTHANDLER: a worker that aborts prints every thread's Python stack.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           "--master-addr", "127.0.0.1", "--master-port", str(_port()), *args],
                          capture_output=True, text=True, timeout=timeout, env=env)
    # the workers' own output, before torchrun's report of the failure
    workers = done.stderr.split("torch/distributed/elastic")[0]
    assert done.returncode == 0, f"stdout:\n{done.stdout[-2000:]}\nworkers' stderr:\n{workers[-6000:]}"
    return done


def test_data_parallel_training_equals_one_process_on_the_global_batch(tmp_path):
    _torchrun(os.path.join(HERE, "ddp_worker.py"), str(tmp_path / "ddp.safetensors"))
    single = subprocess.run([sys.executable, os.path.join(HERE, "ddp_worker.py"), str(tmp_path / "one.safetensors")],
                            capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-4000:]
    a, b = read(tmp_path / "ddp.safetensors")[0], read(tmp_path / "one.safetensors")[0]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)
    # and training moved the weights: equal because the same steps were taken, not because none were
    torch.manual_seed(0)
    from vqfast.models import VQVAE, VQVAEConfig
    fresh = VQVAE(VQVAEConfig(hidden=16, res_blocks=1, num_codes=16, code_dim=8, downsamples=2, ema=False,
                              dropout=0.0)).state_dict()
    assert any((fresh[k] - a[k]).abs().max() > 1e-3 for k in fresh if fresh[k].is_floating_point())


def test_a_time_budget_stops_every_rank_after_the_same_step(tmp_path):
    done = _torchrun(os.path.join(HERE, "ddp_worker.py"), str(tmp_path / "unused"), "budget")
    lines = sorted(line for line in done.stdout.splitlines() if line.startswith("rank "))
    assert lines == [f"rank {r}: epochs 1 steps 1 stopped time budget of 0.0 min used" for r in (0, 1)], done.stdout


def test_sharded_scoring_equals_unsharded(tmp_path):
    from vqfast.cli import main
    from vqfast.data import procedural_splits, write_image_folder

    train, test = procedural_splits(size=16, seed=2, n_train=20, n_test_normal=4, n_test_anomalous=5)
    write_image_folder(train, tmp_path / "train")
    write_image_folder(test, tmp_path / "test")
    tiny = ["--size", "16", "--epochs", "1", "--set", "hidden=16", "--set", "codes=16", "--set", "code_dim=8",
            "--set", "res_blocks=1", "--set", "downsamples=2"]
    assert main(["train", "vqvae", "--data", str(tmp_path / "train"), "--out", str(tmp_path / "run"), *tiny]) == 0
    args = ["regenerative", "--run-dir", str(tmp_path / "run"), "--data", str(tmp_path / "test"), "--batch-size", "2"]
    assert main(["score", *args, "--out", str(tmp_path / "one")]) == 0
    _torchrun("-m", "vqfast", "score", *args, "--out", str(tmp_path / "two"))
    one, two = ((tmp_path / d / "scores.jsonl").read_text().splitlines() for d in ("one", "two"))
    one, two = [json.loads(r) for r in one], [json.loads(r) for r in two]
    assert [r["index"] for r in two] == list(range(9))
    for a, b in zip(one, two):
        assert a["path"] == b["path"] and a["decision"] == b["decision"]
        assert a["score"] == pytest.approx(b["score"], rel=1e-6)
    assert sorted(p.name for p in (tmp_path / "two" / "maps").glob("*.npy")) == \
        sorted(p.name for p in (tmp_path / "one" / "maps").glob("*.npy"))

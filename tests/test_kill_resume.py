"""A scoring run SIGKILLed at random points and resumed gives, bitwise, the results of
one uninterrupted run, for every scorer (tests/kill_worker.py is the child)."""

import os
import random
import signal
import subprocess
import sys
import time

import torch
from safetensors.torch import load_file

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "kill_worker.py")
NAMES = ["regenerative", "sample_wise", "pixel_wise_gpt2", "pixel_wise_pixelsnail", "light_pixel_wise", "sgfr",
         "feature_ae"]
BATCHES = 4 * len(NAMES)  # 8 items in batches of 2 per scorer


def _run(out, kill_after=None):
    """Runs the worker; with kill_after, SIGKILLs it once that many batch files exist."""
    proc = subprocess.Popen([sys.executable, WORKER, str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=HERE)
    if kill_after is None:
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0 and b"done" in stdout, stderr.decode()[-3000:]
        return
    deadline = time.monotonic() + 600
    while proc.poll() is None and time.monotonic() < deadline:
        if len(list(out.glob("*/batch_*.safetensors"))) >= kill_after:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.communicate()


def test_sigkill_and_resume_equals_an_uninterrupted_run(tmp_path):
    seed = int(os.environ.get("VQFAST_TEST_SEED", random.randrange(2**31)))
    print(f"VQFAST_TEST_SEED={seed}")
    rng = random.Random(seed)
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    _run(straight)
    kills = sorted(rng.sample(range(1, BATCHES), 4))
    for target in kills:
        _run(killed, kill_after=target)
        assert not (killed / f"{NAMES[-1]}.safetensors").exists()  # it really died before the end
    _run(killed)
    for name in NAMES:
        a, b = load_file(str(straight / f"{name}.safetensors")), load_file(str(killed / f"{name}.safetensors"))
        for key in ("scores", "maps", "labels", "masks"):
            assert torch.equal(a[key], b[key]), f"{name}: {key} differ after kills at {kills} batch files"

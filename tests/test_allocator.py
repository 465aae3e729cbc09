"""vqfast.allocator: glibc malloc tuned for the command line's processes. Each case runs in
a fresh interpreter, since the setting is process-wide and a process's allocation history
decides what malloc reuses."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

# Six forwards of two convolutions whose activations (8 x 64 x 128 x 128 float32, 32 MiB)
# are over glibc's largest dynamic mmap threshold; prints the minor page faults of the last
# four: ~49,000 each (4 KiB pages) when the blocks come fresh from the OS every call, ~0 when
# the heap reuses them (or ~16,000 once, where a small block left in the freed space makes
# the heap grow by 64 MiB one more time).
PROBE = """
import resource, sys, torch, vqfast
from vqfast.allocator import allocator_status
tuned = vqfast.tune_cpu_allocator() if sys.argv[1] == "tune" else False
net = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(64, 64, 3, padding=1))
x = torch.rand(8, 3, 128, 128)
with torch.no_grad():
    for round in range(6):
        if round == 2:
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        net(x)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(tuned, faults, allocator_status(), sep="|")
"""

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")


def _probe(mode, **env):
    run_env = {k: v for k, v in os.environ.items() if k not in ("VQFAST_MALLOC", "MALLOC_MMAP_THRESHOLD_", "LD_PRELOAD")}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], env={**run_env, **env}, capture_output=True, text=True,
                         check=True).stdout.strip().splitlines()[-1]
    tuned, faults, status = out.split("|")
    return tuned == "True", int(faults), status


def _huge_pages_always():
    path = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    return path.exists() and "[always]" in path.read_text()


def test_tuned_malloc_reuses_large_blocks():
    tuned, faults, status = _probe("tune")
    assert tuned and "mmap threshold 1024 MiB" in status
    assert faults < 30000, faults
    untuned, faults, status = _probe("leave")
    assert not untuned and "not tuned" in status
    if not _huge_pages_always():  # with 2 MiB pages a fresh block faults 16 times, not 8,192
        assert faults > 150000, faults


@pytest.mark.parametrize("env, reason", [({"VQFAST_MALLOC": "default"}, "VQFAST_MALLOC=default"),
                                         ({"MALLOC_MMAP_THRESHOLD_": "65536"}, "already configured")])
def test_the_environment_can_keep_malloc_as_it_is(env, reason):
    tuned, faults, status = _probe("tune", **env)
    assert not tuned and reason in status


def test_the_command_line_tunes_its_process():
    out = subprocess.run([sys.executable, "-m", "vqfast", "info"], capture_output=True, text=True, check=True,
                         env={k: v for k, v in os.environ.items() if k != "VQFAST_MALLOC"}).stdout
    assert "CPU memory allocator: glibc malloc, mmap threshold 1024 MiB" in out

"""No input crashes the process: hostile inputs (out-of-range indices, negative values,
huge sizes, NaN/Inf, empty and non-contiguous tensors, tensors not in host memory) for
every public op on every CPU backend, and for the raw `_C` entry points, in a child
process so that a segfault fails this test instead of killing pytest."""

import os
import subprocess
import sys

import pytest
import torch

import vqfast
from vqfast.ops import restore_step
from conftest import require_backend

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.parametrize("backend,examples", [("cpu", 400), ("reference", 150),
                                              pytest.param("triton", 60, marks=pytest.mark.triton)])
def test_hostile_inputs_never_crash(backend, examples):
    require_backend("restore_step", "cpu", backend)
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, os.path.join(HERE, "hostile_inputs.py"), backend, str(examples)],
                          capture_output=True, text=True, timeout=900, env=env, cwd=HERE)
    assert proc.returncode == 0 and "survived" in proc.stdout, (
        f"child died with return code {proc.returncode} (negative: killed by signal {-proc.returncode})\n"
        f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}")


def test_restore_step_out_of_range_token_raises_without_validation():
    """validate=False skips the Python range check: the kernel's own bounds check raises."""
    logits = torch.randn(3, 16)
    seeds = torch.arange(3)
    for bad in (10**9, -5, 16):
        current = torch.tensor([0, bad, 2])
        with pytest.raises(ValueError, match=r"current holds tokens outside \[0, V=16\)"):
            restore_step(logits, current, 0.0, seeds, 0, backend="cpu", validate=False)


def test_raw_entry_points_check_what_they_dereference():
    from vqfast import _ext

    C = _ext._C
    meta = dict(device="meta")
    with pytest.raises(ValueError, match="omp_cpu needs CPU tensors"):
        C.omp_cpu(torch.eye(3, **meta, dtype=torch.float64), torch.ones(2, 3, **meta, dtype=torch.float64), 2, -1.0,
                  torch.ones(2, **meta, dtype=torch.float64))
    with pytest.raises(ValueError, match="restore_step_cpu needs CPU tensors"):
        C.restore_step_cpu(torch.randn(2, 4, **meta), torch.zeros(2, dtype=torch.int64, **meta), 0.0,
                           torch.zeros(2, dtype=torch.int64, **meta), 0, 1.0)
    with pytest.raises(ValueError, match="decode_attention_cpu needs CPU tensors"):
        C.decode_attention_cpu(torch.randn(1, 1, 4, **meta), torch.randn(1, 1, 2, 4, **meta),
                               torch.randn(1, 1, 2, 4, **meta), 2, 0.5)
    with pytest.raises(ValueError, match="nearest_code_cpu needs CPU tensors"):
        C.nearest_code_cpu(torch.randn(2, 4, **meta), torch.randn(3, 4, **meta), 1, "auto")
    with pytest.raises(RuntimeError, match="D >= 1"):
        C.nearest_code_cpu(torch.randn(2, 0), torch.randn(3, 0), 1, "auto")
    with pytest.raises(ValueError, match="current holds tokens outside"):
        C.restore_step_cpu(torch.randn(2, 16), torch.tensor([3, 10**9]), 0.0, torch.zeros(2, dtype=torch.int64), 0, 1.0)


def test_nearest_code_rejects_values_whose_squares_overflow():
    z = torch.randn(4, 8)
    z[2, 3] = 1e19
    with pytest.raises(ValueError, match=r"z holds values of magnitude above .* \(first at row 2\)"):
        vqfast.nearest_code(z, torch.randn(5, 8), backend="cpu")

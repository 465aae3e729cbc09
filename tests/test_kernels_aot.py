"""Every Triton kernel variant the ops launch compiles for Hopper and Ampere.

The interpreter the other tests use never runs Triton's compiler, so these compile each
variant of vqfast/kernels/variants.py through ``triton.compile`` for sm_90 and sm_80 in
a fresh process (TRITON_INTERPRET unset) and read the instructions back."""

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.triton
triton = pytest.importorskip("triton")


def _run(args, script=None):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, str(script)] if script else [sys.executable, "-m", "vqfast.kernels.aot", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def aot():
    proc = _run(["--arch", "90,80"])
    lines = [line for line in proc.stdout.splitlines() if " sm_" in line]
    return proc, lines


def test_every_variant_compiles_for_sm90_and_sm80(aot):
    proc, lines = aot
    from vqfast.kernels.variants import variants

    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert len(lines) == 2 * len(variants())
    assert all(" ok " in line for line in lines), [line for line in lines if " ok " not in line]
    kernels = {line.split()[0] for line in lines}
    assert kernels == {"nearest_code", "omp", "restore_step", "decode_attention"}


def test_nearest_code_runs_on_tensor_cores(aot):
    """Hopper: wgmma (HGMMA) wherever a program holds 64 or more rows, mma.sync otherwise;
    Ampere: mma.sync (HMMA). The aligned k = 1 variants keep their winners in registers."""
    _, lines = aot
    for line in (line for line in lines if line.startswith("nearest_code")):
        fields = dict(f.split("=") for f in line.split() if f.count("=") == 1 and f[0].islower())
        assert int(fields["sass_tc"]) > 0, line
        if "sm_80" in line:
            assert int(fields["mma"]) > 0 and int(fields["wgmma"]) == 0, line
        elif "k=1 " in line + " ":
            assert int(fields["wgmma"]) > 0, line
        if "sm_90" in line and "D=64 K=1024 k=1" in line:
            assert fields["stack"] == "0", line


def test_a_kernel_that_does_not_compile_is_reported(tmp_path):
    """The compile is real: a kernel reading a plain global (as nearest_code once did)
    passes the interpreter but must fail here, with the cause on its line."""
    code = textwrap.dedent("""
        import torch, triton, triton.language as tl
        from vqfast.kernels.aot import compile_variant
        from vqfast.kernels.variants import Variant
        LIMIT = 7
        @triton.jit
        def bad(x_ptr, n):
            tl.store(x_ptr + tl.arange(0, 16), tl.zeros((16,), tl.float32) + LIMIT)
        @triton.jit
        def good(x_ptr, n):
            tl.store(x_ptr + tl.arange(0, 16), tl.zeros((16,), tl.float32) + n)
        for kernel in (bad, good):
            call = lambda kernel=kernel: kernel[(1,)](torch.empty(16), 3)
            print(compile_variant(Variant("toy", kernel.fn.__name__, call), 90).line())
    """)
    script = tmp_path / "toy_kernels.py"  # Triton reads a kernel's source from its file
    script.write_text(code)
    proc = _run([], script)
    assert proc.returncode == 0, proc.stderr[-3000:]
    bad, good = proc.stdout.strip().splitlines()[-2:]
    assert "ERROR" in bad and "LIMIT" in bad
    assert " ok " in good


def test_refuses_to_run_under_the_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-m", "vqfast.kernels.aot"], env=env, capture_output=True, text=True)
    assert proc.returncode == 2 and "unset TRITON_INTERPRET" in proc.stderr

"""The backend rule shared by every op (vqfast/ops/_dispatch.py)."""

import importlib.util
import os
import platform
import warnings

import pytest
import torch

from vqfast import _ext, reference
from vqfast.ops import _dispatch, nearest_code, resolve_backend


@pytest.fixture
def no_extension(monkeypatch):
    """vqfast as it is when vqfast._C failed to import."""
    monkeypatch.setattr(_ext, "HAS_EXT", False)
    monkeypatch.setattr(_ext, "HAS_CUDA_EXT", False)
    monkeypatch.setattr(_ext, "EXT_ERROR", "vqfast._C could not be imported (simulated)")
    monkeypatch.setattr(_ext, "CUDA_EXT_ERROR", "vqfast._C could not be imported (simulated)")
    monkeypatch.setattr(_dispatch, "_warned", set())


def test_extension_is_built_unless_disabled():
    """CI builds the extension: a silent build failure must not turn into skipped tests."""
    if os.environ.get("VQFAST_NO_EXT") == "1":
        pytest.skip("VQFAST_NO_EXT=1")
    assert _ext.HAS_EXT, _ext.EXT_ERROR
    for op in ("nearest_code", "omp", "restore_step", "decode_attention"):
        assert _ext.has_op(op, "cpu"), op


def test_triton_is_installed_where_pyproject_requires_it():
    if platform.system() != "Linux" or platform.machine() != "x86_64":
        pytest.skip("triton is a dependency on Linux x86_64 only")
    assert importlib.util.find_spec("triton") is not None


def test_auto_prefers_the_extension_on_cpu():
    if not _ext.HAS_EXT:
        pytest.skip("extension not built")
    assert resolve_backend("nearest_code", "auto", torch.device("cpu")) == "cpu"


def test_missing_extension_falls_back_with_one_warning(no_extension):
    z, cb = torch.randn(20, 4), torch.randn(6, 4)
    with pytest.warns(RuntimeWarning, match=r"using the reference implementation on cpu: .*\(simulated\)"):
        idx, dist = nearest_code(z, cb, 2)
    ref_idx, ref_dist = reference.nearest_code(z, cb, 2)
    assert torch.equal(idx, ref_idx) and torch.equal(dist, ref_dist)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nearest_code(z, cb, 2)  # second call: no second warning


def test_named_backend_never_falls_back(no_extension):
    with pytest.raises(RuntimeError, match=r"backend='cpu' is unavailable for nearest_code: .*\(simulated\)"):
        nearest_code(torch.randn(3, 2), torch.randn(4, 2), backend="cpu")


def test_backend_must_match_the_device():
    with pytest.raises(RuntimeError, match="backend='cuda' needs cuda tensors"):
        nearest_code(torch.randn(3, 2), torch.randn(4, 2), backend="cuda")


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        nearest_code(torch.randn(3, 2), torch.randn(4, 2), backend="triton")


def test_auto_on_cuda_without_cuda_kernels_uses_triton(no_extension):
    # resolve_backend only reads the device type: this runs without a GPU.
    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton not installed")
    assert resolve_backend("nearest_code", "auto", torch.device("cuda")) == "triton"


def test_auto_on_cuda_without_any_kernel_warns_and_uses_reference(no_extension, monkeypatch):
    monkeypatch.setattr(_dispatch, "triton_unavailable_reason", lambda device: "triton is not installed")
    with pytest.warns(RuntimeWarning, match=r"on cuda: .*\(simulated\); and triton is not installed"):
        assert resolve_backend("nearest_code", "auto", torch.device("cuda")) == "reference"


def test_ops_without_triton_kernel_skip_it(no_extension):
    with pytest.warns(RuntimeWarning, match="on cuda"):
        assert resolve_backend("some_op", "auto", torch.device("cuda"), has_triton=False) == "reference"
    with pytest.raises(RuntimeError, match="some_op has no Triton kernel"):
        resolve_backend("some_op", "triton", torch.device("cuda"), has_triton=False)


def test_other_devices_use_the_reference():
    with pytest.warns(RuntimeWarning, match="no kernels for meta tensors"):
        assert resolve_backend("nearest_code", "auto", torch.device("meta")) == "reference"


def _run(code: str, env_extra=None):
    import subprocess
    import sys

    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)


def test_import_survives_missing_extension_and_triton():
    """A None entry in sys.modules makes that import raise ImportError, as a missing
    or ABI-broken build would."""
    code = (
        "import sys, warnings\n"
        "sys.modules['vqfast._C'] = None\n"
        "sys.modules['triton'] = None\n"
        "import torch, vqfast\n"
        "assert not vqfast.HAS_EXT\n"
        "from vqfast import _ext\n"
        "assert 'could not be imported' in _ext.EXT_ERROR\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    idx, _ = vqfast.nearest_code(torch.eye(3), torch.eye(3))\n"
        "assert idx[:, 0].tolist() == [0, 1, 2]\n"
        "assert len(w) == 1 and 'reference implementation' in str(w[0].message)\n"
        "print('ok')\n"
    )
    result = _run(code)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_setup_honours_vqfast_no_ext():
    import pathlib
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "setup.py", "--version"],
        cwd=root,
        capture_output=True,
        text=True,
        env={**os.environ, "VQFAST_NO_EXT": "1"},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "VQFAST_NO_EXT=1 -> no extension" in result.stdout

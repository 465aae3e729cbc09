import os
import secrets

import pytest
import torch

# Triton reads TRITON_INTERPRET when a kernel is defined; vqfast imports its Triton
# kernels lazily, so setting it here (before any test runs) puts them in the
# interpreter on machines without a GPU.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from vqfast.ops._dispatch import resolve_backend  # noqa: E402

DEVICE_BACKENDS = [
    pytest.param(("cpu", "cpu"), id="cpu-cpu"),
    pytest.param(("cpu", "triton"), id="cpu-triton", marks=pytest.mark.triton),
    pytest.param(("cpu", "reference"), id="cpu-reference"),
    pytest.param(("cuda", "cuda"), id="cuda-cuda", marks=pytest.mark.cuda),
    pytest.param(("cuda", "triton"), id="cuda-triton", marks=[pytest.mark.cuda, pytest.mark.triton]),
    pytest.param(("cuda", "reference"), id="cuda-reference", marks=pytest.mark.cuda),
]


def require_backend(op: str, device: str, backend: str) -> None:
    """Skips the test when (device, backend) cannot run here; test_dispatch checks that
    the backends CI must have (the C++ extension, Triton's interpreter) are present."""
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    try:
        resolve_backend(op, backend, torch.device(device))
    except RuntimeError as exc:
        pytest.skip(str(exc))


@pytest.fixture(params=DEVICE_BACKENDS)
def device_backend(request):
    device, backend = request.param
    require_backend("nearest_code", device, backend)
    return device, backend


@pytest.fixture
def gen():
    """A fresh seed per test from the OS, printed so a failure can be replayed with
    VQFAST_TEST_SEED=<seed>."""
    seed = int(os.environ.get("VQFAST_TEST_SEED", secrets.randbelow(2**31)))
    print(f"VQFAST_TEST_SEED={seed}")
    return torch.Generator().manual_seed(seed)


def image_folders(root, **split):
    """``root`` with train/ and test/ folders of procedural images (procedural_splits'
    keyword arguments), as a user's folders would be; returns root."""
    from vqfast.data import procedural_splits, write_image_folder  # noqa: only the command-line tests need it

    train, test = procedural_splits(**split)
    write_image_folder(train, root / "train")
    write_image_folder(test, root / "test")
    return root

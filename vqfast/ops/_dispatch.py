"""The one backend rule every vqfast op follows.

``backend="auto"``: CUDA tensors use the CUDA extension, or Triton where the
extension lacks the op; CPU tensors use the C++ extension; anything else, or a
missing extension, uses the reference with one warning that says why. Naming a
backend explicitly never falls back: an unavailable one raises RuntimeError.
"""

import importlib.util
import warnings

import torch

from vqfast import _ext
from vqfast.kernels import interpreting as triton_interpret

BACKENDS = ("auto", "cuda", "triton", "cpu", "reference")
_warned = set()


def triton_unavailable_reason(device: torch.device):
    """None if Triton kernels can run on ``device``, else why not."""
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    if device.type == "cuda":
        return None
    if device.type == "cpu" and triton_interpret():
        return None
    return f"Triton runs on CUDA tensors, or on CPU tensors with TRITON_INTERPRET=1 (tensor is on {device})"


def _warn_once(op: str, device: torch.device, why: str) -> None:
    key = (op, device.type)
    if key not in _warned:
        _warned.add(key)
        warnings.warn(f"vqfast.ops.{op}: using the reference implementation on {device.type}: {why}", RuntimeWarning, stacklevel=4)


def resolve_backend(op: str, backend: str, device: torch.device, *, has_triton: bool = True) -> str:
    """Returns the concrete backend ("cuda", "triton", "cpu" or "reference") for ``op``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        if device.type == "cuda":
            if _ext.has_op(op, "cuda"):
                return "cuda"
            why = _ext.missing_reason(op, "cuda")
            if has_triton:
                triton_why = triton_unavailable_reason(device)
                if triton_why is None:
                    return "triton"
                why += f"; and {triton_why}"
            _warn_once(op, device, why)
            return "reference"
        if device.type == "cpu":
            if _ext.has_op(op, "cpu"):
                return "cpu"
            _warn_once(op, device, _ext.missing_reason(op, "cpu"))
            return "reference"
        _warn_once(op, device, f"vqfast has no kernels for {device.type} tensors")
        return "reference"
    if backend in ("cpu", "cuda"):
        if device.type != backend:
            raise RuntimeError(f"backend={backend!r} needs {backend} tensors, got tensors on {device}")
        if not _ext.has_op(op, backend):
            raise RuntimeError(f"backend={backend!r} is unavailable for {op}: {_ext.missing_reason(op, backend)}")
    elif backend == "triton":
        if not has_triton:
            raise RuntimeError(f"{op} has no Triton kernel")
        why = triton_unavailable_reason(device)
        if why is not None:
            raise RuntimeError(f"backend='triton' is unavailable for {op}: {why}")
    return backend

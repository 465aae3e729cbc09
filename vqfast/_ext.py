"""Loads the compiled extension ``vqfast._C`` and records what it offers.

Importing vqfast never fails because the extension is missing, was built without
CUDA, or was built against another torch: the reason is kept here and the ops fall
back to their reference paths with one warning that quotes it.
"""

_C = None
HAS_EXT = False
HAS_CUDA_EXT = False
EXT_ERROR = None  # why vqfast._C is unusable, or None
CUDA_EXT_ERROR = None  # why its CUDA kernels are unusable, or None

try:
    from vqfast import _C  # noqa: F811
except ImportError as exc:  # not built, VQFAST_NO_EXT=1, or an ABI mismatch with this torch
    EXT_ERROR = (
        f"vqfast._C could not be imported ({exc}); rebuild with "
        "`pip install -e . --no-build-isolation` against the installed torch"
    )
    CUDA_EXT_ERROR = EXT_ERROR
else:
    HAS_EXT = True
    HAS_CUDA_EXT = bool(getattr(_C, "with_cuda", False))
    if not HAS_CUDA_EXT:
        CUDA_EXT_ERROR = "vqfast._C was built without CUDA kernels (torch without CUDA, or nvcc not found at build time)"


def has_op(op: str, backend: str) -> bool:
    """Whether the extension provides ``<op>_<backend>`` (backend "cpu" or "cuda")."""
    if backend == "cuda" and not HAS_CUDA_EXT:
        return False
    return HAS_EXT and hasattr(_C, f"{op}_{backend}")


def missing_reason(op: str, backend: str) -> str:
    if not HAS_EXT:
        return EXT_ERROR
    if backend == "cuda" and not HAS_CUDA_EXT:
        return CUDA_EXT_ERROR
    return f"vqfast._C has no {op}_{backend} (built from an older source tree?)"

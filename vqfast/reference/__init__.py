"""Plain, faithful PyTorch versions of every fast path: the ground truth in tests and
the fallback when no kernel is available."""

from vqfast.reference.nearest_code import nearest_code
from vqfast.reference.omp import omp

__all__ = ["nearest_code", "omp"]

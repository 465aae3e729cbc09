"""Plain, faithful PyTorch versions of every fast path: the ground truth in tests and
the fallback when no kernel is available."""

from vqfast.reference.nearest_code import nearest_code

__all__ = ["nearest_code"]

"""Triton kernels, imported lazily by vqfast.ops (Triton is optional).

On machines without a GPU they run under Triton's interpreter: set
TRITON_INTERPRET=1 before the first kernel is used.
"""

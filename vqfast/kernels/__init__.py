"""Triton kernels, imported lazily by vqfast.ops (Triton is optional).

On machines without a GPU they run under Triton's interpreter: set
TRITON_INTERPRET=1 before the first kernel is defined. ``python -m vqfast.kernels.aot``
compiles every kernel variant the ops launch for Hopper and Ampere without a GPU
(``vqfast/kernels/variants.py`` lists them).

This module imports nothing heavy: the dispatch layer reads ``interpreting`` from
here, so the kernels never import the dispatch layer back.
"""

import os


def interpreting() -> bool:
    """True when Triton kernels run in its interpreter (Python, on CPU tensors).

    Triton reads TRITON_INTERPRET when a kernel is defined, so it must be set before
    the first use of a Triton backend in the process. The host wrappers pick GPU tile
    sizes whenever this is false, so the ahead-of-time compile sees what a GPU runs.
    """
    return os.environ.get("TRITON_INTERPRET", "0") == "1"

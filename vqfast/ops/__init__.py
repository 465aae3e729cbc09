"""vqfast's ops: each dispatches with backend="auto"|"cuda"|"triton"|"cpu"|"reference"."""

from vqfast.ops._dispatch import BACKENDS, resolve_backend
from vqfast.ops.nearest_code import QuantizeOutput, nearest_code, quantize

__all__ = ["BACKENDS", "QuantizeOutput", "nearest_code", "quantize", "resolve_backend"]

"""vqfast's ops: each dispatches with backend="auto"|"cuda"|"triton"|"cpu"|"reference"."""

from vqfast.ops._dispatch import BACKENDS, resolve_backend
from vqfast.ops.code_at_rank import code_at_rank
from vqfast.ops.decode_attention import decode_attention
from vqfast.ops.nearest_code import QuantizeOutput, nearest_code, quantize
from vqfast.ops.omp import omp, omp_dictionary
from vqfast.ops.restore_step import restore_step

__all__ = ["BACKENDS", "QuantizeOutput", "code_at_rank", "decode_attention", "nearest_code", "omp", "omp_dictionary", "quantize",
           "resolve_backend", "restore_step"]

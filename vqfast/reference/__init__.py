"""Plain, faithful PyTorch versions of every fast path: the ground truth in tests and
the fallback when no kernel is available."""

from vqfast.reference.code_at_rank import code_at_rank
from vqfast.reference.decode_attention import decode_attention
from vqfast.reference.nearest_code import nearest_code
from vqfast.reference.omp import omp
from vqfast.reference.restore_step import counter_uniform, image_seeds, restore_step, stream_seeds

__all__ = ["code_at_rank", "counter_uniform", "decode_attention", "image_seeds", "nearest_code", "omp", "restore_step", "stream_seeds"]

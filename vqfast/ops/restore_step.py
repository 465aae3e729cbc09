"""One position of the restoration pass: NLL test and counter-based inverse-CDF sample."""

from typing import Tuple

import torch

from vqfast import _ext
from vqfast.ops._checks import check_finite, check_same_device, check_tensor
from vqfast.ops._dispatch import resolve_backend
from vqfast.reference.restore_step import restore_step as _reference

LOGIT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


@torch.library.custom_op("vqfast::restore_step", mutates_args=())
def _restore_step_op(logits: torch.Tensor, current: torch.Tensor, threshold: float, seeds: torch.Tensor, position: int,
                     temperature: float, backend: str) -> Tuple[torch.Tensor, torch.Tensor]:
    if backend == "cuda":
        return _ext._C.restore_step_cuda(logits, current, threshold, seeds, position, temperature)
    if backend == "triton":
        from vqfast.kernels.restore_step_triton import restore_step_triton  # Triton is optional: imported when its backend runs

        return restore_step_triton(logits, current, threshold, seeds, position, temperature)
    if backend == "cpu":
        x = logits if logits.dtype in (torch.float32, torch.float64) else logits.float()
        return _ext._C.restore_step_cpu(x, current, threshold, seeds, position, temperature)
    return _reference(logits, current, threshold, seeds, position, temperature)


@_restore_step_op.register_fake
def _(logits, current, threshold, seeds, position, temperature, backend):
    m = logits.shape[0]
    nll_dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    return current.new_empty((m,)), logits.new_empty((m,), dtype=nll_dtype)


def restore_step(logits: torch.Tensor, current: torch.Tensor, threshold: float, seeds: torch.Tensor, position: int,
                 temperature: float = 1.0, backend: str = "auto", validate: bool = True):
    """For each of M sequences at one position: the NLL of its current token and, where
    it exceeds ``threshold``, a replacement sampled from softmax(logits / temperature)
    by inverse CDF with the counter-based uniform of (seeds[m], position).

    Args:
        logits: (M, V) float32 / float64 / float16 / bfloat16, the prior's logits for
            this position given each sequence's (restored) prefix.
        current: (M,) int64 tokens at this position, in [0, V).
        threshold: restore where nll > threshold (float("inf"): never).
        seeds: (M,) int64, one random stream per sequence (see
            vqfast.reference.restore_step.stream_seeds).
        position: the counter's position (the token index in raster order), in [0, 2^31).
        temperature: > 0, for the sample only; the NLL is the model's.
        backend: "auto" | "cuda" | "triton" | "cpu" | "reference".
        validate: check logits for NaN/Inf and current's range (each a host sync; the
            restoration pass turns it off and checks its NLLs once at the end).

    Returns:
        tokens (M,) int64, nll (M,) float32 (float64 for float64 logits).
    """
    check_tensor(logits, "logits", ndim=2, layout="(M, V)", dtypes=LOGIT_DTYPES)
    check_tensor(current, "current", ndim=1, layout="(M,)", dtypes=(torch.int64,))
    check_tensor(seeds, "seeds", ndim=1, layout="(M,)", dtypes=(torch.int64,))
    check_same_device(logits, "logits", current, "current")
    check_same_device(logits, "logits", seeds, "seeds")
    m, v = logits.shape
    if current.shape[0] != m or seeds.shape[0] != m:
        raise ValueError(f"current and seeds must be ({m},) like logits' rows, got {tuple(current.shape)} and "
                         f"{tuple(seeds.shape)}")
    if v == 0:
        raise ValueError("logits has no classes (V=0)")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if isinstance(position, bool) or not isinstance(position, int) or not 0 <= position < 2**31:
        raise ValueError(f"position must be an int in [0, 2^31), got {position!r}")
    if validate and m:
        check_finite(logits, "logits")
        lo, hi = int(current.min()), int(current.max())
        if lo < 0 or hi >= v:
            raise ValueError(f"current holds tokens outside [0, V={v}) (min {lo}, max {hi})")
    resolved = resolve_backend("restore_step", backend, logits.device)
    if m == 0:
        return current.new_empty((0,)), logits.new_empty((0,), dtype=torch.float64 if logits.dtype == torch.float64
                                                          else torch.float32)
    return _restore_step_op(logits, current, float(threshold), seeds, position, float(temperature), resolved)

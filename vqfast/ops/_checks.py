"""Argument checks at the op boundary: every message names the argument."""

import math
from typing import Optional

import torch

KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_tensor(x, name: str, *, ndim: int, layout: str, dtypes=KERNEL_DTYPES) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in dtypes:
        allowed = " or ".join(", ".join(str(d).replace("torch.", "") for d in dtypes).rsplit(", ", 1))
        hint = " (cast to float32: kernels accumulate in float32)" if x.dtype == torch.float64 else ""
        raise TypeError(f"{name} must be {allowed}, got {x.dtype}{hint}")
    if x.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D {layout}, got shape {tuple(x.shape)}")


def check_same_device(a: torch.Tensor, a_name: str, b: torch.Tensor, b_name: str) -> None:
    if a.device != b.device:
        raise ValueError(f"{a_name} is on {a.device} but {b_name} is on {b.device}")


def check_finite(x: torch.Tensor, name: str, bound: Optional[float] = None, why: str = "") -> None:
    """Raises ValueError naming the first row of ``x`` with a NaN or Inf, or (with
    ``bound``) a value of magnitude above ``bound`` (``why`` says what that breaks).

    amax/amin propagate NaN and reach +-Inf, so two reductions and one host sync decide
    without the (x.shape) boolean temporaries of torch.isfinite (2x the input, measured).
    """
    if x.numel() == 0:
        return
    hi, lo = torch.stack((x.amax(), x.amin())).double().tolist()
    if math.isfinite(hi) and math.isfinite(lo):
        if bound is None or max(hi, -lo) <= bound:
            return
        # In float64: the float32 tensor would round the bound to float32, possibly up
        # past the value that failed the test above.
        row = int((x.abs().double() > bound).reshape(x.shape[0], -1).any(1).nonzero()[0, 0])
        raise ValueError(f"{name} holds values of magnitude above {bound:.3g} (first at row {row}){why}")
    row = int((~torch.isfinite(x)).reshape(x.shape[0], -1).any(1).nonzero()[0, 0])
    raise ValueError(f"{name} contains NaN or Inf (first at row {row})")

"""Nearest-codebook lookup (fused distance + argmin/top-k) and VQ quantisation."""

from typing import NamedTuple, Tuple

import torch
import torch.nn.functional as F

from vqfast import _ext, reference
from vqfast.ops import lowered
from vqfast.ops._checks import check_finite, check_same_device, check_tensor
from vqfast.ops._dispatch import resolve_backend, triton_unavailable_reason


@torch.library.custom_op("vqfast::nearest_code", mutates_args=())
def _nearest_code_op(z: torch.Tensor, codebook: torch.Tensor, k: int, backend: str) -> Tuple[torch.Tensor, torch.Tensor]:
    # Value checks live here, not in the fake kernel: they read the data. Distances are
    # float32 sums of D squares of differences: |values| <= sqrt(FLT_MAX / 4D) keeps
    # every one finite, so each row has k finite ranking values to choose from. The C++
    # kernel makes the same check, with the same messages, while it packs the rows: a
    # separate pass here cost 10 % of a small-codebook lookup (measured, N=4096 D=256 K=128).
    if backend == "cpu":
        return _ext._C.nearest_code_cpu(z, codebook, k, "auto")
    bound = (torch.finfo(torch.float32).max / (4 * z.shape[1])) ** 0.5
    why = ": their squared distances overflow float32"
    check_finite(z, "z", bound, why)
    check_finite(codebook, "codebook", bound, why)
    if backend == "cuda":
        return _ext._C.nearest_code_cuda(z, codebook, k)
    if backend == "triton":
        from vqfast.kernels.nearest_code_triton import nearest_code_triton  # Triton is optional: imported when its backend runs

        return nearest_code_triton(z, codebook, k)
    idx, dist = reference.nearest_code(z, codebook, k)
    return idx, dist.float()


@_nearest_code_op.register_fake
def _(z, codebook, k, backend):
    n = z.shape[0]
    return z.new_empty((n, k), dtype=torch.int64), z.new_empty((n, k), dtype=torch.float32)


def nearest_code(z: torch.Tensor, codebook: torch.Tensor, k: int = 1, backend: str = "auto"):
    """The k nearest codebook rows of every row of ``z`` (squared L2).

    Args:
        z: (N, D) float32 / float16 / bfloat16; any strides.
        codebook: (K, D), same device; a different float dtype is promoted
            (``torch.promote_types``) together with ``z``.
        k: 1 <= k <= K. ``k=1`` is the VQ lookup. The scalar CUDA kernel
            (``backend="cuda"``) keeps up to 64 winners per row; "auto" sends CUDA
            tensors to the Triton tensor-core kernel whenever Triton is installed.
        backend: "auto" | "cuda" | "triton" | "cpu" | "reference" (see README).

    Returns:
        indices: (N, k) int64, ascending distance, ties broken by lower index
            (the rule of ``torch.argmin``).
        distances: (N, k) float32, squared L2, accumulated in float32.

    Kernels never build the (N, K) distance matrix: they tile the codebook and keep
    running winners. They rank by the expanded form around the codebook mean, then
    recompute the k winners' distances exactly; codes whose distances differ by
    less than float32 rounding may therefore rank differently from the reference.
    On CPUs with AMX-BF16 (k > 1 or D > 32) or AVX512-BF16 (k > 1 or D > 16), and in
    the Triton kernel (TF32 products for float32, native ones for bfloat16/float16), the
    products only bound each code's distance; every code the bound cannot rule out is
    recomputed directly, and the winners are the k smallest of those recomputed float32
    distances (vqfast/kernels/nearest_code_triton.py gives the error model).

    Raises:
        TypeError: a non-tensor, or a dtype other than float32/float16/bfloat16.
        ValueError: wrong rank, D mismatch, K = 0, D = 0, k out of range, tensors on
            different devices, NaN or Inf in ``z`` or ``codebook``.
        RuntimeError: an explicitly named backend that is unavailable here.
    """
    check_tensor(z, "z", ndim=2, layout="(N, D)")
    check_tensor(codebook, "codebook", ndim=2, layout="(K, D)")
    check_same_device(z, "z", codebook, "codebook")
    n, d = z.shape
    num_codes, cd = codebook.shape
    if cd != d:
        raise ValueError(f"codebook has D={cd} but z has D={d} (z: {tuple(z.shape)}, codebook: {tuple(codebook.shape)})")
    if num_codes == 0:
        raise ValueError("codebook is empty (K=0)")
    if d == 0:
        raise ValueError("z and codebook have D=0: distances are undefined")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= num_codes:
        raise ValueError(f"k must be an int in [1, K={num_codes}], got {k!r}")
    if torch.compiler.is_exporting():  # standard operators in an exported graph (vqfast.ops.lowered)
        return lowered.nearest_code(z, codebook, k)
    resolved = resolve_backend("nearest_code", backend, z.device)
    if backend == "cuda" and k > _ext._C.nearest_code_cuda_max_k:
        raise ValueError(f"backend='cuda' supports k <= {_ext._C.nearest_code_cuda_max_k}, got k={k}; use 'auto' or 'triton'")
    if backend == "auto" and resolved == "cuda" and triton_unavailable_reason(z.device) is None:
        # The tensor-core kernel: the scalar CUDA kernel's FP32-FMA floor alone is ~1.7x
        # the TF32 GEMM's time at N=262144 D=256 K=16384 (analysis; benchmarks/gpu_check.sh
        # times both). The scalar kernel stays on backend="cuda".
        resolved = "triton"
    elif resolved == "cuda" and k > _ext._C.nearest_code_cuda_max_k:
        resolved = "reference"
    if z.dtype != codebook.dtype:
        common = torch.promote_types(z.dtype, codebook.dtype)
        z, codebook = z.to(common), codebook.to(common)
    if n == 0:  # a bad codebook is still an error
        check_finite(codebook, "codebook")
        return z.new_empty((0, k), dtype=torch.int64), z.new_empty((0, k), dtype=torch.float32)
    return _nearest_code_op(z, codebook, k, resolved)


class QuantizeOutput(NamedTuple):
    quantized: torch.Tensor  # (B, C, *S), z's values replaced by their codes; straight-through gradient
    indices: torch.Tensor  # (B, *S) int64
    codebook_loss: torch.Tensor  # scalar: mean (sg[z] - z_q)^2, trains the codebook
    commitment_loss: torch.Tensor  # scalar: mean (z - sg[z_q])^2, weight it by beta


def quantize(z: torch.Tensor, codebook: torch.Tensor, backend: str = "auto") -> QuantizeOutput:
    """Vector-quantises a channel-first feature map (VQ-VAE eqs. 1-5).

    Args:
        z: (B, C, H, W) encoder output (any number of trailing spatial dims >= 1).
        codebook: (K, C) code vectors.

    The forward value of ``quantized`` is exactly the chosen codes; its gradient is
    copied to ``z`` unchanged (straight-through). The losses are means over all
    elements, i.e. the paper's per-observation sums divided by C*H*W.
    """
    if not isinstance(z, torch.Tensor) or z.dim() < 3:
        shape = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
        raise ValueError(f"z must be (B, C, H, W) (channel first, >= 1 spatial dim), got {shape}")
    if isinstance(codebook, torch.Tensor) and codebook.dim() == 2 and codebook.shape[1] != z.shape[1]:
        raise ValueError(f"codebook has {codebook.shape[1]} channels but z has C={z.shape[1]} (dim 1)")
    channels = z.shape[1]
    flat = z.detach().movedim(1, -1).reshape(-1, channels)
    idx, _ = nearest_code(flat, codebook.detach(), 1, backend)
    idx = idx[:, 0]
    spatial = z.shape[2:]
    z_q = F.embedding(idx, codebook).view(z.shape[0], *spatial, channels).movedim(-1, 1)
    codebook_loss = F.mse_loss(z_q, z.detach().to(z_q.dtype))
    commitment_loss = F.mse_loss(z, z_q.detach().to(z.dtype))
    quantized = z + (z_q - z).detach()
    return QuantizeOutput(quantized, idx.view(z.shape[0], *spatial), codebook_loss, commitment_loss)

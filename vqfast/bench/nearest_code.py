"""nearest_code's benchmark cases: the papers' codebooks and the issue targets, against
torch.cdist + argmin, the chunked addmm lookup and the GEMM alone (a lower bound)."""

import os
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import torch

from vqfast import _ext, reference
from vqfast.bench.case import OpCase, run_cases
from vqfast.ops import nearest_code
from vqfast.profiling import trace


@dataclass(frozen=True)
class NearestCodeCase(OpCase):
    n: int = 0
    d: int = 0
    num_codes: int = 0
    k: int = 1
    dtype: str = "float32"

    op = "nearest_code"

    sizes = (("N", "n"), ("D", "d"), ("K", "num_codes"), ("k", "k"))

    @property
    def baselines(self):
        pick = "argmin" if self.k == 1 else "topk"
        return (f"torch cdist+{pick}", f"torch chunked addmm+{pick}")

    def inputs(self, device) -> tuple:
        g = torch.Generator().manual_seed(0)
        dtype = getattr(torch, self.dtype)
        z = torch.randn(self.n, self.d, generator=g).to(device, dtype)
        cb = torch.randn(self.num_codes, self.d, generator=g).to(device, dtype)
        return z, cb

    def baseline_providers(self, device) -> Dict[str, Callable]:
        k = self.k
        cdist, chunked = self.baselines
        return {
            "reference": lambda z, cb: reference.nearest_code(z, cb, k),
            cdist: ((lambda z, cb: torch.cdist(z, cb).argmin(1)) if k == 1
                    else (lambda z, cb: torch.cdist(z, cb).topk(k, dim=1, largest=False).indices)),
            chunked: lambda z, cb: chunked_addmm(z, cb, k),
            "gemm only (z @ cb.T, lower bound)": lambda z, cb: z @ cb.t(),
        }

    def call(self, backend: str) -> Callable:
        return lambda z, cb: nearest_code(z, cb, self.k, backend=backend)

    def where(self, device) -> str:
        if device.type == "cpu" and hasattr(getattr(_ext, "_C", None), "nearest_code_cpu_isa"):
            return f"{device} (C++ variant {_ext._C.nearest_code_cpu_isa(self.d, self.k)})"
        return str(device)


def chunked_addmm(z: torch.Tensor, cb: torch.Tensor, k: int) -> torch.Tensor:
    """The strongest plain-torch lookup: ||c||^2 - 2 z c^T by addmm on row chunks sized
    to keep each (chunk, K) block near 16 MiB, then argmin/topk per chunk."""
    cn = cb.square().sum(1)
    chunk = max(1, 2**22 // cb.shape[0])
    out = torch.empty(z.shape[0], k, dtype=torch.int64, device=z.device)
    for i in range(0, z.shape[0], chunk):
        d = torch.addmm(cn, z[i : i + chunk], cb.t(), alpha=-2)
        out[i : i + chunk] = d.argmin(1, keepdim=True) if k == 1 else d.topk(k, dim=1, largest=False).indices
    return out


CASES = {
    "cpu": [
        NearestCodeCase("issue target: >= 3x cdist+argmin, faster than chunked", 65536, 64, 1024),
        NearestCodeCase("Performer VQ-VAE: 256x32 codebook, 64 images of 32x32 latents", 65536, 32, 256),
        NearestCodeCase("taming VQ-GAN: 128 codes of 256-d, 64 images of 8x8 latents", 4096, 256, 128),
        NearestCodeCase("top-4 for DSR-style anomaly generation", 16384, 128, 1024, k=4),
    ],
    "cuda": [
        NearestCodeCase("issue target: >= 4x cdist+argmin, within 1.3x of the GEMM", 262144, 256, 16384),
        NearestCodeCase("same shape in bfloat16", 262144, 256, 16384, dtype="bfloat16"),
        NearestCodeCase("CPU target shape", 65536, 64, 1024),
        NearestCodeCase("top-4 for DSR-style anomaly generation", 16384, 128, 1024, k=4),
    ],
    "quick": [
        NearestCodeCase("smoke test", 2048, 32, 256),
        NearestCodeCase("smoke test, top-4", 1024, 16, 128, k=4),
    ],
}


def run(device: torch.device, quick: bool = False, *, repeats: int = 10, max_time_s: float = 5.0,
        memory: bool = False, json_path: Optional[str] = None, trace_dir: Optional[str] = None,
        echo: Callable[[str], None] = print) -> List[dict]:
    """The device's cases (or the quick ones), with a torch.profiler trace of vqfast's
    auto path per case in ``trace_dir``."""
    cases = CASES["quick" if quick else device.type]
    if trace_dir:
        os.makedirs(trace_dir, exist_ok=True)
        for case in cases:
            z, cb = case.inputs(device)
            path = os.path.join(trace_dir, f"nearest_code_{case.n}x{case.d}x{case.num_codes}_k{case.k}.json")
            echo(trace(lambda: nearest_code(z, cb, case.k), path, device=device))
    return run_cases(cases, device, repeats=repeats, max_time_s=max_time_s, memory=memory, json_path=json_path,
                     echo=echo)

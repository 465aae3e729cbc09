"""omp's benchmark cases: SGFR-sized batches against sklearn's orthogonal_mp_gram and the
reference loop."""

from dataclasses import dataclass
from typing import Callable, Dict

import torch
from sklearn.linear_model import orthogonal_mp_gram

from vqfast.bench.case import OpCase, run_cases
from vqfast.ops import omp


@dataclass(frozen=True)
class OmpCase(OpCase):
    b: int = 0  # targets
    n: int = 0  # atoms
    d: int = 0  # feature dimension
    s: int = 0  # atoms per target
    dtype: str = "float64"

    op = "omp"
    warmup = 1
    baselines = ("sklearn orthogonal_mp_gram", "reference")

    sizes = (("B", "b"), ("N", "n"), ("D", "d"), ("s", "s"))

    def inputs(self, device) -> tuple:
        g = torch.Generator().manual_seed(0)
        X = torch.randn(self.d, self.n, generator=g, dtype=torch.float64)
        X = (X / X.norm(dim=0)).to(device, getattr(torch, self.dtype))
        Y = torch.randn(self.b, self.d, generator=g, dtype=torch.float64).to(device, getattr(torch, self.dtype))
        return X.T @ X, Y @ X, Y.square().sum(1)

    def baseline_providers(self, device) -> Dict[str, Callable]:
        # The baseline of the GPU targets too: on CUDA it includes copying G and XY to the host.
        return {"sklearn orthogonal_mp_gram": lambda G, XY, yn: orthogonal_mp_gram(
                    G.cpu().numpy(), XY.cpu().numpy().T, n_nonzero_coefs=self.s),
                "reference": self.call("reference")}

    def call(self, backend: str) -> Callable:
        return lambda G, XY, yn: omp(G, XY, self.s, y_norm_sq=yn, backend=backend)


CASES = {
    "full": [OmpCase("issue target: CPU >= 10x sklearn", 4096, 1024, 256, 17),
             OmpCase("same in float32", 4096, 1024, 256, 17, "float32")],
    "quick": [OmpCase("smoke test", 256, 128, 64, 8)],
}


def run(device: torch.device, quick: bool = False, *, repeats: int = 5, max_time_s: float = 20.0,
        echo: Callable[[str], None] = print):
    return run_cases(CASES["quick" if quick else "full"], device, repeats=repeats, max_time_s=max_time_s, echo=echo)

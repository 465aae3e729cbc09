"""code_at_rank's benchmark cases: DSR's feature-space anomalies (the code at a drawn
rank of each masked position's distance order) against the reference's full sort."""

from dataclasses import dataclass
from typing import Callable, Dict

import torch

from vqfast import reference
from vqfast.bench.case import OpCase, run_cases
from vqfast.ops import code_at_rank


@dataclass(frozen=True)
class CodeAtRankCase(OpCase):
    n: int = 0  # masked latent positions
    d: int = 0
    num_codes: int = 0
    dtype: str = "float32"

    op = "code_at_rank"
    baselines = ("reference",)

    sizes = (("N", "n"), ("D", "d"), ("K", "num_codes"))

    def inputs(self, device) -> tuple:
        g = torch.Generator().manual_seed(0)
        dtype = getattr(torch, self.dtype)
        z = torch.randn(self.n, self.d, generator=g).to(device, dtype)
        cb = torch.randn(self.num_codes, self.d, generator=g).to(device, dtype)
        return z, cb, torch.randint(0, self.num_codes, (self.n,), generator=g).to(device)

    def baseline_providers(self, device) -> Dict[str, Callable]:
        return {"reference": reference.code_at_rank,
                "torch cdist+sort": lambda z, cb, rank: torch.cdist(z, cb).sort(1).indices.gather(1, rank[:, None])}

    def call(self, backend: str) -> Callable:
        return lambda z, cb, rank: code_at_rank(z, cb, rank, backend=backend)


CASES = {"full": [CodeAtRankCase("DSR: a batch's masked positions, 4096 codes (paper_config)", 4096, 128, 4096),
                  CodeAtRankCase("DSR CPU-sized: 64 codes", 4096, 16, 64)],
         "quick": [CodeAtRankCase("smoke test", 256, 16, 64)]}


def run(device: torch.device, quick: bool = False, *, repeats: int = 10, max_time_s: float = 5.0,
        echo: Callable[[str], None] = print):
    return run_cases(CASES["quick" if quick else "full"], device, repeats=repeats, max_time_s=max_time_s, echo=echo)

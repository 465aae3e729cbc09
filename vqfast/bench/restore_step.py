"""restore_step's benchmark cases: one restoration step of M = batch x restorations
sequences (a token's NLL and, over the threshold, its resampling) against the reference."""

from dataclasses import dataclass
from typing import Callable, Dict

import torch

from vqfast import reference
from vqfast.bench.case import OpCase, run_cases
from vqfast.ops import restore_step


@dataclass(frozen=True)
class RestoreStepCase(OpCase):
    m: int = 0  # sequences
    v: int = 0  # codes
    dtype: str = "float32"

    op = "restore_step"
    baselines = ("reference",)

    sizes = (("M", "m"), ("V", "v"))

    def inputs(self, device) -> tuple:
        g = torch.Generator().manual_seed(0)
        logits = (torch.randn(self.m, self.v, generator=g) * 3).to(device, getattr(torch, self.dtype))
        current = torch.randint(0, self.v, (self.m,), generator=g).to(device)
        seeds = torch.randint(-2**62, 2**62, (self.m,), generator=g).to(device)
        return logits, current, seeds

    def baseline_providers(self, device) -> Dict[str, Callable]:
        # threshold 2: about half the tokens of these logits are resampled
        return {"reference": lambda logits, current, seeds: reference.restore_step(logits, current, 2.0, seeds, 7)}

    def call(self, backend: str) -> Callable:
        return lambda logits, current, seeds: restore_step(logits, current, 2.0, seeds, 7, backend=backend)


CASES = {"full": [RestoreStepCase("a GPT-2 pass: 8 images x 5 restorations, 512 codes", 40, 512),
                  RestoreStepCase("GPU batch: 32 images x 5 restorations, 16384 codes", 160, 16384)],
         "quick": [RestoreStepCase("smoke test", 10, 64)]}


def run(device: torch.device, quick: bool = False, *, repeats: int = 10, max_time_s: float = 5.0,
        echo: Callable[[str], None] = print):
    return run_cases(CASES["quick" if quick else "full"], device, repeats=repeats, max_time_s=max_time_s, echo=echo)

"""decode_attention's benchmark cases: one query a sequence against the KV cache (the
incremental priors' step), against the reference and torch's scaled_dot_product_attention."""

import math
from dataclasses import dataclass
from typing import Callable, Dict

import torch

from vqfast import reference
from vqfast.bench.case import OpCase, run_cases
from vqfast.ops import decode_attention


@dataclass(frozen=True)
class DecodeAttentionCase(OpCase):
    m: int = 0  # sequences
    heads: int = 0
    length: int = 0  # cached positions
    head_dim: int = 0
    dtype: str = "float32"

    op = "decode_attention"
    baselines = ("torch scaled_dot_product_attention",)

    sizes = (("M", "m"), ("H", "heads"), ("T", "length"), ("d", "head_dim"))

    def inputs(self, device) -> tuple:
        g = torch.Generator().manual_seed(0)
        shape = (self.m, self.heads, self.length, self.head_dim)
        dtype = getattr(torch, self.dtype)
        q = torch.randn(self.m, self.heads, self.head_dim, generator=g).to(device, dtype)
        return q, torch.randn(shape, generator=g).to(device, dtype), torch.randn(shape, generator=g).to(device, dtype)

    def baseline_providers(self, device) -> Dict[str, Callable]:
        scale = 1 / math.sqrt(self.head_dim)
        return {"reference": lambda q, k, v: reference.decode_attention(q, k, v, self.length),
                "torch scaled_dot_product_attention": lambda q, k, v: torch.nn.functional.scaled_dot_product_attention(
                    q.unsqueeze(2), k, v, scale=scale).squeeze(2)}

    def call(self, backend: str) -> Callable:
        return lambda q, k, v: decode_attention(q, k, v, self.length, backend=backend)


CASES = {"full": [DecodeAttentionCase("GPT-2 CPU target: 40 sequences, 8 heads, 256 cached tokens", 40, 8, 256, 32),
                  DecodeAttentionCase("gpt2-medium: 160 sequences, 16 heads, 64 cached tokens", 160, 16, 64, 64)],
         "quick": [DecodeAttentionCase("smoke test", 4, 2, 16, 16)]}


def run(device: torch.device, quick: bool = False, *, repeats: int = 10, max_time_s: float = 5.0,
        echo: Callable[[str], None] = print):
    return run_cases(CASES["quick" if quick else "full"], device, repeats=repeats, max_time_s=max_time_s, echo=echo)

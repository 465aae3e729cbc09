"""Pixel-wise restoration, the fast pass against the reference loop (the full prior after
every restored token), with GPT-2, Performer and PixelSNAIL priors; the restored token
grids must be identical across providers."""

from dataclasses import dataclass
from typing import Callable, Dict

import torch

from vqfast.models import GPT2Prior, GPT2PriorConfig, PerformerPrior, PerformerPriorConfig, PixelSNAIL, PixelSNAILConfig
from vqfast.ops._dispatch import resolve_backend
from vqfast.profiling import format_table, time_callable
from vqfast.reference.restoration import pixelwise_restore
from vqfast.reference.restore_step import stream_seeds


@dataclass(frozen=True)
class RestorationCase:
    label: str
    n_layer: int
    n_embd: int
    n_head: int
    grid: int  # token grid side
    num_codes: int
    batch: int  # images
    restorations: int
    restored: float = 0.2  # threshold: this quantile from the top of the NLLs of prior-sampled grids
    dtype: str = "float32"
    prior: str = "gpt2"  # or "performer" (FAVOR+, its recurrent step; 64 features per head) or "pixelsnail"
    # (n_layer pixel blocks of 4 gated residual blocks, n_embd channels, n_head attention heads)

    @property
    def title(self) -> str:
        name = {"gpt2": "GPT-2", "performer": "Performer", "pixelsnail": "PixelSNAIL"}[self.prior]
        return (f"Pixel-wise restoration  {name} {self.n_layer}L/{self.n_embd}/{self.n_head}h  {self.grid}x{self.grid} "
                f"grid  K={self.num_codes}  B={self.batch} S={self.restorations}  {self.dtype}  ({self.label}; the "
                "reference loop runs the full prior after every restored token)")

    def build(self, device):
        """(prior, tokens (B, g, g), threshold, image_seeds (B,)): a random prior in eval
        mode, grids sampled from it (a restoration pass with threshold -1 is ancestral
        sampling), and the threshold over which ``restored`` of their tokens lie."""
        torch.manual_seed(0)
        if self.prior == "gpt2":
            prior = GPT2Prior(GPT2PriorConfig(self.num_codes, self.grid, self.grid, self.n_layer, self.n_embd,
                                              self.n_head))
        elif self.prior == "performer":
            prior = PerformerPrior(PerformerPriorConfig(self.num_codes, self.grid, self.grid, self.n_layer, self.n_embd,
                                                        self.n_head))
        else:
            prior = PixelSNAIL(PixelSNAILConfig(self.num_codes, self.grid, self.grid, self.n_embd, self.n_layer,
                                                attn_heads=self.n_head))
        prior = prior.to(device, getattr(torch, self.dtype)).eval()
        seeds = torch.arange(self.batch, dtype=torch.int64, device=device)
        start = torch.zeros(self.batch, self.grid, self.grid, dtype=torch.int64, device=device)
        tokens, _ = prior.fast().restore(start, -1.0, seeds + 10**6)
        with torch.no_grad():
            nll = prior.nll(tokens).flatten().float()
        threshold = float(torch.quantile(nll.cpu().double(), 1 - self.restored))
        return prior, tokens, threshold, seeds


RESTORATION_CASES = {
    "cpu": [RestorationCase("issue target: fast >= 30x reference, identical tokens", 4, 256, 8, 16, 512, 8, 5),
            RestorationCase("Performer target: fast >= 30x reference, identical tokens", 4, 256, 8, 16, 512, 8, 5,
                            prior="performer"),
            RestorationCase("PixelSNAIL target: fast >= 20x reference, identical tokens", 4, 128, 4, 16, 512, 8, 5,
                            prior="pixelsnail")],
    "cuda": [RestorationCase("issue target: <= 10 ms per image", 24, 1024, 16, 8, 512, 32, 5),
             RestorationCase("CPU target shape", 4, 256, 8, 16, 512, 8, 5),
             RestorationCase("CPU target shape", 4, 128, 4, 16, 512, 8, 5, prior="pixelsnail")],
    "quick": [RestorationCase("smoke test", 2, 64, 4, 6, 64, 2, 2),
              RestorationCase("smoke test", 2, 64, 4, 6, 64, 2, 2, prior="performer"),
              RestorationCase("smoke test", 1, 16, 2, 6, 64, 2, 2, prior="pixelsnail")],
}


def restoration_providers(case: RestorationCase, prior, threshold: float) -> Dict[str, Callable]:
    """name -> fn(tokens, image_seeds) -> restored (B, S, g, g): the reference loop and
    the fast pass with every available restore_step/decode_attention backend."""
    def ref(tokens, image_seeds):
        seeds = stream_seeds(image_seeds, case.restorations)
        return torch.stack([torch.stack([pixelwise_restore(prior, tokens[n], threshold, int(seeds[n, j]))[0]
                                         for j in range(case.restorations)]) for n in range(tokens.shape[0])])

    def fast(backend):
        f = prior.fast()  # one runner per provider: its first call captures the CUDA graph, later ones replay it
        f.backend = backend

        def run(tokens, image_seeds):
            seeds = stream_seeds(image_seeds, case.restorations).flatten()
            out, _ = f.restore(tokens.repeat_interleave(case.restorations, 0), threshold, seeds, op_backend=backend)
            return out.view(tokens.shape[0], case.restorations, *tokens.shape[1:])
        return run

    device = next(prior.parameters()).device
    providers = {"reference loop": ref}
    for backend in ("cpu", "cuda", "triton"):
        try:
            resolve_backend("restore_step", backend, device)
        except RuntimeError:
            continue
        if backend == "triton" and device.type == "cpu":
            continue  # the interpreter is a correctness tool, not a speed path
        providers[f"vqfast fast pass ({backend})"] = fast(backend)
    return providers


def run(device: torch.device, quick: bool = False, repeats: int = 3, echo: Callable[[str], None] = print,
                    cases=None):
    """Reference vs fast Pixel-wise restoration, one table per case (default: the
    built-in cases for the device), with the fraction of tokens restored and whether the
    token grids are identical."""
    if cases is None:
        cases = RESTORATION_CASES["quick" if quick else device.type if device.type in ("cpu", "cuda") else "cpu"]
    for case in cases:
        prior, tokens, threshold, seeds = case.build(device)
        results, timings = {}, []
        for name, fn in restoration_providers(case, prior, threshold).items():
            results[name] = fn(tokens, seeds)
            slow = name.startswith("reference")
            timings.append(time_callable(lambda: fn(tokens, seeds), name=name, device=device, warmup=0 if slow else 1,
                                         repeats=1 if slow else repeats))
        first = next(iter(results.values()))
        same = all(torch.equal(first, r) for r in results.values())
        restored = float((first != tokens[:, None]).float().mean())
        echo(format_table(timings, baselines=[timings[0].name], title=f"{case.title} on {device}") +
             f"\n  tokens restored: {restored:.1%}; identical token grids across providers: {same}\n")

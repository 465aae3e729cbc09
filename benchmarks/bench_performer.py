"""The Performer prior side by side: (1) Pixel-wise restoration, the reference loop (the
full prior after every restored token) against the recurrent one-pass restoration, with
identical tokens checked (vqfast.bench.restoration's Performer case: 4 layers, 256 wide, 8 heads,
16 x 16 grids, B = 8, S = 5, ~20 % restored); (2) the peak extra memory of one training
step (forward + backward) against the grid size, next to GPT-2's softmax attention.

    python benchmarks/bench_performer.py [--quick]
"""

import argparse

import torch

from vqfast.bench.restoration import CASES as RESTORATION_CASES, run as run_restoration
from vqfast.models import GPT2Prior, GPT2PriorConfig, PerformerPrior, PerformerPriorConfig
from vqfast.profiling import peak_extra_memory


def training_memory(sides, n_layer: int = 2, n_embd: int = 64, batch: int = 4) -> None:
    print(f"\npeak extra memory of one training step (forward + backward), {n_layer} layers x {n_embd}, batch {batch}")
    print("| grid | tokens | Performer (FAVOR+, 64 features) | GPT-2 (softmax) |")
    print("|---|---|---|---|")
    for side in sides:
        row = []
        for build in (lambda: PerformerPrior(PerformerPriorConfig(64, side, side, n_layer, n_embd, 8, dropout=0.0)),
                      lambda: GPT2Prior(GPT2PriorConfig(64, side, side, n_layer, n_embd, 8, dropout=0.0))):
            torch.manual_seed(0)
            prior = build().train()
            grids = torch.randint(0, 64, (batch, side, side))

            def step():
                prior.zero_grad(set_to_none=True)
                prior.training_loss(grids)["loss"].backward()

            step()  # warm-up: lazy initialisation would count otherwise
            row.append(peak_extra_memory(step, "cpu"))
        print(f"| {side}x{side} | {side * side} | " + " | ".join(f"{b / 2**20:.1f} MiB" for b in row) + " |", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small shapes (a smoke test)")
    args = p.parse_args()
    device = torch.device("cpu")
    if args.quick:
        cases = [c for c in RESTORATION_CASES["quick"] if c.prior == "performer"]
    else:
        cases = [c for c in RESTORATION_CASES["cpu"] if c.prior == "performer"]
    run_restoration(device, quick=args.quick, repeats=3, cases=cases)
    training_memory((8, 16) if args.quick else (16, 32, 64))


if __name__ == "__main__":
    main()

"""Masked-context scoring (the density/restoration paper's eq. 20) against the GPT-2
prior's Sample-wise and Pixel-wise scorers at the same grid size, side by side: whole
score calls per image (encode, prior passes, decode and residual maps included), the
restoration passes alone, and the masked scorers' reference loops (fast == reference is
printed too).

    python benchmarks/bench_masked_context.py [--size 128 --batch 8 --restorations 5 --percentile 80
                                               --passes 4 --marker masked|gpt2
                                               --prior-precision float32|bfloat16]

Models: the VQ-VAE of the Performer paper at --size (16 x 16 tokens at 128, 256 codes),
GPT-2 and masked priors of the same sizes (vqfast's defaults), random weights (timing does
not depend on them) but the codebook drawn from the batch's encodings, as a first training
batch sets it (a random codebook puts random images on a handful of codes); thresholds at
--percentile of each prior's NLLs on the batch's grids, so about (100 - percentile) % of
the tokens are unusual / restored. --marker gpt2 marks u by the GPT-2 prior's NLLs (one
causal forward) instead of the masked prior's neighbourhood NLLs (stride^2 forwards).
--prior-precision runs every scorer's priors (GPT-2 and masked; thresholds included) in
that precision, so the ratios compare like with like; the reference loops too. The table of
the restoration passes alone always has the float32 passes as well, so a bfloat16 run
compares against both of Pixel-wise's settings in one run.
"""

import argparse

import torch

from vqfast.models import VQVAE, GPT2Prior, GPT2PriorConfig, MaskedPriorConfig, MaskedTokenPrior, VQVAEConfig
from vqfast.profiling import format_table, time_callable
from vqfast.scorers import (MaskedContextScorer, MaskedRestorationScorer, PixelWiseScorer, SampleWiseScorer,
                            nll_threshold)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--restorations", type=int, default=5)
    p.add_argument("--passes", type=int, default=4)
    p.add_argument("--percentile", type=float, default=80.0)
    p.add_argument("--marker", choices=["masked", "gpt2"], default="masked", help="what marks u")
    p.add_argument("--prior-precision", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-reference", action="store_true", help="skip the reference loops (slow)")
    args = p.parse_args()
    torch.manual_seed(0)
    vq = VQVAE(VQVAEConfig(in_channels=1))
    images = torch.rand(args.batch, 1, args.size, args.size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        vq(images)  # training mode: the codebook from these encodings
    vq.eval()
    tokens = vq.encode_indices(images)
    h, w = tokens.shape[1:]
    gpt2 = GPT2Prior(GPT2PriorConfig(num_codes=vq.config.num_codes, height=h, width=w)).eval()
    masked = MaskedTokenPrior(MaskedPriorConfig(num_codes=vq.config.num_codes, height=h, width=w)).eval()
    pp = args.prior_precision
    t_ar = nll_threshold(gpt2, tokens, args.percentile, precision=pp)
    t_mask = nll_threshold(masked, tokens, args.percentile, precision=pp)
    marker = gpt2 if args.marker == "gpt2" else None
    t_mark = t_ar if marker is not None else t_mask  # u: the tokens over the marking prior's threshold
    s = args.restorations
    scorers = {
        "Sample-wise (GPT-2)": SampleWiseScorer(vq, gpt2, t_ar, prior_precision=pp),
        "Pixel-wise (GPT-2, fast)": PixelWiseScorer(vq, gpt2, t_ar, restorations=s, prior_precision=pp),
        "masked Sample-wise": MaskedContextScorer(vq, masked, t_mask, t_mark, marker, prior_precision=pp),
        "masked restoration": MaskedRestorationScorer(vq, masked, t_mark, passes=args.passes, marker=marker,
                                                      restorations=s, prior_precision=pp),
    }
    timings = [time_callable(lambda sc=sc: sc.score(images), name=name, repeats=args.repeats)
               for name, sc in scorers.items()]
    seeds = scorers["masked restoration"].image_seeds(images)

    def restorers(precision):
        ta = nll_threshold(gpt2, tokens, args.percentile, precision=precision)
        tm = ta if marker is not None else nll_threshold(masked, tokens, args.percentile, precision=precision)
        return {f"Pixel-wise (GPT-2, fast) pass, {precision}": PixelWiseScorer(vq, gpt2, ta, restorations=s,
                                                                               prior_precision=precision),
                f"masked restoration pass, {precision}": MaskedRestorationScorer(
                    vq, masked, tm, passes=args.passes, marker=marker, restorations=s, prior_precision=precision)}

    # the float32 passes always, so a bfloat16 run also compares against Pixel-wise's default
    pass_scorers = {**restorers("float32"), **(restorers(pp) if pp != "float32" else {})}
    passes = [time_callable(lambda sc=sc: sc.restore(tokens, seeds), name=n, repeats=args.repeats)
              for n, sc in pass_scorers.items()]
    unusual = scorers["masked Sample-wise"].unusual(tokens).float().mean()
    lines = []
    if not args.no_reference:
        slow = {"masked Sample-wise (reference loops)": MaskedContextScorer(vq, masked, t_mask, t_mark, marker,
                                                                            fast=False, prior_precision=pp),
                "masked restoration (reference loops)": MaskedRestorationScorer(vq, masked, t_mark, passes=args.passes,
                                                                               marker=marker, restorations=s,
                                                                               fast=False, prior_precision=pp)}
        for name, sc in slow.items():
            timings.append(time_callable(lambda sc=sc: sc.score(images), name=name, repeats=1, warmup=0))
        fast_score = scorers["masked Sample-wise"].score(images).pred_score
        ref_score = slow["masked Sample-wise (reference loops)"].score(images).pred_score
        same = torch.equal(scorers["masked restoration"].restore(tokens, seeds),
                           slow["masked restoration (reference loops)"].restore(tokens, seeds))
        lines = [f"  masked Sample-wise max |fast - reference| score: {float((fast_score - ref_score).abs().max()):.2e}",
                 f"  masked restoration: identical restored tokens: {same}"]
    print(format_table(timings, baselines=["Pixel-wise (GPT-2, fast)", "Sample-wise (GPT-2)"],
                       title=f"masked-context scoring  B={args.batch} 1x{args.size}x{args.size}  {h}x{w} tokens  "
                             f"S={s}  passes={args.passes}  u marked by {args.marker}  priors in {pp}  "
                             f"{100 * float(unusual):.0f} % unusual  on cpu "
                             f"({torch.get_num_threads()} threads); times per batch"))
    print(format_table(passes, baselines=[f"Pixel-wise (GPT-2, fast) pass, {q}" for q in dict.fromkeys(("float32", pp))],
                       title="the restoration passes alone (no encode, decode or residual maps)"))
    print("  per image: " + ", ".join(f"{t.name} {1e3 * t.median_s / args.batch:.1f} ms" for t in timings))
    for line in lines:
        print(line)


if __name__ == "__main__":
    main()

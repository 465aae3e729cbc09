"""glibc malloc left alone against ``vqfast.tune_cpu_allocator()`` (what the command line
sets for itself): time, page faults and peak memory of training steps and whole scorers.

    python benchmarks/cpu_allocator.py                 # every workload, 3 timed calls each
    python benchmarks/cpu_allocator.py --only vqgan_step,light --repeats 5

Each workload runs twice, each time in a fresh process (the setting is process-wide, and a
process's allocation history decides what malloc reuses): allocator left alone, then tuned.
Random weights (timing does not need trained ones), one warm-up call. Workloads: training
steps (forward, backward, Adam) of the default VQ-VAE and VQ-GAN (LPIPS on, with random
weights if none are installed; the GAN starts later in training) on 16 images of 128 x 128
and of the CPU-target GPT-2 prior (4 layers, 256 wide) on 32 grids of 16 x 16; whole scorers
(``score``) on 8 images of 128 x 128 as in ``vqfast bench --only scorers``: Pixel-wise and
Light-Pixel-wise (S = 5, bfloat16 decoding), Regenerative, and masked restoration with its
defaults. Printed per row: median time, minor page faults per call, the process's peak
resident memory; ratios last (left alone / tuned, > 1: tuning faster).
"""

import argparse
import multiprocessing
import resource
import warnings

from vqfast.profiling import minor_page_faults, time_callable

WORKLOADS = ("vqvae_step", "vqgan_step", "gpt2_step", "pixel", "light", "regenerative", "masked")


def _training_step(model, batch):
    import torch

    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    model.train()

    def step():
        opt.zero_grad(set_to_none=True)
        model.training_loss(batch)["loss"].backward()
        opt.step()

    return step


def _scorer(kind):
    import torch

    from vqfast.models import MaskedPriorConfig, MaskedTokenPrior, VQVAE, VQVAEConfig
    from vqfast.models.gpt2_prior import GPT2Prior, GPT2PriorConfig
    from vqfast.scorers import MaskedRestorationScorer, RegenerativeScorer
    from vqfast.scorers.restoration import LightPixelWiseScorer, PixelWiseScorer, nll_threshold

    vq = VQVAE(VQVAEConfig())
    images = torch.rand(8, 3, 128, 128)
    with torch.no_grad():  # the codebook from these images' encodings, as in vqfast bench
        vq(images)
    vq.eval()
    tokens = vq.encode_indices(images)
    bf16 = {"decode_precision": "bfloat16"}
    if kind == "regenerative":
        scorer = RegenerativeScorer(vq)
    elif kind == "masked":
        masked = MaskedTokenPrior(MaskedPriorConfig(256, 16, 16, 4, 256, 8)).eval()
        scorer = MaskedRestorationScorer(vq, masked, nll_threshold(masked, tokens, 80))
    else:
        prior = GPT2Prior(GPT2PriorConfig(256, 16, 16, 4, 256, 8)).eval()
        cls = PixelWiseScorer if kind == "pixel" else LightPixelWiseScorer
        scorer = cls(vq, prior, nll_threshold(prior, tokens, 80), **bf16)
    return lambda: scorer.score(images)


def build(name):
    import torch

    from vqfast.models import VQGAN, VQVAE, VQGANConfig, VQVAEConfig
    from vqfast.models.gpt2_prior import GPT2Prior, GPT2PriorConfig

    torch.manual_seed(0)
    if name == "vqvae_step":
        return "VQ-VAE training step (16 images)", _training_step(VQVAE(VQVAEConfig()), torch.rand(16, 3, 128, 128))
    if name == "vqgan_step":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = VQGAN(VQGANConfig())
        return "VQ-GAN training step (16 images, LPIPS)", _training_step(model, torch.rand(16, 3, 128, 128) * 2 - 1)
    if name == "gpt2_step":
        prior = GPT2Prior(GPT2PriorConfig(256, 16, 16, 4, 256, 8))
        return "GPT-2 prior training step (32 grids)", _training_step(prior, torch.randint(0, 256, (32, 16, 16)))
    titles = {"pixel": "Pixel-wise (S=5, bf16 decode), 8 images", "light": "Light-Pixel-wise (S=5, bf16 decode), 8 images",
              "regenerative": "Regenerative, 8 images", "masked": "masked restoration (defaults), 8 images"}
    return titles[name], _scorer(name)


def run(name, tuned, repeats):
    """(title, median s, minor faults per call, peak RSS bytes, tuned?) in this process."""
    import vqfast

    took = vqfast.tune_cpu_allocator() if tuned else False
    title, fn = build(name)
    fn()  # the warm-up, outside the page-fault count
    before = minor_page_faults()
    timing = time_callable(fn, warmup=0, repeats=repeats)
    faults = (minor_page_faults() - before) // repeats
    return title, timing.median_s, faults, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, took


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default=",".join(WORKLOADS), help="comma-separated subset of " + ",".join(WORKLOADS))
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    names = args.only.split(",")
    unknown = set(names) - set(WORKLOADS)
    if unknown:
        p.error(f"--only takes {','.join(WORKLOADS)}, got {','.join(sorted(unknown))}")
    spawn = multiprocessing.get_context("spawn")
    rows, ratios = [], []
    print(f"{'workload':<48} {'malloc':<12} {'median':>10} {'faults/call':>12} {'peak RSS':>10}")
    for name in names:
        results = {}
        for tuned in (False, True):
            with spawn.Pool(1) as pool:
                title, median, faults, rss, took = pool.apply(run, (name, tuned, args.repeats))
            if tuned and not took:
                raise SystemExit("tune_cpu_allocator() did not take effect here (see vqfast info)")
            results[tuned] = (median, rss)
            print(f"{title:<48} {'tuned' if tuned else 'left alone':<12} {median * 1e3:>8.0f} ms "
                  f"{faults:>12,} {rss / 2**30:>8.2f} GiB", flush=True)
        (t0, r0), (t1, r1) = results[False], results[True]
        ratios.append(f"{title}: {t0 / t1:.2f}x ({t0 * 1e3:.0f} -> {t1 * 1e3:.0f} ms), peak memory {r1 / r0:.2f}x")
    print("\nleft alone / tuned (> 1: tuning faster)")
    print("\n".join(ratios))


if __name__ == "__main__":
    main()

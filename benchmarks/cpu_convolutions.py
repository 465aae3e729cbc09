"""How the CPU's convolution stacks run fastest: the numbers behind
``vqfast.models.base.cpu_conv``, through which VQAutoencoder.encode and .decode call their
encoder and decoder.

    python benchmarks/cpu_convolutions.py             # default VQ-VAE and VQ-GAN, 8 images of 128 x 128
    python benchmarks/cpu_convolutions.py --batch 16 --repeats 3

For each model, in one run:
- chunks, first and in a fresh process per model (a process's allocation history decides
  whether large buffers come back as fresh, page-faulting memory): ``decode_grids`` of 40
  grids (a scorer's batch of 8 images x S = 5 restorations) in float32 and bfloat16, and
  ``encode`` of 2 x batch images, with cpu_conv's images per call set to 1, 2, 4, 8 and
  "all" (one call); each row with its minor page faults per call;
- layout: the encoder and decoder modules called on channels-first (NCHW) and on
  channels-last (NHWC) inputs (inference, no grad), and a whole training step
  (``training_loss`` forward and backward) with encode/decode's conversion off and on.
- the feature scorers' backbone (wide_resnet50_2, layers 1-3, random weights) on 8 images of
  256 x 256, fresh process: one channels-first call on the whole batch (the path before
  channels-last and chunks) against ``Backbone.forward``.
The VQ-GAN runs without LPIPS and the discriminator (random weights here, and the GAN
starts late in training anyway), as in ``vqfast bench``. The outputs' largest difference
and whether the tokens agree are printed with the times; ratios last (> 1: channels-last,
or the chunks, faster).
"""

import argparse
import multiprocessing
import warnings
from unittest import mock

import torch

from vqfast.models import VQGAN, VQVAE, VQGANConfig, VQVAEConfig
from vqfast.models import base
from vqfast.profiling import format_table, minor_page_faults, time_callable

CHUNKS = (1, 2, 4, 8, None)  # images per call; None: all in one call


def model(i):
    with warnings.catch_warnings():  # LPIPS weights are irrelevant here: it is switched off
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        return [("VQ-VAE (default)", lambda: VQVAE(VQVAEConfig())),
                ("VQ-GAN (default, no LPIPS / GAN)",
                 lambda: VQGAN(VQGANConfig(perceptual_weight=0.0, adversarial=False)))][i]


def nhwc(t):
    return t.contiguous(memory_format=torch.channels_last)


def timed(fn, name, repeats):
    """time_callable(fn) after one warm-up call, and a line with its minor page faults per
    call (the warm-up's included)."""
    before = minor_page_faults()
    timing = time_callable(fn, name=name, warmup=1, repeats=repeats)
    return timing, f"{name}: {(minor_page_faults() - before) // (timing.repeats + 1)} minor faults per call"


def chunk_timings(i, args):
    """(table, ratio lines) of the images-per-call cases of model i; run in a fresh process."""
    title, make = model(i)
    m = make().eval()
    k, h = m.vq.codebook.shape[0], args.size // m.downsample_factor
    grids = torch.randint(0, k, (40, h, h))
    images = torch.rand(2 * args.batch, 3, args.size, args.size) * 2 - 1
    cases = [(f"decode_grids 40 {p}", lambda p=p: m.decode_grids(grids, p, distinct=False)) for p in ("float32", "bfloat16")]
    cases.append((f"encode {2 * args.batch}", lambda: m.encode(images)))
    timings, faults, ratios = [], [], []
    with torch.no_grad():
        for case, fn in cases:
            by = {}
            for chunk in CHUNKS:
                name = f"{case}, chunk {chunk or 'all'}"
                with mock.patch.object(base.cpu_conv, "__defaults__", (chunk or 10**9,)):
                    timing, line = timed(fn, name, args.repeats)
                timings.append(timing)
                faults.append(line)
                by[chunk] = timings[-1].median_s
            ratios.append(f"{title} {case}, one call / chunks of " + ", ".join(
                f"{c}: {by[None] / by[c]:.2f}x" for c in CHUNKS if c) + f" (one call {1e3 * by[None]:.0f} ms)")
    table = format_table(timings, title=f"{title}, CPU, images per call (channels-last), fresh process")
    return table + "\n" + "\n".join(faults) + "\n", ratios


def backbone_timings(args):
    """(table, ratio line) of the backbone's old and new CPU paths; run in a fresh process."""
    from vqfast.models import Backbone

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bb = Backbone("wide_resnet50_2", layers=(1, 2, 3))
    x = torch.rand(8, 3, 256, 256)
    old = lambda: bb._features((x - bb.mean) / bb.std, (1, 2, 3))  # noqa: E731
    new, ref = bb(x), old()
    gap = max(float((new[i] - ref[i]).abs().amax() / ref[i].abs().amax()) for i in (1, 2, 3))
    timings, faults = [], []
    for name, fn in (("one call, NCHW", old), ("Backbone.forward (NHWC, chunks of 4)", lambda: bb(x))):
        timing, line = timed(fn, name, args.repeats)
        timings.append(timing)
        faults.append(line)
    table = format_table(timings, title="wide_resnet50_2 layers 1-3, 8 images of 256 x 256, CPU, fresh process")
    ratio = timings[0].median_s / timings[1].median_s
    return (table + "\n" + "\n".join(faults) + f"\nlargest difference / largest feature: {gap:.1e}\n",
            [f"wide_resnet50_2 backbone, one NCHW call / Backbone.forward: {ratio:.2f}x "
             f"({1e3 * timings[0].median_s:.0f} -> {1e3 * timings[1].median_s:.0f} ms)"])


def layout_timings(i, args):
    title, make = model(i)
    m = make()
    x = torch.rand(args.batch, 3, args.size, args.size) * 2 - 1
    m.eval()
    with torch.no_grad():
        z_nchw, z_nhwc = m.encoder(x), m.encoder(nhwc(x))
        zq = m.vq(z_nchw).quantized.contiguous()
        tok_equal = torch.equal(m.vq(z_nchw).indices, m.vq(z_nhwc).indices)
        y_nchw, y_nhwc = m.decoder(zq), m.decoder(nhwc(zq))
    print(f"{title}: encoder outputs differ by at most {(z_nchw - z_nhwc).abs().max():.2e}, "
          f"tokens equal: {tok_equal}; decoder outputs by {(y_nchw - y_nhwc).abs().max():.2e}")
    timings = []
    with torch.no_grad():
        for part, module, inp in (("encoder", m.encoder, x), ("decoder", m.decoder, zq)):
            for layout, t in (("NCHW", inp), ("NHWC", nhwc(inp))):
                timings.append(time_callable(lambda module=module, t=t: module(t), name=f"{part} {layout}",
                                             warmup=1, repeats=args.repeats))
    m.train()

    def step():
        m.zero_grad(set_to_none=True)
        m.training_loss(x)["loss"].backward()

    with mock.patch.object(base, "cpu_conv", lambda module, t, chunk=0: module(t)):
        timings.append(time_callable(step, name="training step NCHW", warmup=1, repeats=args.repeats))
    timings.append(time_callable(step, name="training step NHWC", warmup=1, repeats=args.repeats))
    print(format_table(timings, title=f"{title}, CPU, layout (batch {args.batch})") + "\n")
    by = {t.name: t.median_s for t in timings}
    return [f"{title} {part}, NCHW / NHWC: {by[part + ' NCHW'] / by[part + ' NHWC']:.2f}x "
            f"({1e3 * by[part + ' NCHW']:.0f} -> {1e3 * by[part + ' NHWC']:.0f} ms)"
            for part in ("encoder", "decoder", "training step")]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"batch {args.batch} x 3 x {args.size} x {args.size}")
    ratios = []
    spawn = multiprocessing.get_context("spawn")
    for i in range(2):
        with spawn.Pool(1) as pool:
            table, lines = pool.apply(chunk_timings, (i, args))
        print(table)
        ratios += lines
        ratios += layout_timings(i, args)
    with spawn.Pool(1) as pool:
        table, lines = pool.apply(backbone_timings, (args,))
    print(table)
    ratios += lines
    print("Ratios (> 1: channels-last, or the chunks, faster)")
    print("\n".join(ratios))


if __name__ == "__main__":
    main()

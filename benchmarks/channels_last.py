"""Channels-last (NHWC) against channels-first (NCHW) convolutions on the CPU: the numbers
behind ``vqfast.models.base.cpu_channels_last``, which VQAutoencoder.encode and .decode
apply to their inputs.

    python benchmarks/channels_last.py                # default VQ-VAE and VQ-GAN, 8 images of 128 x 128
    python benchmarks/channels_last.py --batch 16 --repeats 5

For each model, in one run: the encoder and decoder modules called on NCHW and on NHWC
inputs (inference, no grad), and a whole training step (``training_loss`` forward and
backward) with the layout conversion of encode/decode switched off and on. The VQ-GAN
runs without LPIPS and the discriminator (random weights here, and the GAN starts late in
training anyway), as in ``vqfast bench``. The outputs' largest difference and whether the
tokens agree are printed with the times; ratios (NCHW / NHWC, > 1 means channels-last is
faster) last.
"""

import argparse
import warnings
from unittest import mock

import torch

from vqfast.models import VQGAN, VQVAE, VQGANConfig, VQVAEConfig
from vqfast.models import base
from vqfast.profiling import format_table, time_callable


def models():
    with warnings.catch_warnings():  # LPIPS weights are irrelevant here: it is switched off
        warnings.simplefilter("ignore")
        return [("VQ-VAE (default)", VQVAE(VQVAEConfig())),
                ("VQ-GAN (default, no LPIPS / GAN)", VQGAN(VQGANConfig(perceptual_weight=0.0, adversarial=False)))]


def nhwc(t):
    return t.contiguous(memory_format=torch.channels_last)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    torch.manual_seed(args.seed)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"batch {args.batch} x 3 x {args.size} x {args.size}")
    ratios = []
    for title, model in models():
        x = torch.rand(args.batch, 3, args.size, args.size) * 2 - 1
        model.eval()
        with torch.no_grad():
            z_nchw, z_nhwc = model.encoder(x), model.encoder(nhwc(x))
            zq = model.vq(z_nchw).quantized.contiguous()
            tok_equal = torch.equal(model.vq(z_nchw).indices, model.vq(z_nhwc).indices)
            y_nchw, y_nhwc = model.decoder(zq), model.decoder(nhwc(zq))
        print(f"{title}: encoder outputs differ by at most {(z_nchw - z_nhwc).abs().max():.2e}, "
              f"tokens equal: {tok_equal}; decoder outputs by {(y_nchw - y_nhwc).abs().max():.2e}")

        timings = []
        with torch.no_grad():
            for part, module, inp in (("encoder", model.encoder, x), ("decoder", model.decoder, zq)):
                for layout, t in (("NCHW", inp), ("NHWC", nhwc(inp))):
                    timings.append(time_callable(lambda m=module, t=t: m(t), name=f"{part} {layout}",
                                                 warmup=1, repeats=args.repeats))

        model.train()

        def step():
            model.zero_grad(set_to_none=True)
            model.training_loss(x)["loss"].backward()

        with mock.patch.object(base, "cpu_channels_last", lambda t: t):
            timings.append(time_callable(step, name="training step NCHW", warmup=1, repeats=args.repeats))
        timings.append(time_callable(step, name="training step NHWC", warmup=1, repeats=args.repeats))
        print(format_table(timings, title=f"{title}, CPU") + "\n")
        by = {t.name: t.median_s for t in timings}
        for part in ("encoder", "decoder", "training step"):
            ratios.append(f"{title} {part}: {by[part + ' NCHW'] / by[part + ' NHWC']:.2f}x "
                          f"({1e3 * by[part + ' NCHW']:.0f} -> {1e3 * by[part + ' NHWC']:.0f} ms)")
    print("NCHW / NHWC time (> 1: channels-last faster)")
    print("\n".join(ratios))


if __name__ == "__main__":
    main()

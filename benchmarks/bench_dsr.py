"""DSR side by side: (1) stage 2's feature-space anomaly generation, the batched path
(vqfast.models.dsr.feature_anomalies: masked positions only, code_at_rank) against the
authors' per-image loop (float32 distances by matmul, torch.topk, a draw per position)
and against vqfast's reference loop, with the output checked equal to the reference;
(2) one training step per stage; (3) scoring time per image.

    python benchmarks/bench_dsr.py [--quick]

Anomaly generation shape (the issue's): batch 8, 1/4-resolution latents 64 x 64
(256 x 256 images), K = 4096 codes of 128, Perlin masks with half the images clean
(vqfast.data.DSRAnomalies' rule), strengths U[0.2, 1].
"""

import argparse
import time

import torch

from vqfast.data import perlin_mask
from vqfast.models import DSR, DSRConfig
from vqfast.models.dsr import feature_anomalies, paper_config
from vqfast.ops import code_at_rank
from vqfast.reference import dsr_anomalies


def authors_loop(z, quantized, codebook, mask, strength):
    """The authors' generate_fake_anomalies_joined, per image, as they wrote it
    (torch.randint draws, so its output is not comparable token for token)."""
    b, d, h, w = z.shape
    k_codes = codebook.shape[0]
    out = []
    for i in range(b):
        flat = z[i].permute(1, 2, 0).reshape(-1, d)
        dist = (flat ** 2).sum(1, keepdim=True) + (codebook ** 2).sum(1) - 2 * flat @ codebook.T
        topk = max(1, min(int(float(strength[i]) * k_codes) + 1, k_codes - 1))
        _, idx = torch.topk(dist, topk, dim=1, largest=False)
        idx = idx[:, int(k_codes * 0.05):]
        pick = torch.randint(idx.shape[1], (idx.shape[0],))
        codes = codebook[idx[torch.arange(idx.shape[0]), pick]].view(h, w, d).permute(2, 0, 1)
        m = dsr_anomalies.pooled_mask(mask[i:i + 1], (h, w))[0]
        out.append(m * codes + (1 - m) * quantized[i])
    return torch.stack(out)


def best_of(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def anomaly_generation(b, side, k, d, repeats):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(b, d, side, side, generator=g)
    codebook = torch.randn(k, d, generator=g)
    q = codebook[torch.randint(0, k, (b * side * side,), generator=g)].view(b, side, side, d).permute(0, 3, 1, 2)
    image = 4 * side
    masks = [perlin_mask(image, image, torch.Generator().manual_seed(i)) if i % 2 else torch.zeros(1, image, image)
             for i in range(b)]
    mask = torch.stack(masks)
    strength = 0.2 + 0.8 * torch.rand(b, generator=g)
    seeds = torch.randint(0, 2**40, (b,), generator=g)
    frac = float(dsr_anomalies.pooled_mask(mask, (side, side)).mean())
    fast = feature_anomalies(z, q, codebook, mask, strength, seeds)
    ref = dsr_anomalies.feature_anomalies(z, q, codebook, mask, strength, seeds)
    differ = int((fast != ref).any(1).sum())
    exact = torch.equal(feature_anomalies(z.double(), q.double(), codebook.double(), mask, strength, seeds),
                        dsr_anomalies.feature_anomalies(z.double(), q.double(), codebook.double(), mask, strength, seeds))
    t_fast = best_of(lambda: feature_anomalies(z, q, codebook, mask, strength, seeds), repeats)
    t_authors = best_of(lambda: authors_loop(z, q, codebook, mask, strength), max(1, repeats // 2))
    t_ref = best_of(lambda: dsr_anomalies.feature_anomalies(z, q, codebook, mask, strength, seeds), 1)
    flat = z.permute(0, 2, 3, 1).reshape(-1, d)
    every = torch.randint(0, k, (flat.shape[0],), generator=g)
    t_all = best_of(lambda: code_at_rank(flat, codebook, every), repeats)  # what CUDA's rule does: every position
    print(f"\nfeature-space anomaly generation: batch {b}, latents {side}x{side}, K={k}, D={d}, "
          f"{frac:.1%} of positions inside the pooled masks")
    print("| provider | time | vs authors' loop |")
    print("|---|---|---|")
    print(f"| authors' per-image loop (float32 matmul + topk) | {t_authors * 1e3:.1f} ms | 1.00 |")
    print(f"| vqfast reference loop (float64 cdist + stable sort) | {t_ref * 1e3:.1f} ms | {t_authors / t_ref:.2f}x |")
    print(f"| vqfast batched (masked rows, code_at_rank) | {t_fast * 1e3:.1f} ms | **{t_authors / t_fast:.1f}x** |")
    print(f"| code_at_rank over every position (no mask skipping) | {t_all * 1e3:.1f} ms | {t_authors / t_all:.1f}x |")
    print(f"batched vs reference loop: float64 inputs identical: {exact}; float32 inputs: {differ} of {b * side * side} "
          "positions differ (codes within float32 rounding of each other in distance)")


def stage_steps(cfg, size, batch, repeats):
    from vqfast.data import DSRAnomalies, ProceduralDefects

    data = ProceduralDefects(batch, 0, size=size, channels=cfg.in_channels, seed=0)
    model = DSR(cfg)
    print(f"\none training step (forward, backward, Adam), {size}x{size}, batch {batch}, K={cfg.num_codes}, "
          f"D={cfg.code_dim}, hidden {cfg.hidden}, U-Net width {cfg.unet_width}")
    print("| stage | time per step | per image |")
    print("|---|---|---|")
    for stage in (1, 2, 3):
        model.set_stage(stage).train()
        items = DSRAnomalies(data, stage, seed=0, p_anomalous=1.0) if stage > 1 else data
        batch_ = torch.utils.data.default_collate([items[i] for i in range(batch)])
        batch_ = {k: v for k, v in batch_.items() if torch.is_tensor(v)}
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=2e-4)

        def step():
            opt.zero_grad(set_to_none=True)
            model.training_loss(batch_ if stage > 1 else batch_["image"])["loss"].backward()
            opt.step()

        t = best_of(step, repeats)
        print(f"| {stage} | {t * 1e3:.0f} ms | {t / batch * 1e3:.1f} ms |")
    return model


def scoring(model, size, batch, repeats, label):
    model.eval()
    x = torch.rand(batch, model.config.in_channels, size, size)
    t = best_of(lambda: model.predict(x), repeats)
    print(f"| {label} | {size}x{size} | {batch} | {t / batch * 1e3:.1f} ms |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small shapes (a smoke test)")
    args = p.parse_args()
    torch.manual_seed(0)
    if args.quick:
        anomaly_generation(2, 16, 256, 16, repeats=1)
        cpu = DSRConfig(in_channels=1, num_codes=64, code_dim=16, hidden=16, res_hidden=8, unet_width=8)
        model = stage_steps(cpu, 64, 2, repeats=1)
        print("\nscoring\n| model | image | batch | time per image |\n|---|---|---|---|")
        scoring(model, 64, 2, 1, "small")
        return
    anomaly_generation(8, 64, 4096, 128, repeats=3)
    cpu = DSRConfig(in_channels=1)
    model = stage_steps(cpu, 128, 8, repeats=2)
    print("\nscoring (predict: both decoders, both U-Nets)\n| model | image | batch | time per image |\n|---|---|---|---|")
    scoring(model, 128, 8, 3, "CPU default (DSRConfig)")
    scoring(DSR(paper_config(3)), 256, 2, 1, "authors' sizes (paper_config)")


if __name__ == "__main__":
    main()

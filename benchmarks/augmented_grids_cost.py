"""What the Performer prior's augmented training costs on top of its steps: one VQ-VAE
encoding per image and epoch (vqfast.data.AugmentedGrids) against the prior's training
step on the same grids; reproduces the augmentation row of benchmarks/RESULTS.md.

    python benchmarks/augmented_grids_cost.py

The CLI's default sizes: the Performer-paper VQ-VAE (64 hidden, 3 down-samplings, 256 x 32
codes) on 128 x 128 images (16 x 16 grids), the Performer prior (4 layers, 64 wide, 8
heads), batch 16, random weights.
"""

import torch

from vqfast.data import Augment, AugmentedGrids, ProceduralDefects
from vqfast.models import VQVAE, PerformerPrior, PerformerPriorConfig, VQVAEConfig
from vqfast.profiling import format_table, time_callable


def main():
    torch.manual_seed(0)
    images = ProceduralDefects(16, 0, size=128, seed=0)
    vq = VQVAE(VQVAEConfig(hidden=64))
    with torch.no_grad():
        vq(torch.stack([images[i]["image"] for i in range(16)]))  # the codebook from these encodings
    grids = AugmentedGrids(images, vq.eval(), Augment(seed=0))
    grids.set_epoch(1)
    batch = torch.stack([grids[i]["tokens"] for i in range(16)])
    prior = PerformerPrior(PerformerPriorConfig(num_codes=256, height=16, width=16))
    opt = torch.optim.Adam(prior.parameters(), lr=3e-4)

    def step():
        opt.zero_grad()
        prior.training_loss(batch)["loss"].backward()
        opt.step()

    timings = [time_callable(lambda: [grids[i] for i in range(16)], name="augment + encode 16 images (AugmentedGrids)",
                             repeats=5),
               time_callable(step, name="Performer training step, batch 16", repeats=5)]
    print(format_table(timings, baselines=[timings[1].name], title="one batch of the Performer's augmented training"))


if __name__ == "__main__":
    main()

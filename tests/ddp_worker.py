"""Run by test_distributed under torchrun (2 gloo ranks) and alone: trains a small
VQ-VAE for a few steps with the shared Trainer on a fixed dataset and writes the final
weights to argv[1] (rank 0). Under torchrun each rank takes batch_size // world items."""

import sys

import torch

from vqfast.app import distributed
from vqfast.checkpoint import save_model
from vqfast.data import ProceduralDefects
from vqfast.models import VQVAE, VQVAEConfig
from vqfast.training import TrainConfig, Trainer

GLOBAL_BATCH = 8

distributed.init()
rank, world = distributed.rank_world()
torch.manual_seed(0)
# No EMA codebook and no dropout: each rank's forward then depends on its items alone,
# so the data-parallel gradient is exactly the single-process one (up to float sums).
model = VQVAE(VQVAEConfig(hidden=16, res_blocks=1, num_codes=16, code_dim=8, downsamples=2, ema=False, dropout=0.0))
# SGD: Adam divides by the root of tiny second moments, so it turns float-rounding
# differences between batch shapes into visible weight differences.
model.vq.initialized.fill_(True)  # the random codebook, not one drawn from each rank's first batch
budget = sys.argv[2:] == ["budget"]  # a spent time budget: every rank must stop after the same single step
config = TrainConfig(epochs=50 if budget else 2, batch_size=GLOBAL_BATCH // world, lr=0.05, optimizer="sgd",
                     early_stopping=False, seed=3, max_minutes=0.0 if budget else None)
history = Trainer(model, ProceduralDefects(16, 0, size=16, seed=1), None, config, device="cpu",
                  progress=False).fit()
if budget:
    # one write with its newline: two ranks share the pipe, and print's separate write of
    # the newline let their lines run together (seen once in a full run)
    sys.stdout.write(f"rank {rank}: epochs {len(history)} steps {history[-1]['step']} stopped "
                     f"{history[-1]['stopped']}\n")
    sys.stdout.flush()
elif rank == 0:
    save_model(model, sys.argv[1])
    print("losses", [r["train"]["loss"] for r in history])
distributed.exit_worker(0)

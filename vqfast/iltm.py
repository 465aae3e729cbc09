"""ILTM, iterative latent token masking: fitting a prior robustly to training grids that
may hold anomalies, in rounds.

Round 0 trains on every token. After each round, every training token whose NLL under
the current model exceeds the threshold (``threshold``, an NLL value, or
``percentile`` of all training tokens' NLLs) is a suspected anomaly and is masked in the
next round: left out of the loss and of attention as a key (vqfast.data.mask_tokens;
GPT2Prior and PerformerPrior honour it). Each round trains with the shared Trainer in
``<out_dir>/round_<r>/``, whose ``masks.safetensors`` holds the masks it trained with
(written before it starts), so an interrupted run resumes mid-round with its masks; a
round is done once ``<out_dir>/round_<r>/next_masks.safetensors`` exists.
"""

from pathlib import Path
from typing import Callable, List, Optional

import torch

from vqfast import checkpoint
from vqfast.data.tokens import TokenGrids
from vqfast.training import RunExistsError, TrainConfig, Trainer


@torch.no_grad()
def suspected_anomalies(prior, tokens: torch.Tensor, threshold: Optional[float] = None,
                        percentile: Optional[float] = None, batch_size: int = 64) -> torch.Tensor:
    """(N, h, w) bool: tokens whose NLL under ``prior`` (no masks) exceeds ``threshold``,
    or the ``percentile`` (0-100) of all their NLLs."""
    if (threshold is None) == (percentile is None):
        raise ValueError("give exactly one of threshold and percentile")
    prior.eval()
    device = next(prior.parameters()).device
    nll = torch.cat([prior.nll(tokens[i:i + batch_size].to(device)).float().cpu()
                     for i in range(0, tokens.shape[0], batch_size)])
    if percentile is not None:
        if not 0 <= percentile <= 100:
            raise ValueError(f"percentile must be in [0, 100], got {percentile}")
        threshold = float(torch.quantile(nll.double().flatten(), percentile / 100))
    return nll > threshold


def iltm_fit(prior, tokens: torch.Tensor, rounds: int, config: TrainConfig, out_dir=None,
             threshold: Optional[float] = None, percentile: Optional[float] = None, val_tokens=None,
             resume: bool = False, progress: bool = True,
             grids: Optional[Callable[[torch.Tensor], torch.utils.data.Dataset]] = None) -> List[torch.Tensor]:
    """Trains ``prior`` on (N, h, w) ``tokens`` for ``rounds`` rounds (each a full Trainer
    run of ``config``, continuing from the previous round's weights with a fresh
    optimiser); returns the masks each round trained with (round 0: none masked).
    ``resume`` continues an interrupted run in ``out_dir`` (round, epoch and masks).
    ``grids(masks)``: the training data of a round (default TokenGrids(tokens, masks));
    e.g. AugmentedGrids, the paper's augmented images with the masks warped along. The
    suspected tokens are always found on ``tokens`` themselves (the paper's inference on
    the training data)."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    if resume and out_dir is None:
        raise ValueError("resume needs out_dir")
    if out_dir is not None and not resume and any(Path(out_dir).glob("round_*/*")):
        raise RunExistsError(f"{out_dir} already holds an ILTM run: pass resume=True to continue it, or another "
                             "out_dir")
    masks = torch.zeros(tokens.shape, dtype=torch.bool)
    history = []
    for r in range(rounds):
        folder = Path(out_dir) / f"round_{r}" if out_dir is not None else None
        done = folder is not None and (folder / "next_masks.safetensors").is_file()
        if resume and folder is not None and (folder / "masks.safetensors").is_file():
            masks = checkpoint.read(folder / "masks.safetensors")[0]["masks"]
        elif folder is not None:
            checkpoint.write_atomic(folder / "masks.safetensors", {"masks": masks}, {"round": str(r)})
        history.append(masks)
        val = TokenGrids(val_tokens) if val_tokens is not None else None
        data = TokenGrids(tokens, masks) if grids is None else grids(masks)
        Trainer(prior, data, val, config, out_dir=folder, input_key="tokens",
                progress=progress).fit(resume=resume and folder is not None and (folder / "checkpoint.safetensors").is_file())
        if done:
            masks = checkpoint.read(folder / "next_masks.safetensors")[0]["masks"]
            continue
        masks = suspected_anomalies(prior, tokens, threshold, percentile)
        if folder is not None:
            checkpoint.write_atomic(folder / "next_masks.safetensors", {"masks": masks}, {"round": str(r)})
    return history

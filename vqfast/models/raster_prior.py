"""What the raster-order priors over token grids share (GPT-2, Performer): a grid (h, w)
is read in raster order after a start token (index K, the codebook size), so the logits
at sequence position i predict grid token i given tokens < i; NLLs, the training loss
(masked tokens left out of the loss, the keys and the inputs, vqfast.data.mask_tokens) and
the checkpoint config."""

from dataclasses import asdict
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from vqfast.data.tokens import prior_loss


class RasterPrior(nn.Module):
    """Subclasses set ``self.config`` (num_codes, height, width, length) and define
    ``logits(tokens, key_mask=None) -> (M, T, K)``."""

    @property
    def start_token(self) -> int:
        return self.config.num_codes

    def _inputs(self, tokens: torch.Tensor, key_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(M, h, w) or (M, T) grid -> (M, T) model inputs: start, z_0 .. z_{T-2}. A token
        under ``key_mask`` (M, h, w) bool (ILTM's) is read as the start token's learned
        embedding, so its value reaches no logit: hidden from the inputs as from the keys."""
        flat = tokens.reshape(tokens.shape[0], -1)
        if flat.shape[1] != self.config.length:
            raise ValueError(f"tokens must hold {self.config.height}x{self.config.width} = {self.config.length} "
                             f"positions, got shape {tuple(tokens.shape)}")
        if flat.numel() and not torch.compiler.is_exporting() and (int(flat.min()) < 0 or int(flat.max()) >= self.config.num_codes):
            raise ValueError(f"tokens hold codes outside [0, K={self.config.num_codes})")
        inputs = torch.cat([flat.new_full((flat.shape[0], 1), self.start_token), flat[:, :-1]], 1)
        if key_mask is not None:  # input i + 1 is token i
            inputs[:, 1:] = inputs[:, 1:].masked_fill(key_mask.reshape(flat.shape[0], -1)[:, :-1], self.start_token)
        return inputs

    def nll(self, tokens: torch.Tensor, key_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(M, h, w) -> (M, h, w) negative log-likelihood of each token under its prefix."""
        logits = self.logits(tokens, key_mask).float()
        flat = tokens.reshape(tokens.shape[0], -1)
        return F.cross_entropy(logits.transpose(1, 2), flat, reduction="none").view(tokens.shape)

    def training_loss(self, tokens: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Mean NLL per token (nats) of a batch of (B, h, w) grids; masked tokens
        (vqfast.data.mask_tokens) are left out of the loss and of attention as keys."""
        return prior_loss(self, tokens)

    def config_dict(self) -> dict:
        return {"model": type(self).__name__, **asdict(self.config)}

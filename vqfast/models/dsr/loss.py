"""DSR's focal loss (the authors' form, on probabilities)."""

import torch
import torch.nn.functional as F


def focal_loss(probs: torch.Tensor, target: torch.Tensor, gamma: float = 2.0, smooth: float = 1e-5) -> torch.Tensor:
    """The authors' focal loss on probabilities: probs (B, C, H, W) (a softmax), target
    (B, H, W) or (B, 1, H, W) class indices. p_t = sum_c clamp(onehot_c, smooth / (C - 1),
    1 - smooth) p_c + smooth; loss = mean of -(1 - p_t)^gamma log p_t."""
    c = probs.shape[1]
    target = target.reshape(probs.shape[0], *probs.shape[2:]).long()
    onehot = F.one_hot(target, c).movedim(-1, 1).to(probs.dtype).clamp(smooth / (c - 1), 1.0 - smooth)
    pt = (onehot * probs).sum(1) + smooth
    return (-(1 - pt).pow(gamma) * pt.log()).mean()

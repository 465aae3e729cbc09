"""A bidirectional prior over VQ token grids, trained by masked-token prediction: the
model of the density/restoration paper's section 6.1 (eq. 20), p(s_i | the tokens left
visible), for masked-context scoring (vqfast.scorers.masked_context).

The paper proposes the rule, not a model; this one follows masked-token models of image
tokens (MaskGIT-style): a learned [MASK] token (index K), learned row and column position
embeddings (2D positions), pre-norm transformer encoder layers with no causal mask, and a
head over the K codes. Training hides a random set of positions of a random ratio in each
normal grid (``MaskedGrids``) and takes the cross-entropy at the hidden positions only,
so hiding the unusual tokens at test time is what the model was trained on.

Per-token NLLs:
- ``context_nll(tokens, hidden)``: -log p(s_i | the tokens not hidden), at every position
  (meaningful where hidden: a visible token is an input).
- ``nll(tokens)``: each token's NLL with its neighbourhood visible: positions on a lattice of
  step ``config.context_stride`` (both axes) are hidden together, one forward per lattice
  offset (stride^2 forwards), so each token is predicted from all but its lattice mates;
  with stride 2 its 8 neighbours are visible. The exact pseudo-likelihood (only the token
  itself hidden) is stride = max(h, w): one forward per position.
"""

import math
from dataclasses import asdict, dataclass
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from vqfast.data.tokens import unmask_tokens


@dataclass
class MaskedPriorConfig:
    """Defaults: the GPT-2 prior's sizes (vqfast.models.GPT2PriorConfig)."""

    num_codes: int = 256  # K; index K is [MASK]
    height: int = 16
    width: int = 16
    n_layer: int = 4
    n_embd: int = 256
    n_head: int = 8
    dropout: float = 0.1
    context_stride: int = 2  # nll(): the lattice hidden together

    @property
    def length(self) -> int:
        return self.height * self.width


class MaskedTokenPrior(nn.Module):
    """p(s_i | visible tokens) over a (height, width) grid of K codes."""

    def __init__(self, config: Optional[MaskedPriorConfig] = None):
        super().__init__()
        self.config = cfg = config or MaskedPriorConfig()
        if cfg.n_embd % cfg.n_head:
            raise ValueError(f"n_embd={cfg.n_embd} must be divisible by n_head={cfg.n_head}")
        if cfg.context_stride < 1:
            raise ValueError(f"context_stride must be >= 1, got {cfg.context_stride}")
        self.token = nn.Embedding(cfg.num_codes + 1, cfg.n_embd)
        self.row = nn.Embedding(cfg.height, cfg.n_embd)
        self.col = nn.Embedding(cfg.width, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        layer = nn.TransformerEncoderLayer(cfg.n_embd, cfg.n_head, 4 * cfg.n_embd, cfg.dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.n_layer, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.n_embd)
        self.head = nn.Linear(cfg.n_embd, cfg.num_codes)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.normal_(p, std=0.02)

    @property
    def mask_token(self) -> int:
        return self.config.num_codes

    def _check(self, tokens: torch.Tensor, hidden: Optional[torch.Tensor]) -> None:
        grid = (self.config.height, self.config.width)
        if tokens.dim() != 3 or tuple(tokens.shape[1:]) != grid or tokens.dtype != torch.int64:
            raise ValueError(f"tokens must be (M, {grid[0]}, {grid[1]}) int64, got {tuple(tokens.shape)} "
                             f"{tokens.dtype}")
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.config.num_codes):
            raise ValueError(f"tokens hold codes outside [0, K={self.config.num_codes})")
        if hidden is not None and (hidden.shape != tokens.shape or hidden.dtype != torch.bool):
            raise ValueError(f"hidden must be {tuple(tokens.shape)} bool, got {tuple(hidden.shape)} {hidden.dtype}")

    def logits(self, tokens: torch.Tensor, hidden: Optional[torch.Tensor] = None,
               at: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(M, h, w) int64 codes, hidden (M, h, w) bool (replaced by [MASK]) -> (M, T, K)
        logits at every position, raster order. With ``at`` (M, h, w) bool: only those
        positions' logits, (n, K) in ``at.nonzero()`` order; the last layer then runs its
        queries, feed-forward, norm and head at those rows alone (every position stays
        a key), so scoring the ~20 % unusual tokens skips most of a layer."""
        self._check(tokens, hidden)
        if at is not None and (at.shape != tokens.shape or at.dtype != torch.bool):
            raise ValueError(f"at must be {tuple(tokens.shape)} bool, got {tuple(at.shape)} {at.dtype}")
        x = tokens if hidden is None else torch.where(hidden, torch.full_like(tokens, self.mask_token), tokens)
        cfg = self.config
        pos = (self.row.weight[:, None, :] + self.col.weight[None, :, :]).reshape(cfg.length, cfg.n_embd)
        h = self.drop(self.token(x.reshape(x.shape[0], -1)) + pos)
        if at is None:
            return self.head(self.norm(self.encoder(h)))
        *first, last = self.encoder.layers
        for layer in first:
            h = layer(h)
        return self.head(self.norm(_layer_at_rows(last, h, at.reshape(at.shape[0], -1))))

    def context_nll(self, tokens: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """(M, h, w) -> (M, h, w): -log p(s_i | the tokens not hidden), every position."""
        logits = self.logits(tokens, hidden).float()
        return F.cross_entropy(logits.transpose(1, 2), tokens.reshape(tokens.shape[0], -1),
                               reduction="none").view(tokens.shape)

    def lattice(self, offset: int, stride: Optional[int] = None) -> torch.Tensor:
        """(h, w) bool: the positions (r, c) with (r mod stride, c mod stride) equal to
        offset's (offset in [0, stride^2), row-major)."""
        s = stride or self.config.context_stride
        rows = torch.arange(self.config.height) % s == offset // s
        cols = torch.arange(self.config.width) % s == offset % s
        return rows[:, None] & cols[None, :]

    def nll(self, tokens: torch.Tensor, key_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(M, h, w) -> (M, h, w): each token's NLL with its neighbourhood visible (the
        module docstring), stride^2 forwards batched into one. With ``key_mask`` (M, h, w)
        bool those tokens are hidden too (as the raster priors' key_mask keeps tokens out
        of the context)."""
        self._check(tokens, key_mask)
        s = self.config.context_stride
        offsets = [o for o in range(s * s) if bool(self.lattice(o, s).any())]
        m = tokens.shape[0]
        groups = torch.stack([self.lattice(o, s) for o in offsets]).to(tokens.device)  # (G, h, w)
        hidden = groups[:, None].expand(len(offsets), m, *tokens.shape[1:])
        if key_mask is not None:
            hidden = hidden | key_mask[None]
        many = tokens[None].expand_as(hidden).reshape(-1, *tokens.shape[1:])
        nll = self.context_nll(many, hidden.reshape(many.shape)).view(len(offsets), m, *tokens.shape[1:])
        return (nll * groups[:, None]).sum(0)

    def training_loss(self, grids: torch.Tensor) -> Dict[str, torch.Tensor]:
        """(B, h, w) grids with the hidden tokens encoded by mask_tokens (MaskedGrids):
        mean cross-entropy (nats) over the hidden positions."""
        tokens, hidden = unmask_tokens(grids)
        if not bool(hidden.any()):
            raise ValueError("no hidden token in the batch: train on MaskedGrids, which hides some in every grid")
        nll = self.context_nll(tokens, hidden)
        loss = nll[hidden].mean()
        return {"loss": loss, "bits_per_token": loss / math.log(2)}

    def config_dict(self) -> dict:
        return {"model": type(self).__name__, **asdict(self.config)}


def _layer_at_rows(layer: nn.TransformerEncoderLayer, x: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
    """A pre-norm encoder layer's output at the rows ``at`` (M, T) bool of x (M, T, d),
    (n, d) in at.nonzero() order: queries there, keys and values at every row. Each
    grid's rows are gathered to the batch's largest count (padding repeats a row whose
    output is dropped)."""
    m, t, d = x.shape
    counts = at.sum(1)
    q = int(counts.max()) if m else 0
    rows = torch.sort((~at).to(torch.uint8), dim=1, stable=True).indices[:, :q]  # at's positions first, ascending
    keep = torch.arange(q, device=x.device) < counts[:, None]
    xs = x.gather(1, rows[..., None].expand(m, q, d))
    # the attention by hand: nn.MultiheadAttention with fewer queries than keys transposes to
    # sequence-first and projects through a bmm on a copied, expanded weight (~25 ms here)
    attn = layer.self_attn
    w, b = attn.in_proj_weight, attn.in_proj_bias
    heads = attn.num_heads

    def split(z):
        return z.reshape(m, -1, heads, d // heads).transpose(1, 2)

    k, v = F.linear(layer.norm1(x), w[d:], b[d:]).chunk(2, -1)
    o = F.scaled_dot_product_attention(split(F.linear(layer.norm1(xs), w[:d], b[:d])), split(k), split(v),
                                       dropout_p=attn.dropout if layer.training else 0.0)
    xs = xs + layer.dropout1(attn.out_proj(o.transpose(1, 2).reshape(m, q, d)))
    z = layer.norm2(xs)
    xs = xs + layer.dropout2(layer.linear2(layer.dropout(layer.activation(layer.linear1(z)))))
    return xs[keep]

"""Performer prior over VQ token grids (the VQ-VAE + transformer paper, appendix A) with
FAVOR+ attention (Choromanski et al.), and its recurrent incremental form.

A decoder-only transformer: token (K codes + a start token) and learned position
embeddings, ``n_layer`` pre-LayerNorm blocks of causal FAVOR+ self-attention and a GELU
feed-forward (4x wide), dropout in the embedding, attention output and feed-forward; a
final LayerNorm and a K-way head. A grid is read in raster order after the start token,
so the logits at position i predict grid token i given tokens < i.

FAVOR+: softmax(q.k / sqrt(d)) ~ phi(q).phi(k) with positive random features
phi(x) = exp(W x' - |x'|^2 / 2) / sqrt(m), x' = x / d^(1/4), W (m, d) orthogonal
random projections (QR blocks, row norms drawn as the norms of Gaussian vectors). The
numerical stabilisers keep causality exact: a query subtracts its own maximum (it
cancels in its own ratio); a key subtracts max_j |w_j|^2 / 2, a constant of W that
bounds every exponent by 0, where the usual maximum over all keys of the sequence would
make a position's output depend on later tokens through rounding. Causal attention is
a prefix sum, computed in chunks of ``chunk`` positions (within a chunk, a masked
(chunk, chunk) product; across chunks, the running (m, d) state), so training memory
per head is O(L (m + d) + chunk^2) instead of the naive O(L m d).

The features are redrawn every ``redraw_every`` training steps and fixed at inference;
draw r of layer l is a pure function of (seed, l, r), kept in the state dict.

``FastPerformer`` runs one position for M sequences per step with the recurrent form of
causal linear attention (per layer and head an (m, d) state and an (m,) normaliser: O(1)
per token, no growing cache), so the Pixel-wise fast path restores all B x S grids in
one pass, like GPT-2's KV cache.
"""

import math
from dataclasses import dataclass
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from vqfast.models.incremental import IncrementalPrior
from vqfast.models.raster_prior import RasterPrior


@dataclass
class PerformerPriorConfig:
    num_codes: int = 256  # K; the start token is index K
    height: int = 16
    width: int = 16
    n_layer: int = 4
    n_embd: int = 64
    n_head: int = 8
    nb_features: int = 64  # random features per head (m)
    redraw_every: int = 1000  # training steps between feature redraws (0: never)
    chunk: int = 64  # positions per block of the causal prefix sums
    dropout: float = 0.1
    seed: int = 0  # draws the random features

    @property
    def length(self) -> int:
        return self.height * self.width


def paper_mvtec_config(num_codes: int, height: int, width: int) -> PerformerPriorConfig:
    """Appendix A's MVTec Performer: 16 layers, 8 heads, embedding 32, dropout 0.1 (train
    with Adam, lr 1e-3, exponential decay 0.9999, cross-entropy)."""
    return PerformerPriorConfig(num_codes, height, width, n_layer=16, n_embd=32, n_head=8, dropout=0.1)


def orthogonal_features(m: int, d: int, generator: torch.Generator, dtype=torch.float64) -> torch.Tensor:
    """(m, d) rows orthogonal within each block of d (QR of a Gaussian matrix), each row
    rescaled to the norm of an independent d-dimensional Gaussian vector."""
    blocks = []
    for _ in range(math.ceil(m / d)):
        q, _ = torch.linalg.qr(torch.randn(d, d, generator=generator, dtype=torch.float64))
        blocks.append(q.T)
    w = torch.cat(blocks)[:m]
    norms = torch.randn(m, d, generator=generator, dtype=torch.float64).norm(dim=1, keepdim=True)
    return (w * norms).to(dtype)


def favor_features(x: torch.Tensor, proj: torch.Tensor, query: bool) -> torch.Tensor:
    """x (..., d) queries or keys (not yet scaled), proj (m, d) -> (..., m) positive features."""
    d = x.shape[-1]
    x = x * d**-0.25
    wx = x @ proj.T
    exponent = wx - x.square().sum(-1, keepdim=True) / 2
    if query:
        exponent = exponent - exponent.amax(-1, keepdim=True).detach()
    else:
        exponent = exponent - proj.square().sum(-1).amax() / 2
    return exponent.exp() / math.sqrt(proj.shape[0])


def causal_linear_attention(qf: torch.Tensor, kf: torch.Tensor, v: torch.Tensor, chunk: int) -> torch.Tensor:
    """qf, kf (..., L, m), v (..., L, d) -> (..., L, d): out_i = sum_{j<=i} (qf_i.kf_j) v_j /
    sum_{j<=i} qf_i.kf_j, by chunked prefix sums."""
    length = qf.shape[-2]
    state = qf.new_zeros(*qf.shape[:-2], qf.shape[-1], v.shape[-1])
    norm = qf.new_zeros(*qf.shape[:-2], qf.shape[-1])
    tiny = torch.finfo(qf.dtype).tiny
    outs = []
    for c0 in range(0, length, chunk):
        q, k, vv = qf[..., c0:c0 + chunk, :], kf[..., c0:c0 + chunk, :], v[..., c0:c0 + chunk, :]
        a = torch.tril(q @ k.transpose(-1, -2))  # masked entries are exact zeros: no later key enters
        num = a @ vv + q @ state
        den = a.sum(-1) + (q * norm.unsqueeze(-2)).sum(-1)
        outs.append(num / den.clamp_min(tiny).unsqueeze(-1))
        state = state + k.transpose(-1, -2) @ vv
        norm = norm + k.sum(-2)
    return torch.cat(outs, -2)


class PerformerBlock(nn.Module):
    def __init__(self, cfg: PerformerPriorConfig):
        super().__init__()
        n = cfg.n_embd
        self.n_head, self.head_dim, self.chunk = cfg.n_head, n // cfg.n_head, cfg.chunk
        self.ln_1, self.ln_2 = nn.LayerNorm(n), nn.LayerNorm(n)
        self.qkv, self.proj = nn.Linear(n, 3 * n), nn.Linear(n, n)
        self.mlp = nn.Sequential(nn.Linear(n, 4 * n), nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(4 * n, n))
        self.drop = nn.Dropout(cfg.dropout)
        self.register_buffer("features", torch.zeros(cfg.nb_features, self.head_dim))

    def _heads(self, x: torch.Tensor):
        b, t, _ = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)
        return q, k, v  # (B, H, T, d) each

    def forward(self, x: torch.Tensor, hidden: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x (B, T, n); hidden (B, T) bool: inputs no position attends to (zero key features)."""
        q, k, v = self._heads(self.ln_1(x))
        feats = self.features.to(q.dtype)
        kf = favor_features(k, feats, False)
        if hidden is not None:
            kf = kf * (~hidden)[:, None, :, None].to(kf.dtype)
        o = causal_linear_attention(favor_features(q, feats, True), kf, v, self.chunk)
        x = x + self.drop(self.proj(o.transpose(1, 2).reshape(x.shape)))
        return x + self.drop(self.mlp(self.ln_2(x)))


class PerformerPrior(RasterPrior):
    """p(z_i | z_<i) over a (height, width) grid of K codes, raster order."""

    def __init__(self, config: Optional[PerformerPriorConfig] = None):
        super().__init__()
        self.config = cfg = config or PerformerPriorConfig()
        if cfg.n_embd % cfg.n_head:
            raise ValueError(f"n_embd={cfg.n_embd} must be divisible by n_head={cfg.n_head}")
        if cfg.nb_features < 1 or cfg.chunk < 1:
            raise ValueError(f"nb_features and chunk must be >= 1, got {cfg.nb_features}, {cfg.chunk}")
        self.tok = nn.Embedding(cfg.num_codes + 1, cfg.n_embd)
        self.pos = nn.Embedding(cfg.length, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(PerformerBlock(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.head = nn.Linear(cfg.n_embd, cfg.num_codes)
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))  # training steps taken
        self.register_buffer("draw", torch.zeros((), dtype=torch.int64))  # index of the current features
        self._draw_features(0)

    @torch.no_grad()
    def _draw_features(self, draw: int) -> None:
        for layer, block in enumerate(self.blocks):
            gen = torch.Generator().manual_seed(((self.config.seed * 1_000_003 + layer) * 1_000_003 + draw) % 2**63)
            w = orthogonal_features(self.config.nb_features, block.head_dim, gen)
            block.features.copy_(w.to(block.features.dtype))
        self.draw.fill_(draw)

    def logits(self, tokens: torch.Tensor, key_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(M, h, w) or (M, T) int64 -> (M, T, K) logits of every grid token given the ones
        before it. key_mask (M, h, w) bool: tokens no later position attends to and whose
        value no input carries (ILTM)."""
        inputs = self._inputs(tokens, key_mask)
        hidden = None
        if key_mask is not None:
            hidden = torch.zeros_like(inputs, dtype=torch.bool)
            hidden[:, 1:] = key_mask.reshape(inputs.shape[0], -1)[:, :-1]  # input i+1 is token i
        x = self.drop(self.tok(inputs) + self.pos.weight[: inputs.shape[1]])
        for block in self.blocks:
            x = block(x, hidden)
        return self.head(self.ln_f(x))

    def training_loss(self, tokens: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Mean NLL per token (nats), masked tokens (vqfast.data.mask_tokens) left out of
        the loss and of attention as keys; in training, redraws the features every
        redraw_every steps."""
        if self.training:
            every = self.config.redraw_every
            if every and int(self.steps) and int(self.steps) % every == 0:
                self._draw_features(int(self.draw) + 1)
            self.steps += 1
        return super().training_loss(tokens)

    def fast(self) -> "FastPerformer":
        """A FastPerformer on this prior's weights (shared, not copied), in eval mode."""
        return FastPerformer(self)


class FastPerformer(IncrementalPrior):
    """Incremental inference for a PerformerPrior by the recurrent form of causal linear
    attention. ``reset(M)`` zeroes the per-layer states (layers, M, H, m, d + 1): the
    key-value sums with the normaliser (the key-feature sums) as their last column, so
    one batched product updates both and one reads numerator and denominator together;
    ``step(inputs (M,), position) -> (M, K)``."""

    def __init__(self, prior: PerformerPrior):
        super().__init__()
        self.prior = prior
        self.length, self.num_codes, self.start_token = prior.config.length, prior.config.num_codes, prior.start_token
        self.state: Optional[torch.Tensor] = None
        self._features = []  # per layer: (m, d) features pre-scaled by d^-1/4, the key shift

    @property
    def dtype(self) -> torch.dtype:
        return self.prior.head.weight.dtype

    @torch.no_grad()
    def reset(self, m: int) -> None:
        cfg, w = self.prior.config, self.prior.head.weight
        d = cfg.n_embd // cfg.n_head
        shape = (cfg.n_layer, m, cfg.n_head, cfg.nb_features, d + 1)
        if self.state is None or self.state.shape != shape or self.state.dtype != w.dtype or self.state.device != w.device:
            self.state = torch.zeros(shape, dtype=w.dtype, device=w.device)
            self._features = [(w.new_empty(d, cfg.nb_features), w.new_empty(())) for _ in self.prior.blocks]
            self._values = w.new_ones(m, cfg.n_head, d + 1)  # [v, 1]: the last column feeds the normaliser
            self._graphs = {}  # captured passes point at the old tensors
        else:
            self.state.zero_()  # in place: a captured pass replays on these addresses
        for (scaled, shift), block in zip(self._features, self.prior.blocks):
            # favor_features' scaling, folded into the (transposed) features once per pass
            # (they may have been redrawn since the last one)
            proj = block.features.to(w.dtype)
            scaled.copy_(proj.T * d**-0.25)
            shift.copy_(proj.square().sum(-1).amax() / 2)

    @torch.no_grad()
    def step(self, inputs: torch.Tensor, position: int) -> torch.Tensor:
        """Few, fused ops per layer: at M = 40 rows a step is as much per-op overhead as
        arithmetic. The queries' exp(-|q|^2 / 2) and every feature's 1 / sqrt(m) scale a
        query's numerator and denominator alike, so they are left out (the full forward
        keeps them; the ratio is the same up to rounding)."""
        p = self.prior
        x = p.tok(inputs) + p.pos.weight[position]  # (M, n)
        m_rows, n = x.shape
        tiny = torch.finfo(x.dtype).tiny
        values = self._values
        for i, block in enumerate(p.blocks):
            h, d = block.n_head, block.head_dim
            qkv = F.linear(F.layer_norm(x, (n,), block.ln_1.weight, block.ln_1.bias, block.ln_1.eps),
                           block.qkv.weight, block.qkv.bias).view(m_rows, 3, h, d)
            proj, key_shift = self._features[i]
            wx = torch.matmul(qkv[:, :2], proj)  # (M, 2, H, m): queries and keys at once
            wq, wk = wx[:, 0], wx[:, 1]
            qf = wq.sub_(wq.amax(-1, keepdim=True)).exp_()  # the queries' stabiliser: their own maximum
            # the keys': exp(w.k - |k|^2 / 2 - one constant), so no future key shifts a past one
            kf = wk.sub_(qkv[:, 1].square().sum(-1, keepdim=True), alpha=d**-0.5 / 2).sub_(key_shift).exp_()
            values[..., :d].copy_(qkv[:, 2])
            state = self.state[i].view(m_rows * h, -1, d + 1)
            # in place; kf is bfloat16 under autocast (prior_precision), the state float32
            state.baddbmm_(kf.reshape(m_rows * h, -1, 1).to(state.dtype), values.view(m_rows * h, 1, d + 1))
            out = torch.bmm(qf.reshape(m_rows * h, 1, -1), state).view(m_rows, h, d + 1)
            attn = out[..., :d] / out[..., d:].clamp_min(tiny)
            x = x + F.linear(attn.reshape(m_rows, n), block.proj.weight, block.proj.bias)
            fc1, _, _, fc2 = block.mlp  # eval: dropout is the identity, not called
            hidden = F.gelu(F.linear(F.layer_norm(x, (n,), block.ln_2.weight, block.ln_2.bias, block.ln_2.eps),
                                     fc1.weight, fc1.bias))
            x = x + F.linear(hidden, fc2.weight, fc2.bias)
        return p.head(p.ln_f(x))

"""PixelSNAIL prior over VQ token grids (Chen et al. 2018, as the density/restoration
paper uses it): causal (masked) convolutions and causal self-attention, 4 pixel blocks
of 4 gated residual blocks each, ELU, dropout 0.1.

Causality: the input layer is a type-A masked convolution (a position sees only the
tokens before it in raster order), every later convolution is type B (it also sees
its own position's features, which already exclude its token), and the attention of
position i reads positions j <= i. So the logits at (r, c) depend on the tokens before
(r, c) only; tests check it.
"""

import math
from dataclasses import asdict, dataclass
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class PixelSNAILConfig:
    num_codes: int = 256
    height: int = 16
    width: int = 16
    channels: int = 128
    blocks: int = 4  # pixel blocks
    res_blocks: int = 4  # gated residual blocks per pixel block
    kernel: int = 3
    attn_heads: int = 4
    dropout: float = 0.1

    @property
    def length(self) -> int:
        return self.height * self.width


class MaskedConv2d(nn.Conv2d):
    """A k x k convolution that sees the rows above and, in its own row, the columns to
    the left, plus the centre for type "B"."""

    def __init__(self, c_in: int, c_out: int, kernel: int, mask_type: str):
        super().__init__(c_in, c_out, kernel, padding=kernel // 2)
        mask = torch.ones(kernel, kernel)
        centre = kernel // 2
        mask[centre, centre + (mask_type == "B"):] = 0
        mask[centre + 1:] = 0
        self.register_buffer("mask", mask[None, None], persistent=False)

    def forward(self, x):
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)


class GatedResBlock(nn.Module):
    """x + GLU(conv(dropout(ELU(conv(ELU(x)))))), both convolutions masked type B."""

    def __init__(self, channels: int, kernel: int, dropout: float):
        super().__init__()
        self.conv1 = MaskedConv2d(channels, channels, kernel, "B")
        self.conv2 = MaskedConv2d(channels, 2 * channels, kernel, "B")
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        h = self.conv1(F.elu(x))
        h = self.conv2(self.dropout(F.elu(h)))
        return x + F.glu(h, dim=1)


def _rows_conv(conv: nn.Conv2d, full: torch.Tensor, start: int, pre=None) -> torch.Tensor:
    """Rows >= ``start`` of conv(pre(full)), computed from the rows they can see: a masked
    (or 1x1) convolution's output row y reads input rows y - k//2 .. y only."""
    lo = max(start - conv.kernel_size[0] // 2, 0)
    x = full[:, :, lo:]
    if pre is not None:
        x = pre(x)
    weight = conv.weight * conv.mask if isinstance(conv, MaskedConv2d) else conv.weight
    return F.conv2d(x, weight, conv.bias, padding=conv.padding)[:, :, start - lo :]


class CausalAttention(nn.Module):
    """Multi-head attention over raster positions, position i reading j <= i; queries
    from the block's features, keys and values from features plus the input embedding
    and the positional background."""

    def __init__(self, q_channels: int, kv_channels: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(q_channels, q_channels)
        self.kv = nn.Linear(kv_channels, 2 * q_channels)
        self.dropout = dropout

    def forward(self, query: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        b, c, h, w = query.shape
        q = self.q(query.flatten(2).transpose(1, 2))  # (B, T, C)
        k, v = self.kv(kv.flatten(2).transpose(1, 2)).chunk(2, -1)
        split = lambda t: t.view(b, h * w, self.heads, c // self.heads).transpose(1, 2)  # noqa: E731
        out = F.scaled_dot_product_attention(split(q), split(k), split(v), is_causal=True,
                                             dropout_p=self.dropout if self.training else 0.0)
        return out.transpose(1, 2).reshape(b, h * w, c).transpose(1, 2).view(b, c, h, w)

    def rows(self, query: torch.Tensor, kv: torch.Tensor, start_row: int) -> torch.Tensor:
        """Eval-mode output for the query rows >= start_row only, over every key before them."""
        b, c, h, w = query.shape
        first, t = start_row * w, h * w
        q = self.q(query.flatten(2).transpose(1, 2)[:, first:])
        k, v = self.kv(kv.flatten(2).transpose(1, 2)).chunk(2, -1)
        heads = lambda x: x.reshape(b, x.shape[1], self.heads, c // self.heads).transpose(1, 2)  # noqa: E731
        allowed = torch.arange(t, device=q.device)[None, :] <= torch.arange(first, t, device=q.device)[:, None]
        out = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), attn_mask=allowed)
        return out.transpose(1, 2).reshape(b, t - first, c).transpose(1, 2).view(b, c, h - start_row, w)


class PixelBlock(nn.Module):
    def __init__(self, cfg: PixelSNAILConfig, embed_channels: int):
        super().__init__()
        c = cfg.channels
        self.res = nn.Sequential(*[GatedResBlock(c, cfg.kernel, cfg.dropout) for _ in range(cfg.res_blocks)])
        self.attn = CausalAttention(c, c + embed_channels + 2, cfg.attn_heads, cfg.dropout)
        self.out_res = nn.Conv2d(c, c, 1)
        self.out_attn = nn.Conv2d(c, c, 1)
        self.combine = nn.Conv2d(c, c, 1)

    def forward(self, x, embedded, background):
        h = self.res(x)
        a = self.attn(h, torch.cat([h, embedded, background], 1))
        return x + self.combine(F.elu(self.out_res(F.elu(h)) + self.out_attn(F.elu(a))))


class PixelSNAIL(nn.Module):
    """p(z_i | z_<i) over a (height, width) grid of K codes in raster order; the same
    interface as GPT2Prior (logits, nll, training_loss, config_dict)."""

    def __init__(self, config: Optional[PixelSNAILConfig] = None):
        super().__init__()
        self.config = cfg = config or PixelSNAILConfig()
        if cfg.channels % cfg.attn_heads:
            raise ValueError(f"channels={cfg.channels} must be divisible by attn_heads={cfg.attn_heads}")
        c = cfg.channels
        self.embed = nn.Embedding(cfg.num_codes, c)
        self.input_conv = MaskedConv2d(c, c, 2 * cfg.kernel + 1, "A")
        self.blocks = nn.ModuleList([PixelBlock(cfg, c) for _ in range(cfg.blocks)])
        self.head = nn.Conv2d(c, cfg.num_codes, 1)
        ys = torch.linspace(-1, 1, cfg.height).view(-1, 1).expand(cfg.height, cfg.width)
        xs = torch.linspace(-1, 1, cfg.width).view(1, -1).expand(cfg.height, cfg.width)
        self.register_buffer("background", torch.stack([ys, xs])[None], persistent=False)

    def _grid(self, tokens: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if tokens.shape[1:] == (cfg.length,):
            return tokens.view(-1, cfg.height, cfg.width)
        if tokens.shape[1:] != (cfg.height, cfg.width):
            raise ValueError(f"tokens must be (M, {cfg.height}, {cfg.width}) or (M, {cfg.length}), "
                             f"got {tuple(tokens.shape)}")
        return tokens

    def logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """(M, h, w) or (M, T) int64 -> (M, T, K): each token's logits given the ones before it."""
        grid = self._grid(tokens)
        embedded = self.embed(grid).permute(0, 3, 1, 2)
        # The input embedding enters attention keys only through the type-A path: shift it
        # one raster step so position i's keys/values never hold token i.
        shifted = F.pad(embedded.flatten(2), (1, 0))[..., :-1].view_as(embedded)
        background = self.background.expand(grid.shape[0], -1, -1, -1).to(embedded.dtype)
        x = self.input_conv(embedded)
        for block in self.blocks:
            x = block(x, shifted, background)
        return self.head(F.elu(x)).flatten(2).transpose(1, 2)

    @torch.no_grad()
    def logits_cached(self, tokens: torch.Tensor, cache: Optional[Dict[str, torch.Tensor]] = None,
                      start_row: int = 0) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """Logits (M, T, K) in eval mode, recomputing only rows >= ``start_row`` of every layer.

        ``cache`` holds every layer's activations from the previous call on the same grids;
        the caller guarantees their tokens before row ``start_row`` did not change since,
        so by causality neither did any layer's rows above it. cache=None: a full pass that
        fills a new cache. Returns (logits, cache); the cache is updated in place.
        """
        grid = self._grid(tokens)
        if cache is None:
            cache, start_row = {}, 0
        r0 = start_row

        def put(name: str, rows: torch.Tensor) -> torch.Tensor:
            if r0 == 0:
                cache[name] = rows
            else:
                cache[name][:, :, r0:] = rows
            return cache[name]

        embedded = self.embed(grid).permute(0, 3, 1, 2)
        shifted = F.pad(embedded.flatten(2), (1, 0))[..., :-1].view_as(embedded)
        background = self.background.expand(grid.shape[0], -1, -1, -1).to(embedded.dtype)
        x = put("x0", _rows_conv(self.input_conv, embedded, r0))
        for b, block in enumerate(self.blocks):
            h = x
            for k, res in enumerate(block.res):
                c1 = put(f"c{b}.{k}", _rows_conv(res.conv1, h, r0, F.elu))
                h = put(f"h{b}.{k}", h[:, :, r0:] + F.glu(_rows_conv(res.conv2, c1, r0, F.elu), dim=1))
            a = block.attn.rows(h, torch.cat([h, shifted, background], 1), r0)
            mixed = block.out_res(F.elu(h[:, :, r0:])) + block.out_attn(F.elu(a))
            x = put(f"x{b + 1}", x[:, :, r0:] + block.combine(F.elu(mixed)))
        logits = put("logits", self.head(F.elu(x[:, :, r0:])))
        return logits.flatten(2).transpose(1, 2), cache

    def nll(self, tokens: torch.Tensor) -> torch.Tensor:
        grid = self._grid(tokens)
        logits = self.logits(grid).float()
        return F.cross_entropy(logits.transpose(1, 2), grid.flatten(1), reduction="none").view(tokens.shape)

    def training_loss(self, tokens: torch.Tensor) -> Dict[str, torch.Tensor]:
        if bool((tokens < 0).any()):
            raise ValueError("PixelSNAIL cannot leave masked tokens out of attention (its masked convolutions see every "
                             "earlier token): ILTM needs a GPT2Prior or a PerformerPrior")
        loss = self.nll(tokens).mean()
        return {"loss": loss, "bits_per_token": loss / math.log(2)}

    def config_dict(self) -> dict:
        return {"model": "PixelSNAIL", **asdict(self.config)}

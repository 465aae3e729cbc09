"""PixelSNAIL prior over VQ token grids (Chen et al. 2018, as the density/restoration
paper uses it): causal (masked) convolutions and causal self-attention, 4 pixel blocks
of 4 gated residual blocks each, ELU, dropout 0.1.

Causality: the input layer is a type-A masked convolution (a position sees only the
tokens before it in raster order), every later convolution is type B (it also sees
its own position's features, which already exclude its token), and the attention of
position i reads positions j <= i. So the logits at (r, c) depend on the tokens before
(r, c) only; tests check it.
"""

import functools
import math
import types
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from vqfast.models.incremental import IncrementalPrior
from vqfast.ops.decode_attention import resolve as resolve_decode_attention


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

    @property
    def start_token(self) -> int:
        """The input of position 0 in the incremental step: a placeholder, never embedded
        (position 0 sees no token)."""
        return self.config.num_codes

    def _inputs(self, tokens: torch.Tensor) -> torch.Tensor:
        """(M, h, w) or (M, T) -> (M, T) inputs of the incremental step: start, z_0 .. z_{T-2}."""
        flat = self._grid(tokens).reshape(tokens.shape[0], -1)
        return torch.cat([flat.new_full((flat.shape[0], 1), self.start_token), flat[:, :-1]], 1)

    def fast(self) -> "FastPixelSNAIL":
        """A FastPixelSNAIL on this prior's weights (shared, not copied)."""
        return FastPixelSNAIL(self)

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


class _ConvRows:
    """One masked n x n convolution evaluated a position at a time, channels last.

    ``buf`` (M, h + n//2, w + 2 (n//2), C_in) holds the convolution's input (padding
    included: zero, as F.conv2d pads). At the start of row r, ``row(r)`` computes every
    position's share from the n//2 rows above (final by then) in one GEMM over the row;
    ``at(r, c)`` adds the share of row r's own taps (left of c, and c for type B), the
    only part that waits for the positions before it. A masked tap's weight is zero, so
    the taps are the unmasked ones only.
    """

    def __init__(self, conv: "MaskedConv2d", m: int, h: int, w: int, dtype, device):
        n = conv.kernel_size[0]
        self.half, self.w = n // 2, w
        self.taps = self.half + bool(conv.mask[0, 0, n // 2, n // 2])  # the current row's: left (and centre)
        weight = conv.weight  # (C_out, C_in, n, n)
        c_out, c_in = weight.shape[:2]
        # (rows, columns, C_in) x C_out, matching the windows' memory order
        self.above_w = weight[:, :, : self.half].permute(2, 3, 1, 0).reshape(-1, c_out)
        self.cur_w = weight[:, :, self.half, : self.taps].permute(2, 1, 0).reshape(-1, c_out)
        self.bias = conv.bias
        self.buf = torch.zeros(m, h + self.half, w + 2 * self.half, c_in, dtype=dtype, device=device)
        self.above = torch.empty(m, w, c_out, dtype=dtype, device=device)

    def tensors(self) -> List[torch.Tensor]:
        return [self.above_w, self.cur_w, self.bias, self.buf, self.above]

    def put(self, r: int, c: int, value: torch.Tensor) -> None:
        self.buf[:, r + self.half, c + self.half] = value

    def row(self, r: int) -> None:
        m, _, wp, c_in = self.buf.shape
        if not self.half:
            self.above.copy_(self.bias.expand_as(self.above))
            return
        s0, s1 = self.buf.stride(0), self.buf.stride(1)
        slab = self.buf[:, r : r + self.half]  # padded rows r .. r + n//2 - 1: the rows above row r
        windows = slab.as_strided((m, self.w, self.half, 2 * self.half + 1, c_in), (s0, c_in, s1, c_in, 1))
        torch.addmm(self.bias, windows.reshape(m * self.w, -1), self.above_w, out=self.above.view(m * self.w, -1))

    def at(self, r: int, c: int) -> torch.Tensor:
        """(M, C_out): the output at (r, c)."""
        cur = self.buf[:, r + self.half, c : c + self.taps].reshape(self.buf.shape[0], -1)
        return torch.addmm(self.above[:, c], cur, self.cur_w)


def _state_tensors(state) -> List[torch.Tensor]:
    """Every tensor of a FastPixelSNAIL state, in a fixed order."""
    out = state.input.tensors()
    for pair in state.convs:
        for conv1, conv2 in pair:
            out += conv1.tensors() + conv2.tensors()
    for table in state.attn:
        out += list(table.values())
    return out


class FastPixelSNAIL(IncrementalPrior):
    """Incremental inference for a PixelSNAIL: position i of all M grids from cached
    activations, like fast generation for convolutional autoregressive models.

    Every masked convolution keeps its input rows (_ConvRows: one GEMM per row for the
    rows above, a kernel-row dot per position); every attention keeps a key/value cache
    and attends one new query (vqfast.ops.decode_attention). The keys' shares from the
    shifted embedding and the positional background are per-code and per-position
    tables, computed once per pass. A pass costs about one full forward of the M grids
    in FLOPs, against one per restored token for the reference loop.
    ``reset(M)``; ``step(inputs (M,), position) -> (M, K)``, where inputs are the tokens
    before each position (the prior's ``_inputs``). Eval mode only: dropout is left out.
    """

    def __init__(self, prior: PixelSNAIL, backend: str = "auto"):
        super().__init__()
        self.prior, self.backend = prior, backend
        cfg = prior.config
        self.length, self.num_codes, self.start_token = cfg.length, cfg.num_codes, prior.start_token
        self._key = None  # (M, dtype, device) of the state tensors

    @property
    def dtype(self) -> torch.dtype:
        return self.prior.head.weight.dtype

    @torch.no_grad()
    def reset(self, m: int) -> None:
        """State for M grids: zeroed buffers (zero is also the convolutions' padding) and
        the weights rearranged for the step (the prior may have been trained since). For
        the same M, dtype and device it is written into the previous pass's tensors, so
        a captured CUDA graph replays on their addresses."""
        w = self.prior.head.weight
        key = (m, w.dtype, w.device)
        fresh = self._build(m)
        if key == self._key:
            for old, new in zip(_state_tensors(self), _state_tensors(fresh)):
                old.copy_(new)
        else:
            self.__dict__.update({k: getattr(fresh, k) for k in ("input", "convs", "attn")})
            self._key, self._graphs = key, {}  # captured passes point at the old tensors
        c, heads = self.prior.config.channels, self.prior.config.attn_heads
        self._attend = functools.partial(torch.ops.vqfast.decode_attention.default, scale=1.0 / math.sqrt(c // heads),
                                         backend=resolve_decode_attention(self.backend, w.device, c // heads,
                                                                          self.length, w.dtype))

    def _build(self, m: int) -> "types.SimpleNamespace":
        p, cfg = self.prior, self.prior.config
        w = p.head.weight
        dtype, device, c = w.dtype, w.device, cfg.channels
        h, wd, heads = cfg.height, cfg.width, cfg.attn_heads
        state = types.SimpleNamespace()
        state.input = _ConvRows(p.input_conv, m, h, wd, dtype, device)
        state.convs = [[(_ConvRows(res.conv1, m, h, wd, dtype, device), _ConvRows(res.conv2, m, h, wd, dtype, device))
                        for res in block.res] for block in p.blocks]
        background = p.background.to(dtype).flatten(2)[0].T  # (T, 2)
        state.attn = []
        for block in p.blocks:
            kv_w = block.attn.kv.weight  # (2C, C + C + 2): [features, shifted embedding, background]
            state.attn.append(dict(
                qkv_w=torch.cat([block.attn.q.weight, kv_w[:, :c]]).T.contiguous(),  # (C, 3C)
                qkv_b=torch.cat([block.attn.q.bias, torch.zeros_like(block.attn.kv.bias)]),
                code=p.embed.weight @ kv_w[:, c : 2 * c].T,  # (K, 2C)
                pos=torch.addmm(block.attn.kv.bias, background, kv_w[:, 2 * c :].T),  # (T, 2C)
                cache=torch.zeros(2, m, heads, self.length, c // heads, dtype=dtype, device=device),
                res_w=block.out_res.weight[:, :, 0, 0].T.contiguous(),
                attn_w=block.out_attn.weight[:, :, 0, 0].T.contiguous(),
                comb_w=block.combine.weight[:, :, 0, 0].T.contiguous()))
        return state

    @torch.no_grad()
    def step(self, inputs: torch.Tensor, position: int) -> torch.Tensor:
        p, cfg = self.prior, self.prior.config
        r, c = divmod(position, cfg.width)
        m, heads = inputs.shape[0], cfg.attn_heads
        if position:  # the token before this position joins the input convolution's rows
            pr, pc = divmod(position - 1, cfg.width)
            self.input.put(pr, pc, p.embed.weight[inputs])
        if c == 0:
            self.input.row(r)
            for pair in self.convs:
                for conv1, conv2 in pair:
                    conv1.row(r)
                    conv2.row(r)
        x = self.input.at(r, c)
        for b, block in enumerate(p.blocks):
            h = x
            for conv1, conv2 in self.convs[b]:
                conv1.put(r, c, F.elu(h))
                conv2.put(r, c, F.elu(conv1.at(r, c)))
                h = h + F.glu(conv2.at(r, c), dim=1)
            t = self.attn[b]
            qkv = torch.addmm(t["qkv_b"], h, t["qkv_w"])
            kv = qkv[:, cfg.channels :] + t["pos"][position]
            if position:
                kv = kv + t["code"][inputs]
            t["cache"][:, :, :, position] = kv.view(m, 2, heads, -1).transpose(0, 1)
            q = qkv[:, : cfg.channels].reshape(m, heads, -1).to(t["cache"].dtype)  # bfloat16 under autocast
            a = self._attend(q, t["cache"][0], t["cache"][1], position + 1).reshape(m, -1)
            # out of place: autocast (prior_precision) casts addmm's operands, not addmm_'s
            mixed = torch.addmm(torch.addmm(block.out_res.bias, F.elu(h), t["res_w"]), F.elu(a), t["attn_w"])
            mixed.add_(block.out_attn.bias)
            x = x + torch.addmm(block.combine.bias, F.elu(mixed), t["comb_w"])
        return torch.addmm(p.head.bias, F.elu(x), p.head.weight[:, :, 0, 0].T)

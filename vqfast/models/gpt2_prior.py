"""GPT-2 prior over VQ token grids, and vqfast's own fast inference for it.

Training and the reference path use ``transformers.GPT2LMHeadModel`` as it is: a
token grid (h, w) is read in raster order after a start token (index K, the codebook
size), and the logits at sequence position i predict grid token i. Only the K code
classes count: the start class is dropped from every distribution (its probability
is ~0 after training).

``FastGPT2`` holds the same weights, a static, preallocated KV cache (layers, 2, M, H,
T, d) and runs one position for M sequences per ``step``: the attention of the new
query against the cache is ``vqfast.ops.decode_attention``.
"""

import functools
import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from vqfast.models.incremental import IncrementalPrior
from vqfast.models.raster_prior import RasterPrior
from vqfast.ops.decode_attention import resolve as resolve_decode_attention


@dataclass
class GPT2PriorConfig:
    num_codes: int = 256  # K; the start token is index K
    height: int = 16  # token grid
    width: int = 16
    n_layer: int = 4
    n_embd: int = 256
    n_head: int = 8
    dropout: float = 0.1

    @property
    def length(self) -> int:
        return self.height * self.width


def gpt2_medium_config(num_codes: int, height: int, width: int) -> GPT2PriorConfig:
    """The gpt2-medium size (24 layers, 1024 wide, 16 heads), for GPUs."""
    return GPT2PriorConfig(num_codes, height, width, n_layer=24, n_embd=1024, n_head=16)


def _drop_tied_head(module, state_dict, prefix, local_metadata):
    state_dict.pop(prefix + "model.lm_head.weight", None)


def _restore_tied_head(module, state_dict, prefix, *args):
    wte = prefix + "model.transformer.wte.weight"
    if wte in state_dict:
        state_dict.setdefault(prefix + "model.lm_head.weight", state_dict[wte])


class GPT2Prior(RasterPrior):
    """p(z_i | z_<i) over a (height, width) grid of K codes, raster order."""

    def __init__(self, config: Optional[GPT2PriorConfig] = None):
        super().__init__()
        from transformers import GPT2Config, GPT2LMHeadModel  # deferred on purpose: seconds to import

        self.config = cfg = config or GPT2PriorConfig()
        if cfg.n_embd % cfg.n_head:
            raise ValueError(f"n_embd={cfg.n_embd} must be divisible by n_head={cfg.n_head}")
        self.model = GPT2LMHeadModel(GPT2Config(
            vocab_size=cfg.num_codes + 1, n_positions=cfg.length, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
            n_head=cfg.n_head, resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout,
            bos_token_id=cfg.num_codes, eos_token_id=cfg.num_codes,
            # GPT-2's tanh GELU (gelu_new) as one fused op: the same function (outputs within
            # float32 rounding) in one pass over the activations instead of gelu_new's eight.
            activation_function="gelu_pytorch_tanh"))
        # lm_head is tied to the token embedding: keep one copy in state dicts (safetensors
        # refuses shared storage), re-tie on load.
        self.register_state_dict_post_hook(_drop_tied_head)
        self.register_load_state_dict_pre_hook(_restore_tied_head)

    def logits(self, tokens: torch.Tensor, key_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Full forward: (M, h, w) or (M, T) int64 -> (M, T, K) logits of every grid
        token given the ones before it. key_mask (M, h, w) bool: tokens no later position
        attends to and whose value no input carries (ILTM)."""
        inputs = self._inputs(tokens, key_mask)
        attention = None
        if key_mask is not None:
            attention = torch.ones_like(inputs)
            attention[:, 1:] = (~key_mask.reshape(inputs.shape[0], -1)[:, :-1]).long()  # input i+1 is token i
        return self.model(input_ids=inputs, attention_mask=attention).logits[..., : self.config.num_codes]

    def fast(self) -> "FastGPT2":
        """A FastGPT2 on this prior's weights (shared, not copied), in eval mode."""
        return FastGPT2(self)


class FastGPT2(IncrementalPrior):
    """Incremental inference for a GPT2Prior with a static KV cache.

    ``reset(M)`` preallocates the cache for M sequences of the prior's length;
    ``step(inputs (M,), position) -> (M, K)`` feeds one input token per sequence at
    ``position`` and returns the logits of the grid token there.
    """

    def __init__(self, prior: GPT2Prior, backend: str = "auto"):
        super().__init__()
        self.prior, self.backend = prior, backend
        hf = prior.model.config
        self.n_layer, self.n_head, self.n_embd = hf.n_layer, hf.n_head, hf.n_embd
        self.head_dim = hf.n_embd // hf.n_head
        self.eps = hf.layer_norm_epsilon
        self.cache: Optional[torch.Tensor] = None
        self.length = prior.config.length
        self.num_codes = prior.config.num_codes
        self.start_token = prior.start_token

    @property
    def dtype(self) -> torch.dtype:
        return self.prior.model.transformer.wte.weight.dtype

    def reset(self, m: int) -> None:
        w = self.prior.model.transformer.wte.weight
        shape = (self.n_layer, 2, m, self.n_head, self.length, self.head_dim)
        if self.cache is None or self.cache.shape != shape or self.cache.dtype != w.dtype or self.cache.device != w.device:
            self.cache = torch.zeros(shape, dtype=w.dtype, device=w.device)
            self._graphs = {}  # captured passes point at the old cache
        # The cache's layout is valid by construction: the per-token calls go straight to the op.
        backend = resolve_decode_attention(self.backend, w.device, self.head_dim, self.length, w.dtype)
        self._attend = functools.partial(torch.ops.vqfast.decode_attention.default, scale=1.0 / math.sqrt(self.head_dim),
                                         backend=backend)

    @torch.no_grad()
    def step(self, inputs: torch.Tensor, position: int) -> torch.Tensor:
        tr = self.prior.model.transformer
        m = inputs.shape[0]
        x = tr.wte.weight[inputs] + tr.wpe.weight[position]
        for i, block in enumerate(tr.h):
            a = F.layer_norm(x, (self.n_embd,), block.ln_1.weight, block.ln_1.bias, self.eps)
            qkv = torch.addmm(block.attn.c_attn.bias, a, block.attn.c_attn.weight)
            q, k, v = qkv.view(m, 3, self.n_head, self.head_dim).unbind(1)
            self.cache[i, 0, :, :, position] = k
            self.cache[i, 1, :, :, position] = v
            q = q.to(self.cache.dtype)  # bfloat16 under autocast (prior_precision)
            o = self._attend(q, self.cache[i, 0], self.cache[i, 1], position + 1)
            x = x + torch.addmm(block.attn.c_proj.bias, o.reshape(m, self.n_embd), block.attn.c_proj.weight)
            a = F.layer_norm(x, (self.n_embd,), block.ln_2.weight, block.ln_2.bias, self.eps)
            hmid = F.gelu(torch.addmm(block.mlp.c_fc.bias, a, block.mlp.c_fc.weight), approximate="tanh")
            x = x + torch.addmm(block.mlp.c_proj.bias, hmid, block.mlp.c_proj.weight)
        x = F.layer_norm(x, (self.n_embd,), tr.ln_f.weight, tr.ln_f.bias, self.eps)
        return x @ tr.wte.weight[: self.num_codes].T


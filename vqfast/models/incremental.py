"""The Pixel-wise restoration pass of a prior with an incremental step (a KV cache or a
recurrent state): all M sequences left to right, one step per position.

A subclass provides ``reset(m)`` (state for M sequences), ``step(inputs (M,), position)
-> (M, K)`` logits of the grid token at ``position`` given the inputs up to it, the
attributes ``length`` (T), ``num_codes`` (K), ``start_token`` and ``dtype`` (of its
logits), and ``prior`` (the full model, whose ``_inputs`` maps grids to its inputs).
"""

from typing import Optional, Tuple

import torch
from torch import nn

from vqfast.ops._dispatch import resolve_backend


class IncrementalPrior(nn.Module):
    length: int
    num_codes: int
    start_token: int
    dtype: torch.dtype

    def __init__(self):
        super().__init__()
        self._graphs: dict = {}  # (M, threshold, temperature, backend) -> captured restoration pass

    def reset(self, m: int) -> None:
        raise NotImplementedError

    def step(self, inputs: torch.Tensor, position: int) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """Every position step by step: (M, h, w) -> (M, T, K), equal to the prior's full forward."""
        inputs = self.prior._inputs(tokens)
        self.reset(inputs.shape[0])
        return torch.stack([self.step(inputs[:, i], i) for i in range(self.length)], 1)

    @torch.no_grad()
    def restore(self, tokens: torch.Tensor, threshold: float, seeds: torch.Tensor, temperature: float = 1.0,
                op_backend: str = "auto", cuda_graph: Optional[bool] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """One left-to-right Pixel-wise restoration pass for M grids at once.

        Position i is tested under the already restored prefix and, when its NLL
        exceeds ``threshold``, resampled (vqfast.ops.restore_step with counter (seeds[m], i));
        the next step's input is the token kept. Equal to the reference loop that
        recomputes the whole prior after every restored token, because the prior is causal.

        cuda_graph: capture the whole pass (every step, no host synchronisation) in a
            CUDA graph once per (M, threshold, temperature) and replay it; default: on
            CUDA tensors.

        Returns restored tokens (M, h, w) and each position's NLL under its restored prefix (M, h, w).
        """
        flat = tokens.reshape(tokens.shape[0], -1).clone()
        m = flat.shape[0]
        if flat.shape[1] != self.length:
            raise ValueError(f"tokens must hold {self.length} positions per grid, got shape {tuple(tokens.shape)}")
        if seeds.shape != (m,) or seeds.dtype != torch.int64 or seeds.device != flat.device:
            raise ValueError(f"seeds must be ({m},) int64 on {flat.device}, got {tuple(seeds.shape)} {seeds.dtype} "
                             f"on {seeds.device}")
        if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= self.num_codes):
            raise ValueError(f"tokens hold codes outside [0, K={self.num_codes})")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.reset(m)
        backend = resolve_backend("restore_step", op_backend, flat.device)
        use_graph = flat.is_cuda if cuda_graph is None else cuda_graph
        with torch.inference_mode():  # no version counting or view tracking in the hot loop (measured: faster)
            if use_graph:
                flat, nll = self._replay(flat, seeds, float(threshold), float(temperature), backend)
            else:
                nll = self._pass(flat, seeds, float(threshold), float(temperature), backend)
        flat, nll = (t.clone() if t.is_inference() else t for t in (flat, nll))  # normal tensors for the caller
        if not bool(torch.isfinite(nll).all()):
            raise FloatingPointError("the prior produced NaN/Inf logits during restoration")
        return flat.view(tokens.shape), nll.view(tokens.shape)

    def _pass(self, flat: torch.Tensor, seeds: torch.Tensor, threshold: float, temperature: float,
              backend: str) -> torch.Tensor:
        """The pass itself, in place on ``flat`` (M, T); returns nll (M, T). Device work
        only (capturable): arguments are checked by ``restore``."""
        nll = torch.empty(flat.shape, dtype=torch.float64 if self.dtype == torch.float64 else torch.float32,
                          device=flat.device)
        step_op = torch.ops.vqfast.restore_step.default
        prev = flat.new_full((flat.shape[0],), self.start_token)
        for i in range(self.length):
            logits = self.step(prev, i).to(nll.dtype)  # bfloat16 under autocast: decide in float32
            flat[:, i], nll[:, i] = step_op(logits, flat[:, i], threshold, seeds, i, temperature, backend)
            prev = flat[:, i]
        return nll

    def _replay(self, flat, seeds, threshold, temperature, backend):
        autocast = torch.is_autocast_enabled("cuda")
        dtype = torch.get_autocast_dtype("cuda")
        key = (flat.shape[0], threshold, temperature, backend, dtype if autocast else None)
        # autocast's cache of cast weights must stay out of a captured graph (PyTorch's CUDA
        # graph notes: capture with cache_enabled=False); no-op in float32
        with torch.autocast("cuda", dtype=dtype, enabled=autocast, cache_enabled=False):
            return self._replay_in(key, flat, seeds, threshold, temperature, backend)

    def _replay_in(self, key, flat, seeds, threshold, temperature, backend):
        if key not in self._graphs:
            static_flat, static_seeds = flat.clone(), seeds.clone()
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm-up outside the capture: lazy initialisation, allocator
                self._pass(static_flat.clone(), static_seeds, threshold, temperature, backend)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_nll = self._pass(static_flat, static_seeds, threshold, temperature, backend)
            self._graphs[key] = (graph, static_flat, static_seeds, static_nll)
        graph, static_flat, static_seeds, static_nll = self._graphs[key]
        static_flat.copy_(flat)
        static_seeds.copy_(seeds)
        graph.replay()
        return static_flat.clone(), static_nll.clone()

"""Built-in benchmarks behind ``vqfast bench``: every available backend of every op,
side by side with the plain-torch baselines, on fixed shapes; then the stage timings
of every model and scorer.

benchmarks/bench_<op>.py runs the same providers under pytest-benchmark.
"""

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional

import torch

from vqfast import _ext, reference
from vqfast.ops import nearest_code
from vqfast.ops._dispatch import resolve_backend, triton_interpret
from vqfast.profiling import Timing, format_table, peak_extra_memory, time_callable


@dataclass(frozen=True)
class NearestCodeCase:
    label: str
    n: int
    d: int
    num_codes: int
    k: int = 1
    dtype: str = "float32"

    @property
    def title(self) -> str:
        return f"nearest_code  N={self.n} D={self.d} K={self.num_codes} k={self.k} {self.dtype}  ({self.label})"

    def inputs(self, device) -> tuple:
        g = torch.Generator().manual_seed(0)
        dtype = getattr(torch, self.dtype)
        z = torch.randn(self.n, self.d, generator=g).to(device, dtype)
        cb = torch.randn(self.num_codes, self.d, generator=g).to(device, dtype)
        return z, cb


NEAREST_CODE_CASES = {
    "cpu": [
        NearestCodeCase("issue target: >= 3x cdist+argmin, faster than chunked", 65536, 64, 1024),
        NearestCodeCase("Performer VQ-VAE: 256x32 codebook, 64 images of 32x32 latents", 65536, 32, 256),
        NearestCodeCase("taming VQ-GAN: 128 codes of 256-d, 64 images of 8x8 latents", 4096, 256, 128),
        NearestCodeCase("top-4 for DSR-style anomaly generation", 16384, 128, 1024, k=4),
    ],
    "cuda": [
        NearestCodeCase("issue target: >= 4x cdist+argmin, within 1.3x of the GEMM", 262144, 256, 16384),
        NearestCodeCase("same shape in bfloat16", 262144, 256, 16384, dtype="bfloat16"),
        NearestCodeCase("CPU target shape", 65536, 64, 1024),
        NearestCodeCase("top-4 for DSR-style anomaly generation", 16384, 128, 1024, k=4),
    ],
    "quick": [
        NearestCodeCase("smoke test", 2048, 32, 256),
        NearestCodeCase("smoke test, top-4", 1024, 16, 128, k=4),
    ],
}

BASELINES = ("torch cdist+argmin", "torch chunked addmm+argmin")


def _chunked_addmm(z: torch.Tensor, cb: torch.Tensor, k: int) -> torch.Tensor:
    """The strongest plain-torch lookup: ||c||^2 - 2 z c^T by addmm on row chunks sized
    to keep each (chunk, K) block near 16 MiB, then argmin/topk per chunk."""
    cn = cb.square().sum(1)
    chunk = max(1, 2**22 // cb.shape[0])
    out = torch.empty(z.shape[0], k, dtype=torch.int64, device=z.device)
    for i in range(0, z.shape[0], chunk):
        d = torch.addmm(cn, z[i : i + chunk], cb.t(), alpha=-2)
        out[i : i + chunk] = d.argmin(1, keepdim=True) if k == 1 else d.topk(k, dim=1, largest=False).indices
    return out


def nearest_code_providers(device: torch.device, k: int) -> Dict[str, Callable]:
    """name -> fn(z, codebook) for every provider runnable on ``device``."""
    pick = "argmin" if k == 1 else "topk"
    providers = {
        "reference": lambda z, cb: reference.nearest_code(z, cb, k),
        f"torch cdist+{pick}": (
            (lambda z, cb: torch.cdist(z, cb).argmin(1))
            if k == 1
            else (lambda z, cb: torch.cdist(z, cb).topk(k, dim=1, largest=False).indices)
        ),
        f"torch chunked addmm+{pick}": lambda z, cb: _chunked_addmm(z, cb, k),
        "gemm only (z @ cb.T, lower bound)": lambda z, cb: z @ cb.t(),
    }
    for backend in ("cpu", "cuda", "triton"):
        try:
            resolve_backend("nearest_code", backend, device)
        except RuntimeError:
            continue
        if backend == "triton" and device.type == "cpu" and triton_interpret():
            continue  # the interpreter checks correctness; timing it means nothing
        providers[f"vqfast {backend}"] = lambda z, cb, b=backend: nearest_code(z, cb, k, backend=b)
    return providers


def run_nearest_code(
    device: torch.device,
    cases: List[NearestCodeCase],
    *,
    repeats: int = 10,
    max_time_s: float = 5.0,
    memory: bool = False,
    json_path: Optional[str] = None,
    trace_dir: Optional[str] = None,
    echo: Callable[[str], None] = print,
) -> List[dict]:
    """Times every provider on every case and prints one table per case; with
    ``json_path`` each case's results are appended (JSON lines) as soon as it ends."""
    results = []
    for case in cases:
        z, cb = case.inputs(device)
        timings: List[Timing] = []
        for name, fn in nearest_code_providers(device, case.k).items():
            t = time_callable(lambda: fn(z, cb), name=name, device=device, repeats=repeats, max_time_s=max_time_s)
            if memory:
                t.peak_extra_bytes = peak_extra_memory(lambda: fn(z, cb), device)
            timings.append(t)
        if trace_dir:
            from vqfast.profiling import trace

            os.makedirs(trace_dir, exist_ok=True)
            path = os.path.join(trace_dir, f"nearest_code_{case.n}x{case.d}x{case.num_codes}_k{case.k}.json")
            echo(trace(lambda: nearest_code(z, cb, case.k), path, device=device))
        baselines = [b if case.k == 1 else b.replace("argmin", "topk") for b in BASELINES]
        where = f"{device}"
        if device.type == "cpu" and hasattr(getattr(_ext, "_C", None), "nearest_code_cpu_isa"):
            where += f" (C++ variant {_ext._C.nearest_code_cpu_isa(case.d, case.k)})"
        echo(format_table(timings, baselines, title=f"{case.title} on {where}") + "\n")
        record = {"op": "nearest_code", "device": str(device), **asdict(case), "timings": [asdict(t) for t in timings]}
        results.append(record)
        if json_path:
            with open(json_path, "a") as f:
                f.write(json.dumps(record) + "\n")
    return results


@dataclass(frozen=True)
class OmpCase:
    label: str
    b: int  # targets
    n: int  # atoms
    d: int  # feature dimension
    s: int  # atoms per target
    dtype: str = "float64"

    @property
    def title(self) -> str:
        return f"omp  B={self.b} N={self.n} D={self.d} s={self.s} {self.dtype}  ({self.label})"

    def inputs(self, device) -> tuple:
        g = torch.Generator().manual_seed(0)
        X = torch.randn(self.d, self.n, generator=g, dtype=torch.float64)
        X = (X / X.norm(dim=0)).to(device, getattr(torch, self.dtype))
        Y = torch.randn(self.b, self.d, generator=g, dtype=torch.float64).to(device, getattr(torch, self.dtype))
        return X.T @ X, Y @ X, Y.square().sum(1)


OMP_CASES = {
    "full": [OmpCase("issue target: CPU >= 10x sklearn", 4096, 1024, 256, 17),
             OmpCase("same in float32", 4096, 1024, 256, 17, "float32")],
    "quick": [OmpCase("smoke test", 256, 128, 64, 8)],
}


def omp_providers(device: torch.device, case: OmpCase) -> Dict[str, Callable]:
    """name -> fn(gram, xty, y_norm_sq)."""
    from vqfast.ops import omp

    from sklearn.linear_model import orthogonal_mp_gram

    # The baseline of the GPU targets too: on CUDA it includes copying G and XY to the host.
    providers = {"sklearn orthogonal_mp_gram": lambda G, XY, yn: orthogonal_mp_gram(
        G.cpu().numpy(), XY.cpu().numpy().T, n_nonzero_coefs=case.s)}
    providers["reference"] = lambda G, XY, yn: omp(G, XY, case.s, y_norm_sq=yn, backend="reference")
    for backend in ("cpu", "cuda", "triton"):
        try:
            resolve_backend("omp", backend, device)
        except RuntimeError:
            continue
        providers[f"vqfast {backend}"] = lambda G, XY, yn, b=backend: omp(G, XY, case.s, y_norm_sq=yn, backend=b)
    return providers


def run_omp(device: torch.device, quick: bool = False, repeats: int = 5, max_time_s: float = 20.0,
            echo: Callable[[str], None] = print) -> None:
    import warnings

    for case in OMP_CASES["quick" if quick else "full"]:
        G, XY, yn = case.inputs(device)
        timings = []
        for name, fn in omp_providers(device, case).items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the reference's fallback warning on CUDA
                timings.append(time_callable(lambda: fn(G, XY, yn), name=name, device=device, warmup=1,
                                             repeats=repeats, max_time_s=max_time_s))
        echo(format_table(timings, ["sklearn orthogonal_mp_gram", "reference"], title=f"{case.title} on {device}") + "\n")


def model_cases(quick: bool):
    """(title, model factory, input shape) for every model and scorer timing."""
    import warnings

    from vqfast.models import VQGAN, VQVAE, VQGANConfig, VQVAEConfig

    def vqgan(cfg):
        with warnings.catch_warnings():  # LPIPS weights are irrelevant to inference timing
            warnings.simplefilter("ignore")
            return VQGAN(cfg)

    if quick:
        return [
            ("VQ-VAE (small)", lambda: VQVAE(VQVAEConfig(hidden=16, res_blocks=1, num_codes=32, code_dim=8)), (2, 3, 32, 32)),
            ("VQ-GAN (small)", lambda: vqgan(VQGANConfig(ch=8, ch_mult=(1, 2), resolution=32, z_channels=8, num_codes=16,
                                                          perceptual_weight=0.0, adversarial=False)), (2, 3, 32, 32)),
        ]
    return [
        ("VQ-VAE, Performer paper defaults (256 x 32 codebook)", lambda: VQVAE(), (16, 3, 128, 128)),
        ("VQ-GAN, tables 1-2 defaults (8 x 8 x 256 latents, 128 codes)",
         lambda: vqgan(VQGANConfig(perceptual_weight=0.0, adversarial=False)), (16, 3, 128, 128)),
    ]


def feature_scorer_cases(quick: bool):
    """(title, scorer factory (device) -> fitted scorer, input shape) for the
    feature-reconstruction scorers, on random backbones (timing does not need weights)."""
    import warnings

    from vqfast.data import ProceduralDefects
    from vqfast.models import DSR, Backbone, DSRConfig, FeatureAE, FeatureAEConfig
    from vqfast.scorers import DSRScorer, FeatureAEScorer, SGFRScorer

    name, size, n_bank = ("resnet18", 64, 16) if quick else ("wide_resnet50_2", 256, 64)

    def quiet(fn):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # random backbone: no weights here
            return fn()

    def feature_ae(device):
        return FeatureAEScorer(quiet(lambda: FeatureAE(FeatureAEConfig(backbone=name))).to(device))

    def sgfr(device):
        backbone = quiet(lambda: Backbone(name, layers=(2, 3, 4))).to(device)
        return SGFRScorer(backbone).fit(ProceduralDefects(n_bank, 0, size=size))

    def dsr(device):
        cfg = DSRConfig(num_codes=64, code_dim=16, hidden=16, res_hidden=8, unet_width=8) if quick else DSRConfig()
        return DSRScorer(DSR(cfg).to(device).eval())

    return [(f"Feature AE ({name})", feature_ae, (4, 3, size, size)),
            (f"SGFR ({name}, bank of {n_bank}, s_ref 10, s 7)", sgfr, (4, 3, size, size)),
            ("DSR (CPU-sized DSRConfig, untrained)", dsr, (4, 3, size, size))]


def run_models(device: torch.device, quick: bool = False, repeats: int = 5, echo: Callable[[str], None] = print):
    """Stage timings per model and scorer: encode / quantise / decode / Regenerative
    score for the VQ models, then the feature-reconstruction scorers."""
    from vqfast.scorers import RegenerativeScorer

    for title, make, shape in model_cases(quick):
        torch.manual_seed(0)
        model = make().to(device).eval()
        x = torch.rand(shape, device=device)
        timings = RegenerativeScorer(model).profile(x, repeats=repeats)
        echo(format_table(timings, title=f"{title}: batch {shape[0]} of {shape[2]}x{shape[3]} on {device}") + "\n")
    for title, make, shape in feature_scorer_cases(quick):
        torch.manual_seed(0)
        x = torch.rand(shape, device=device)
        timings = make(device).profile(x, repeats=repeats)
        echo(format_table(timings, title=f"{title}: batch {shape[0]} of {shape[2]}x{shape[3]} on {device}") + "\n")


@dataclass(frozen=True)
class RestorationCase:
    label: str
    n_layer: int
    n_embd: int
    n_head: int
    grid: int  # token grid side
    num_codes: int
    batch: int  # images
    restorations: int
    restored: float = 0.2  # threshold: this quantile from the top of the NLLs of prior-sampled grids
    dtype: str = "float32"
    prior: str = "gpt2"  # or "performer" (FAVOR+, its recurrent step; 64 features per head) or "pixelsnail"
    # (n_layer pixel blocks of 4 gated residual blocks, n_embd channels, n_head attention heads)

    @property
    def title(self) -> str:
        name = {"gpt2": "GPT-2", "performer": "Performer", "pixelsnail": "PixelSNAIL"}[self.prior]
        return (f"Pixel-wise restoration  {name} {self.n_layer}L/{self.n_embd}/{self.n_head}h  {self.grid}x{self.grid} "
                f"grid  K={self.num_codes}  B={self.batch} S={self.restorations}  {self.dtype}  ({self.label}; the "
                "reference loop runs the full prior after every restored token)")

    def build(self, device):
        """(prior, tokens (B, g, g), threshold, image_seeds (B,)): a random prior in eval
        mode, grids sampled from it (a restoration pass with threshold -1 is ancestral
        sampling), and the threshold over which ``restored`` of their tokens lie."""
        from vqfast.models.gpt2_prior import GPT2Prior, GPT2PriorConfig
        from vqfast.models.performer import PerformerPrior, PerformerPriorConfig
        from vqfast.models.pixelsnail import PixelSNAIL, PixelSNAILConfig

        torch.manual_seed(0)
        if self.prior == "gpt2":
            prior = GPT2Prior(GPT2PriorConfig(self.num_codes, self.grid, self.grid, self.n_layer, self.n_embd,
                                              self.n_head))
        elif self.prior == "performer":
            prior = PerformerPrior(PerformerPriorConfig(self.num_codes, self.grid, self.grid, self.n_layer, self.n_embd,
                                                        self.n_head))
        else:
            prior = PixelSNAIL(PixelSNAILConfig(self.num_codes, self.grid, self.grid, self.n_embd, self.n_layer,
                                                attn_heads=self.n_head))
        prior = prior.to(device, getattr(torch, self.dtype)).eval()
        seeds = torch.arange(self.batch, dtype=torch.int64, device=device)
        start = torch.zeros(self.batch, self.grid, self.grid, dtype=torch.int64, device=device)
        tokens, _ = prior.fast().restore(start, -1.0, seeds + 10**6)
        with torch.no_grad():
            nll = prior.nll(tokens).flatten().float()
        threshold = float(torch.quantile(nll.cpu().double(), 1 - self.restored))
        return prior, tokens, threshold, seeds


RESTORATION_CASES = {
    "cpu": [RestorationCase("issue target: fast >= 30x reference, identical tokens", 4, 256, 8, 16, 512, 8, 5),
            RestorationCase("Performer target: fast >= 30x reference, identical tokens", 4, 256, 8, 16, 512, 8, 5,
                            prior="performer"),
            RestorationCase("PixelSNAIL target: fast >= 20x reference, identical tokens", 4, 128, 4, 16, 512, 8, 5,
                            prior="pixelsnail")],
    "cuda": [RestorationCase("issue target: <= 10 ms per image", 24, 1024, 16, 8, 512, 32, 5),
             RestorationCase("CPU target shape", 4, 256, 8, 16, 512, 8, 5),
             RestorationCase("CPU target shape", 4, 128, 4, 16, 512, 8, 5, prior="pixelsnail")],
    "quick": [RestorationCase("smoke test", 2, 64, 4, 6, 64, 2, 2),
              RestorationCase("smoke test", 2, 64, 4, 6, 64, 2, 2, prior="performer"),
              RestorationCase("smoke test", 1, 16, 2, 6, 64, 2, 2, prior="pixelsnail")],
}


def restoration_providers(case: RestorationCase, prior, threshold: float) -> Dict[str, Callable]:
    """name -> fn(tokens, image_seeds) -> restored (B, S, g, g): the reference loop and
    the fast pass with every available restore_step/decode_attention backend."""
    from vqfast.reference.restoration import pixelwise_restore
    from vqfast.reference.restore_step import stream_seeds

    def ref(tokens, image_seeds):
        seeds = stream_seeds(image_seeds, case.restorations)
        return torch.stack([torch.stack([pixelwise_restore(prior, tokens[n], threshold, int(seeds[n, j]))[0]
                                         for j in range(case.restorations)]) for n in range(tokens.shape[0])])

    def fast(backend):
        f = prior.fast()  # one runner per provider: its first call captures the CUDA graph, later ones replay it
        f.backend = backend

        def run(tokens, image_seeds):
            seeds = stream_seeds(image_seeds, case.restorations).flatten()
            out, _ = f.restore(tokens.repeat_interleave(case.restorations, 0), threshold, seeds, op_backend=backend)
            return out.view(tokens.shape[0], case.restorations, *tokens.shape[1:])
        return run

    device = next(prior.parameters()).device
    providers = {"reference loop": ref}
    for backend in ("cpu", "cuda", "triton"):
        try:
            resolve_backend("restore_step", backend, device)
        except RuntimeError:
            continue
        if backend == "triton" and device.type == "cpu":
            continue  # the interpreter is a correctness tool, not a speed path
        providers[f"vqfast fast pass ({backend})"] = fast(backend)
    return providers


def run_restoration(device: torch.device, quick: bool = False, repeats: int = 3, echo: Callable[[str], None] = print,
                    cases=None):
    """Reference vs fast Pixel-wise restoration, one table per case (default: the
    built-in cases for the device), with the fraction of tokens restored and whether the
    token grids are identical."""
    if cases is None:
        cases = RESTORATION_CASES["quick" if quick else device.type if device.type in ("cpu", "cuda") else "cpu"]
    for case in cases:
        prior, tokens, threshold, seeds = case.build(device)
        results, timings = {}, []
        for name, fn in restoration_providers(case, prior, threshold).items():
            results[name] = fn(tokens, seeds)
            slow = name.startswith("reference")
            timings.append(time_callable(lambda: fn(tokens, seeds), name=name, device=device, warmup=0 if slow else 1,
                                         repeats=1 if slow else repeats))
        first = next(iter(results.values()))
        same = all(torch.equal(first, r) for r in results.values())
        restored = float((first != tokens[:, None]).float().mean())
        echo(format_table(timings, baselines=[timings[0].name], title=f"{case.title} on {device}") +
             f"\n  tokens restored: {restored:.1%}; identical token grids across providers: {same}\n")


def run_token_scorers(device: torch.device, quick: bool = False, echo: Callable[[str], None] = print):
    """Stage timings of the Sample-, Pixel- (fast), Light-Pixel-wise, KDE-map,
    Regenerative and masked-context (Sample-wise, restoration) scorers on one batch: a Performer-paper VQ-VAE (128 x 128 images, 16 x 16 tokens,
    256 codes) and the CPU-target GPT-2 prior (4 layers, 256 wide, 8 heads), batch 8; on
    CUDA the GPU target instead: 64 x 64 images (8 x 8 tokens), a gpt2-medium-size prior,
    batch 32. Random weights (the codebook drawn from the batch's encodings), thresholds
    at the 80th NLL percentile of the batch, so about 20 % of the tokens are restored. The
    decoding scorers run twice, with float32 and bfloat16 decoding; last, per-image
    totals with Light-Pixel-wise / Regenerative and (not on CUDA) the fast Pixel-wise
    scorer against the published pipeline (the reference loop per image, the same
    decode and map), timed once in the same run."""
    from vqfast.models import VQVAE, VQVAEConfig
    from vqfast.models.gpt2_prior import GPT2Prior, GPT2PriorConfig, gpt2_medium_config
    from vqfast.models import MaskedPriorConfig, MaskedTokenPrior
    from vqfast.scorers import KDEScorer, MaskedContextScorer, MaskedRestorationScorer, RegenerativeScorer
    from vqfast.scorers.restoration import LightPixelWiseScorer, PixelWiseScorer, SampleWiseScorer, nll_threshold

    torch.manual_seed(0)
    if quick:
        vq_cfg, size, prior_cfg, batch = VQVAEConfig(hidden=16, res_blocks=1, num_codes=32, code_dim=8), 32, \
            GPT2PriorConfig(32, 4, 4, 1, 32, 2), 2
    elif device.type == "cuda":  # the GPU target: a gpt2-medium-size prior on 8x8 grids, batch 32
        vq_cfg, size, prior_cfg, batch = VQVAEConfig(), 64, gpt2_medium_config(256, 8, 8), 32
    else:
        vq_cfg, size, prior_cfg, batch = VQVAEConfig(), 128, GPT2PriorConfig(256, 16, 16, 4, 256, 8), 8
    vq_model = VQVAE(vq_cfg).to(device)
    prior = GPT2Prior(prior_cfg).to(device).eval()
    images = torch.rand(batch, 3, size, size, device=device)
    with torch.no_grad():  # the codebook from these images' encodings, as a first training batch sets it: a
        vq_model(images)  # random one puts them on 3 codes, and Pixel-wise then restores 78 % of the tokens
    vq_model.eval()
    tokens = vq_model.encode_indices(images)
    lam = nll_threshold(prior, tokens, 80)
    masked = MaskedTokenPrior(MaskedPriorConfig(prior_cfg.num_codes, prior_cfg.height, prior_cfg.width,
                                                prior_cfg.n_layer, prior_cfg.n_embd, prior_cfg.n_head)).to(device).eval()
    lam_masked = nll_threshold(masked, tokens, 80)
    bf16 = {"decode_precision": "bfloat16"}
    scorers = {"Sample-wise": SampleWiseScorer(vq_model, prior, lam),
               "Pixel-wise (fast, S=5)": PixelWiseScorer(vq_model, prior, lam),
               "Pixel-wise (fast, S=5, bfloat16 decode)": PixelWiseScorer(vq_model, prior, lam, **bf16),
               "Light-Pixel-wise (fast, S=5)": LightPixelWiseScorer(vq_model, prior, lam),
               "Light-Pixel-wise (fast, S=5, bfloat16 decode)": LightPixelWiseScorer(vq_model, prior, lam, **bf16),
               "KDE map (p < exp(-lambda), S=5, one decode each)": KDEScorer(vq_model, prior, math.exp(-lam)),
               "Regenerative": RegenerativeScorer(vq_model),
               "Regenerative (bfloat16 decode)": RegenerativeScorer(vq_model, **bf16),
               "masked Sample-wise (eq. 20, the masked prior's sizes = GPT-2's)":
                   MaskedContextScorer(vq_model, masked, lam_masked),
               "masked restoration (S=5, 4 passes)": MaskedRestorationScorer(vq_model, masked, lam_masked)}
    per_image = {}
    for name, scorer in scorers.items():
        timings = scorer.profile(images, repeats=3)
        per_image[name] = total = timings[-1].median_s / batch
        echo(format_table(timings, title=f"{name}: batch {batch} of {size}x{size} on {device} "
                                         f"({total * 1e3:.1f} ms per image)") + "\n")
    echo(f"Whole scorers per image on {device} (batch {batch}, {size}x{size}), from the tables above:")
    for light in ("Light-Pixel-wise (fast, S=5)", "Light-Pixel-wise (fast, S=5, bfloat16 decode)"):
        for regen in ("Regenerative", "Regenerative (bfloat16 decode)"):
            echo(f"  {light} / {regen}: {per_image[light] / per_image[regen]:.2f} (target <= 2)")
    if device.type == "cuda":
        return  # the published loop at the GPU shapes would take most of a GPU check's budget
    # The published pipeline: the reference loop (the full prior after every restored
    # token) per image and restoration, then the same decode and map; timed once (a minute).
    published = PixelWiseScorer(vq_model, prior, lam, fast=False)
    start = time.perf_counter()
    expected = published.score(images)
    per_image["published Pixel-wise"] = (time.perf_counter() - start) / batch
    fast = scorers["Pixel-wise (fast, S=5)"]
    restored = fast.restore(tokens, fast.image_seeds(images))
    got = fast.score(images)
    gap = float((got.anomaly_map - expected.anomaly_map).abs().amax())
    echo(f"  published Pixel-wise pipeline (reference loop per image + decode + map, timed once): "
         f"{per_image['published Pixel-wise'] * 1e3:.0f} ms; tokens restored {float((restored != tokens[:, None]).float().mean()):.1%}; "
         f"the fast scorer's maps differ from it by at most {gap:.1e}")
    for name in ("Pixel-wise (fast, S=5)", "Pixel-wise (fast, S=5, bfloat16 decode)"):
        echo(f"  {name}: {per_image[name] * 1e3:.1f} ms, {per_image['published Pixel-wise'] / per_image[name]:.1f}x "
             "the published pipeline (target >= 50x)")

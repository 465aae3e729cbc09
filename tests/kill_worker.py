"""Child process of test_kill_resume: scores a small procedural dataset with every
scorer, each into <out>/<name>/ with score_dataset(resume=True), and writes each
scorer's complete results to <out>/<name>.safetensors. The models are built from fixed
seeds, so every run of this script builds the same ones."""

import sys
import warnings
from pathlib import Path

import torch
from safetensors.torch import save_file

from vqfast.data import ProceduralDefects, encode_dataset
from vqfast.models import VQVAE, FeatureAE, FeatureAEConfig, GPT2Prior, GPT2PriorConfig, VQVAEConfig
from vqfast.models.backbones import Backbone
from vqfast.models.pixelsnail import PixelSNAIL, PixelSNAILConfig
from vqfast.scorers import FeatureAEScorer, RegenerativeScorer, SGFRScorer, score_dataset
from vqfast.scorers.restoration import LightPixelWiseScorer, PixelWiseScorer, SampleWiseScorer, nll_threshold

SIZE = 32


def scorers():
    torch.manual_seed(0)
    data = ProceduralDefects(4, 4, size=SIZE, seed=3)
    vq = VQVAE(VQVAEConfig(hidden=16, res_blocks=1, num_codes=16, code_dim=8, downsamples=2)).eval()
    tokens = encode_dataset(vq, data)
    gpt2 = GPT2Prior(GPT2PriorConfig(num_codes=16, height=8, width=8, n_layer=2, n_embd=32, n_head=4)).eval()
    snail = PixelSNAIL(PixelSNAILConfig(num_codes=16, height=8, width=8, channels=16, blocks=1, res_blocks=1,
                                        attn_heads=2)).eval()
    lam_gpt2, lam_snail = nll_threshold(gpt2, tokens, 70), nll_threshold(snail, tokens, 70)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random backbones: no weights here
        backbone = Backbone("resnet18", layers=(1, 2, 3))
        feature_ae = FeatureAE(FeatureAEConfig(backbone="resnet18")).eval()
    return data, {
        "regenerative": RegenerativeScorer(vq),
        "sample_wise": SampleWiseScorer(vq, gpt2, lam_gpt2),
        "pixel_wise_gpt2": PixelWiseScorer(vq, gpt2, lam_gpt2, restorations=3),
        "pixel_wise_pixelsnail": PixelWiseScorer(vq, snail, lam_snail, restorations=3),
        "light_pixel_wise": LightPixelWiseScorer(vq, gpt2, lam_gpt2, restorations=3),
        "sgfr": SGFRScorer(backbone, levels=(1, 2), ref_level=3, s_ref=3, s=2).fit(ProceduralDefects(6, 0, SIZE, seed=9)),
        "feature_ae": FeatureAEScorer(feature_ae),
    }


def main(out: Path) -> None:
    torch.set_num_threads(1)
    data, named = scorers()
    for name, scorer in named.items():
        scores, maps, labels, masks = score_dataset(scorer, data, batch_size=2, out_dir=out / name, resume=True)
        save_file({"scores": scores, "maps": maps, "labels": labels, "masks": masks}, str(out / f"{name}.safetensors"))
    print("done")


if __name__ == "__main__":
    main(Path(sys.argv[1]))

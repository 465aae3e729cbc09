"""The authors' pretrained discrete model (their ImageNet file): its state-dict names
mapped onto ours, read with ``torch.load(weights_only=True)`` (a plain state dict)."""

from pathlib import Path
from typing import Dict

import torch


GENERAL_PARTS = ("encoder_hi", "encoder_lo", "pre_vq_lo", "pre_vq_hi", "vq_lo", "vq_hi", "upsample_lo",
                 "general_decoder")
# The authors' module names (DiscreteLatentModel) -> ours; top = lo, bot = hi.
_PREFIXES = (("_encoder_b.", "encoder_hi."), ("_encoder_t.", "encoder_lo."), ("_pre_vq_conv_top.", "pre_vq_lo."),
             ("_pre_vq_conv_bot.", "pre_vq_hi."), ("_vq_vae_top.", "vq_lo."), ("_vq_vae_bot.", "vq_hi."),
             ("upsample_t.", "upsample_lo."), ("_decoder_b.", "general_decoder."))
_PARTS = (("_residual_stack._layers.", "res.layers."), ("._block.", ".block."), ("_conv_trans_1", "up1"),
          ("_conv_trans_2", "up2"), ("_conv_1", "conv1"), ("_conv_2", "conv2"), ("_conv_3", "conv3"),
          ("_embedding.weight", "codebook"), ("_ema_cluster_size", "ema_count"), ("_ema_w", "ema_sum"))


def authors_key_to_ours(key: str) -> str:
    """One state-dict key of the authors' DiscreteLatentModel -> this model's name."""
    for theirs, ours in _PREFIXES:
        if key.startswith(theirs):
            key = ours + key[len(theirs):]
            break
    for theirs, ours in _PARTS:
        key = key.replace(theirs, ours)
    if key.startswith("general_decoder.conv1"):  # the general decoder's first conv is "conv" here
        key = "general_decoder.conv" + key[len("general_decoder.conv1"):]
    return key


def read_general(path, own: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The authors' discrete model in ``path`` under our names, checked against ``own``
    (the model's state dict): every general part present, shapes equal."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # a pickle with code in it, or no torch file at all
        raise ValueError(f"{path}: not a plain state dict torch.load(weights_only=True) can read ({exc})") from exc
    if not isinstance(state, dict):
        raise ValueError(f"{path}: holds a {type(state).__name__}, not a state dict")
    mapped = {authors_key_to_ours(k): v for k, v in state.items()}
    mine = {k: v for k, v in own.items() if k.split(".")[0] in GENERAL_PARTS}
    missing = sorted(set(mine) - set(mapped) - {"vq_lo.initialized", "vq_hi.initialized"})
    extra = sorted(set(mapped) - set(mine))
    if missing or extra:
        raise ValueError(f"{path}: not the authors' discrete model for this config (missing {missing[:4]}, "
                         f"unexpected {extra[:4]})")
    for k, v in mapped.items():
        if mine[k].shape != v.shape:
            raise ValueError(f"{path}: {k} has shape {tuple(v.shape)}, this config needs {tuple(mine[k].shape)} "
                             "(use dsr.paper_config())")
    return mapped

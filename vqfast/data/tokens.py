"""Token grids of a trained VQ model, computed once, as a dataset for the priors."""

import torch
from tqdm import tqdm


@torch.no_grad()
def encode_dataset(vq_model, dataset, batch_size: int = 32, device=None, progress: bool = False) -> torch.Tensor:
    """Code indices (N, h, w) int64 (on the CPU) of every item's "image" under a VQ
    autoencoder in eval mode."""
    device = device or next(vq_model.parameters()).device
    vq_model.eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    parts = [vq_model.encode_indices(b["image"].to(device)).cpu()
             for b in tqdm(loader, desc="encoding tokens", disable=not progress)]
    if not parts:
        raise ValueError("dataset is empty")
    return torch.cat(parts)


class TokenGrids(torch.utils.data.Dataset):
    """Items {"tokens": (h, w) int64} from a (N, h, w) tensor, for
    Trainer(..., input_key="tokens")."""

    def __init__(self, tokens: torch.Tensor):
        if tokens.dim() != 3 or tokens.dtype != torch.int64:
            raise ValueError(f"tokens must be (N, h, w) int64, got {tuple(tokens.shape)} {tokens.dtype}")
        if tokens.shape[0] == 0:
            raise ValueError("tokens is empty (N=0)")
        self.tokens = tokens

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def __getitem__(self, i: int) -> dict:
        return {"tokens": self.tokens[i]}

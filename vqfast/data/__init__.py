"""Datasets, transforms and the procedural demo data."""

from vqfast.data.augment import Augment, AugmentedDataset
from vqfast.data.datasets import (
    AnomalyDataset,
    balanced_subset,
    carve_defective,
    dataset_labels,
    FrameSequences,
    ImageFolder,
    MagneticTile,
    MVTecAD,
    Record,
    unwrap_subset,
)
from vqfast.data.synthetic import DSRAnomalies, perlin_mask, perlin_noise
from vqfast.data.procedural import ProceduralDefects, procedural_splits, write_image_folder
from vqfast.data.tokens import AugmentedGrids, MaskedGrids, TokenGrids, encode_dataset, mask_tokens, unmask_tokens
from vqfast.data.transforms import DatasetError, ImageTransform

__all__ = [
    "AnomalyDataset", "Augment", "AugmentedGrids", "balanced_subset", "carve_defective", "dataset_labels", "AugmentedDataset", "DSRAnomalies", "DatasetError", "FrameSequences", "ImageFolder", "ImageTransform", "MagneticTile",
    "MaskedGrids", "MVTecAD", "ProceduralDefects", "Record", "TokenGrids", "encode_dataset", "mask_tokens", "perlin_mask", "perlin_noise", "procedural_splits", "write_image_folder", "unmask_tokens", "unwrap_subset",
]

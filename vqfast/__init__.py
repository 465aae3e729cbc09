"""vqfast: fast kernels, models and scorers for VQ and feature-reconstruction anomaly detection."""

from vqfast import ops
from vqfast._ext import HAS_CUDA_EXT, HAS_EXT
from vqfast.allocator import tune_cpu_allocator
from vqfast.ops import nearest_code, quantize

__version__ = "0.1.0"
__all__ = ["HAS_CUDA_EXT", "HAS_EXT", "nearest_code", "ops", "quantize", "tune_cpu_allocator", "__version__"]

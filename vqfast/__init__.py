"""vqfast: fast kernels, models and scorers for VQ and feature-reconstruction anomaly detection."""

from vqfast import ops
from vqfast._ext import HAS_CUDA_EXT, HAS_EXT
from vqfast.allocator import tune_cpu_allocator
from vqfast.ops import nearest_code, quantize

__version__ = "0.1.0"
__all__ = ["HAS_CUDA_EXT", "HAS_EXT", "load", "nearest_code", "ops", "quantize", "tune_cpu_allocator", "__version__"]


def load(run, scorer=None, **kwargs):
    """A run folder's detector: ``vqfast.load(run).predict(image)`` (vqfast.app.predict.load)."""
    from vqfast.app.predict import load as load_run  # deferred on purpose: `import vqfast` stays light

    return load_run(run, scorer, **kwargs)

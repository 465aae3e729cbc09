"""The methods vqfast trains and scores: this file lists the built-in ones. Each is one
``Method`` (vqfast.methods.api) owning its typed settings, how it trains into a run folder
and the scorers a run of it offers; the CLI, run folders, checkpoints, ``vqfast demo`` and
the benchmarks read them from here.

    from vqfast.methods import Method, Scorer, Settings, register
    register(Method("toy", "my method", ToySettings, train_toy, (Scorer("toy", load_toy),)))

A package can instead name its Method in a ``vqfast.methods`` entry point.
"""

from vqfast.methods.api import Method, Run, RunError, Scorer, ScoreOptions, TrainJob, config_of, history_summary
from vqfast.methods.dsr import DSR_METHOD
from vqfast.methods.feature_ae import FEATURE_AE
from vqfast.methods.priors import GPT2, MASKED, PERFORMER, PIXELSNAIL
from vqfast.methods.registry import get, known, names, register, unregister
from vqfast.methods.settings import SettingError, Settings, setting
from vqfast.methods.sgfr import SGFR
from vqfast.methods.vq import DENSITY_VQVAE_METHOD, VQGAN_METHOD, VQVAE_METHOD

for _method in (VQVAE_METHOD, VQGAN_METHOD, DENSITY_VQVAE_METHOD, GPT2, PIXELSNAIL, PERFORMER, MASKED, SGFR, FEATURE_AE, DSR_METHOD):
    register(_method)

__all__ = ["Method", "Run", "RunError", "Scorer", "ScoreOptions", "SettingError", "Settings", "TrainJob", "config_of",
           "get", "history_summary", "known", "names", "register", "setting", "unregister"]

"""Anomaly scorers: fit(dataset) where needed, score(images) -> ScoreBatch."""

from vqfast.scorers.base import (ScoreBatch, check_images, evaluate_scorer, gaussian_blur, reduce_map, score_dataset,
                                 scorer_fingerprint)
from vqfast.scorers.dsr import DSRScorer
from vqfast.scorers.feature_ae import FeatureAEScorer
from vqfast.scorers.kde import KDEScorer, kde_abnormality
from vqfast.scorers.masked_context import MaskedContextScorer, MaskedRestorationScorer
from vqfast.scorers.regenerative import RegenerativeScorer
from vqfast.scorers.restoration import LightPixelWiseScorer, PixelWiseScorer, SampleWiseScorer, nll_threshold
from vqfast.scorers.sgfr import SGFRScorer
from vqfast.scorers.tuning import PAPER_GRID, PAPER_PERCENTILES, search_percentile

__all__ = ["PAPER_GRID", "PAPER_PERCENTILES", "search_percentile", "DSRScorer", "FeatureAEScorer", "KDEScorer", "LightPixelWiseScorer", "MaskedContextScorer", "MaskedRestorationScorer", "PixelWiseScorer", "RegenerativeScorer", "SGFRScorer",
           "SampleWiseScorer", "ScoreBatch", "check_images", "evaluate_scorer", "gaussian_blur", "kde_abnormality", "nll_threshold",
           "reduce_map", "score_dataset", "scorer_fingerprint"]

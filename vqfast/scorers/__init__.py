"""Anomaly scorers: fit(dataset) where needed, score(images) -> ScoreBatch."""

from vqfast.scorers.base import ScoreBatch, evaluate_scorer, gaussian_blur, reduce_map, score_dataset, scorer_fingerprint
from vqfast.scorers.feature_ae import FeatureAEScorer
from vqfast.scorers.regenerative import RegenerativeScorer
from vqfast.scorers.sgfr import SGFRScorer

__all__ = ["FeatureAEScorer", "RegenerativeScorer", "SGFRScorer", "ScoreBatch", "evaluate_scorer", "gaussian_blur", "reduce_map", "score_dataset"]

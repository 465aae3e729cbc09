"""Anomaly scorers: fit(dataset) where needed, score(images) -> ScoreBatch."""

from vqfast.scorers.base import ScoreBatch, evaluate_scorer, reduce_map, score_dataset
from vqfast.scorers.regenerative import RegenerativeScorer
from vqfast.scorers.sgfr import SGFRScorer

__all__ = ["RegenerativeScorer", "SGFRScorer", "ScoreBatch", "evaluate_scorer", "reduce_map", "score_dataset"]

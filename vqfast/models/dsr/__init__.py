"""DSR, the dual subspace re-projection network: the model (model.py), its networks, the
focal loss, the feature-space anomalies and the authors' pretrained weights, a file each."""

from vqfast.models.dsr.anomalies import feature_anomalies
from vqfast.models.dsr.loss import focal_loss
from vqfast.models.dsr.model import DSR
from vqfast.models.dsr.networks import DSRConfig, paper_config
from vqfast.models.dsr.weights import GENERAL_PARTS, authors_key_to_ours, read_general

__all__ = ["DSR", "DSRConfig", "GENERAL_PARTS", "authors_key_to_ours", "feature_anomalies", "focal_loss",
           "paper_config", "read_general"]

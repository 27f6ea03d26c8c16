"""OOD detectors for the disk shape network and their evaluation under non-adaptive and adaptive attack."""

from .evaluate import auroc, detection_rate, evaluate_detector
from .ood_detector import (HeadAgreementDetector, MahalanobisDetector, encoder_features, ledoit_wolf_covariance,
                           threshold_at_tpr)

__all__ = ["MahalanobisDetector", "HeadAgreementDetector", "encoder_features", "ledoit_wolf_covariance",
           "threshold_at_tpr", "auroc", "detection_rate", "evaluate_detector"]

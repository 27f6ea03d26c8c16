"""Defences for the disk shape network: OOD detectors and their evaluation under non-adaptive and adaptive
attack; median smoothing with certified per-point bounds, its attack check and noise-augmented training."""

from .evaluate import auroc, detection_rate, evaluate_detector
from .ood_detector import (HeadAgreementDetector, MahalanobisDetector, encoder_features, ledoit_wolf_covariance,
                           threshold_at_tpr)
from .noise_training import GaussianNoiseTraining
from .smoothing import Certificate, MedianSmoothing, certify, order_statistics, samples_needed, worst_case_displacement
from .smoothing_attack import SmoothedSurrogate, attack_smoothed, check_certificate

__all__ = ["MahalanobisDetector", "HeadAgreementDetector", "encoder_features", "ledoit_wolf_covariance",
           "threshold_at_tpr", "auroc", "detection_rate", "evaluate_detector",
           "MedianSmoothing", "Certificate", "certify", "order_statistics", "samples_needed", "worst_case_displacement",
           "SmoothedSurrogate", "attack_smoothed", "check_certificate", "GaussianNoiseTraining"]

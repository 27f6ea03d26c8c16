"""Defences for the disk shape network: OOD detectors and their evaluation under non-adaptive and adaptive
attack; median smoothing with certified per-point bounds, its attack check and noise-augmented training.

Names are imported on first use (PEP 562), so `python -m diskrobust --help`, which imports the certify
command's module inside this package, does not pay for torch, scipy and ignite.
"""

from __future__ import annotations

import importlib

_WHERE = {
    "auroc": "evaluate", "detection_rate": "evaluate", "evaluate_detector": "evaluate",
    "HeadAgreementDetector": "ood_detector", "MahalanobisDetector": "ood_detector",
    "encoder_features": "ood_detector", "ledoit_wolf_covariance": "ood_detector", "threshold_at_tpr": "ood_detector",
    "InputStatsDetector": "ood_robust", "OutlierExposureDetector": "ood_robust", "EnsembleDetector": "ood_robust",
    "DetectorHinge": "ood_robust", "input_statistics": "ood_robust", "train_outlier_exposure": "ood_robust",
    "detector_scores": "ood_robust", "training_outliers": "ood_robust",
    "GaussianNoiseTraining": "noise_training",
    "Certificate": "smoothing", "MedianSmoothing": "smoothing", "certify": "smoothing",
    "order_statistics": "smoothing", "samples_needed": "smoothing", "worst_case_displacement": "smoothing",
    "SmoothedSurrogate": "smoothing_attack", "attack_smoothed": "smoothing_attack",
    "check_certificate": "smoothing_attack",
}

__all__ = list(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_WHERE))

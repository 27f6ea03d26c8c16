"""Ignite handlers: TensorBoard contour images, per-epoch dataset seeding, evaluation reports,
inference writers, and adversarial training."""

from diskrobust.handlers.adversarial import AdversarialTrainingHandler
from diskrobust.handlers.checkpoints import PruneCheckpoints
from diskrobust.handlers.contour_writer import DiskContourWriter, contours_to_label_mask
from diskrobust.handlers.epoch_seed import DatasetEpochSetter
from diskrobust.handlers.metrics_report import DiskMetricsReport, per_sample_metrics
from diskrobust.handlers.tensorboard_images import TensorBoardContourImages, contour_panels

__all__ = [
    "AdversarialTrainingHandler",
    "PruneCheckpoints",
    "DiskContourWriter",
    "contours_to_label_mask",
    "DatasetEpochSetter",
    "DiskMetricsReport",
    "per_sample_metrics",
    "TensorBoardContourImages",
    "contour_panels",
]


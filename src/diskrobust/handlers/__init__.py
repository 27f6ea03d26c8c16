"""Ignite handlers: TensorBoard contour images, per-epoch dataset seeding, evaluation reports,
inference writers, adversarial training (and its adaptive-margin arm), and the engine wiring the bundle configs call."""

from diskrobust.handlers.adaptive_margin import AdaptiveMarginTrainingHandler
from diskrobust.handlers.adversarial import AdversarialTrainingHandler
from diskrobust.handlers.checkpoints import PruneCheckpoints
from diskrobust.handlers.contour_writer import DiskContourWriter, contours_to_label_mask
from diskrobust.handlers.epoch_seed import DatasetEpochSetter
from diskrobust.handlers.metrics_report import DiskMetricsReport, per_sample_metrics
from diskrobust.handlers.step_offset import StepOffsetWriter
from diskrobust.handlers.tensorboard_images import TensorBoardContourImages, contour_panels
from diskrobust.handlers.wiring import attach_handlers, train_scalars

__all__ = [
    "AdversarialTrainingHandler",
    "AdaptiveMarginTrainingHandler",
    "PruneCheckpoints",
    "DiskContourWriter",
    "contours_to_label_mask",
    "DatasetEpochSetter",
    "DiskMetricsReport",
    "per_sample_metrics",
    "TensorBoardContourImages",
    "contour_panels",
    "StepOffsetWriter",
    "attach_handlers",
    "train_scalars",
]


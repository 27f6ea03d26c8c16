"""Ignite handlers: TensorBoard contour images, per-epoch dataset seeding, evaluation reports,
inference writers, and (from .adversarial) adversarial training."""

from diskrobust.handlers.checkpoints import PruneCheckpoints
from diskrobust.handlers.contour_writer import DiskContourWriter, contours_to_label_mask
from diskrobust.handlers.epoch_seed import DatasetEpochSetter
from diskrobust.handlers.metrics_report import DiskMetricsReport, per_sample_metrics
from diskrobust.handlers.tensorboard_images import TensorBoardContourImages, contour_panels

__all__ = [
    "PruneCheckpoints",
    "DiskContourWriter",
    "contours_to_label_mask",
    "DatasetEpochSetter",
    "DiskMetricsReport",
    "per_sample_metrics",
    "TensorBoardContourImages",
    "contour_panels",
]

# adversarial.py is written separately; only its own absence is tolerated, not errors inside it.
try:
    from diskrobust.handlers.adversarial import AdversarialTrainingHandler  # noqa: F401
except ModuleNotFoundError as _err:
    if _err.name != "diskrobust.handlers.adversarial":
        raise
else:
    __all__.append("AdversarialTrainingHandler")

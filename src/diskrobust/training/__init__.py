"""How the network is trained fast: the step (layout, micro-batches, precision) and the loaders."""

from diskrobust.compute import PRECISIONS

from .loaders import DeviceAugmentedLoader, augmentation_loader, device_loader
from .step import StepSettings, TrainingStep, autotune, forward_backward, safe_channels_last, set_memory_format

__all__ = ["PRECISIONS", "DeviceAugmentedLoader", "StepSettings", "TrainingStep", "augmentation_loader", "device_loader",
           "autotune", "forward_backward", "safe_channels_last", "set_memory_format"]

"""Networks: DiskShapeNet (ResNet-style encoder, point head, U-Net decoder)."""

from .disk_shape_net import DiskShapeNet, ellipse_mean_shape

__all__ = ["DiskShapeNet", "ellipse_mean_shape"]

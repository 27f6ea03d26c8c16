"""Infer tasks of the diskrobust MONAI Label app."""

from .disk_shape import DiskShapeInfer, DiskShapeRobustnessInfer

__all__ = ["DiskShapeInfer", "DiskShapeRobustnessInfer"]

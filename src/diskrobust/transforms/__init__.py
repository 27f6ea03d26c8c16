"""MONAI transforms of diskrobust (array + dictionary twins): intensity, loading, disk patches, shape
augmentation, the preprocessing chains (`pipeline`) and the network-output postprocessing.

Imports data/ (file reading, contour geometry); data/ never imports transforms/."""

from diskrobust.transforms.intensity import ScaleIntensityMR, ScaleIntensityMRd, minmax_scale
from diskrobust.transforms.io import (
    LoadDiskContours,
    LoadDiskContoursd,
    LoadDiskImage,
    LoadDiskImaged,
    LoadDiskPositionsd,
)
from diskrobust.transforms.patches import (
    ExtractDiskPatches,
    ExtractDiskPatchesd,
    extract_patch,
    image_points_to_patch,
    patch_points_to_image,
    patch_scale,
)
from diskrobust.transforms.pipeline import DiskCompose, disk_patch_chain, inference_chain
from diskrobust.transforms.postprocess import DiskNetOutputd
from diskrobust.transforms.shape_augment import (
    RandShapeAugment,
    RandShapeAugmentd,
    ShapePCA,
    augment_patch,
    draw_new_shape,
)
from diskrobust.transforms.tps import border_control_points, tps_eval, tps_solve, tps_warp

__all__ = [
    "ScaleIntensityMR",
    "ScaleIntensityMRd",
    "minmax_scale",
    "LoadDiskPositionsd",
    "DiskCompose",
    "disk_patch_chain",
    "inference_chain",
    "DiskNetOutputd",
    "LoadDiskImage",
    "LoadDiskImaged",
    "LoadDiskContours",
    "LoadDiskContoursd",
    "ExtractDiskPatches",
    "ExtractDiskPatchesd",
    "extract_patch",
    "patch_points_to_image",
    "image_points_to_patch",
    "patch_scale",
    "ShapePCA",
    "RandShapeAugment",
    "RandShapeAugmentd",
    "augment_patch",
    "draw_new_shape",
    "tps_warp",
    "tps_solve",
    "tps_eval",
    "border_control_points",
]

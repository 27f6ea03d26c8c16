"""The preprocessing chain, composed once: training patches, evaluation patches, inference patches.

    training / evaluation      LoadDiskImaged -> LoadDiskContoursd -> ScaleIntensityMRd -> ExtractDiskPatchesd
    inference (disk centres)   LoadDiskImaged(meta) -> LoadDiskPositionsd -> ScaleIntensityMRd -> ExtractDiskPatchesd

Both scale the whole image to [0, 1] by its 0.5-99.5 percentiles, then cut each disk's S x S patch at
`patch_spacing_mm` and min-max scale it: a patch at inference is made exactly as in training.
The bundles declare the same chains as `preprocessing` in their configs; these functions build them
for Python callers (the patch bank's default, serving, tests).
"""

from __future__ import annotations

from monai.transforms import Compose

from diskrobust import PATCH_SIZE
from diskrobust.transforms.intensity import ScaleIntensityMRd
from diskrobust.transforms.io import LoadDiskContoursd, LoadDiskImaged, LoadDiskPositionsd
from diskrobust.transforms.patches import ExtractDiskPatchesd

from diskrobust.data.errors import DataError

__all__ = ["DiskCompose", "project_data_error", "disk_patch_chain", "inference_chain"]


def project_data_error(err: BaseException | None) -> DataError | None:
    """The DataError a transform raised, from under MONAI's "applying transform ..." RuntimeErrors."""
    while err is not None:
        if isinstance(err, DataError):
            return err
        err = err.__cause__ or err.__context__
    return None


class DiskCompose(Compose):
    """MONAI's Compose, except that a DataError raised by one of its transforms (a bad file, a contour
    outside its image, ...) reaches the caller as itself, not wrapped in MONAI's RuntimeError."""

    def __call__(self, input_, *args, **kwargs):
        try:
            return super().__call__(input_, *args, **kwargs)
        except RuntimeError as err:
            cause = project_data_error(err)
            if cause is None:
                raise
            raise cause from None


def disk_patch_chain(patch_size: int = PATCH_SIZE, patch_spacing_mm: float = 0.5, padding: str = "zeros") -> Compose:
    """Datalist entry {"image", "contours", "subject", ...} -> list of patch dicts (image, points, mask, ...)."""
    return DiskCompose([
        LoadDiskImaged("image"),
        LoadDiskContoursd("contours", image_key="image"),
        ScaleIntensityMRd("image"),
        ExtractDiskPatchesd(patch_size=patch_size, patch_spacing_mm=patch_spacing_mm, padding=padding),
    ])


def inference_chain(patch_size: int = PATCH_SIZE, patch_spacing_mm: float = 0.5, padding: str = "zeros") -> Compose:
    """{"image": NIfTI path, "disks": centres / contour JSON or ""} -> list of patch dicts with "image",
    "centre_px", "scale", "level", "disk_label" and the source's "source", "source_shape", "spacing_mm",
    "affine" (what `DiskContourWriter` needs to map contours back onto the image)."""
    return DiskCompose([
        LoadDiskImaged("image", meta=True),
        LoadDiskPositionsd("disks", image_key="image", patch_size=patch_size),
        ScaleIntensityMRd("image"),
        ExtractDiskPatchesd(patch_size=patch_size, patch_spacing_mm=patch_spacing_mm, padding=padding,
                            drop_keys=("label", "disks")),
    ])

"""Images in, labels out: one sagittal slice of a 2D or 3D NIfTI in the contract's orientation, and
the label written back on the uploaded image's own grid.

The contract (docs/architecture.md): row -> inferior, col -> posterior. A 3D scan's sagittal axis is
found from the affine (nibabel's orientation tools); its label is a 3D volume with only the served
slice filled. Image size is checked from the header before any voxel is read, so an oversized upload
costs neither memory nor time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diskrobust.data.errors import DataError

__all__ = [
    "MAX_IMAGE_SIDE_PX",
    "MAX_IMAGE_VOXELS",
    "ImageTooLarge",
    "SagittalSlice",
    "check_image_size",
    "load_sagittal_slice",
    "slice_label_volume",
    "write_label_image",
    "scale_intensity",
]

# The target orientation of a slice, as nibabel axis codes: row -> Inferior, col -> Posterior, slice -> Right.
_CONTRACT_AXCODES = ("I", "P", "R")
# Limits of what the server reads: a sagittal lumbar MR is at most ~1024 px a side; 2048 leaves room.
MAX_IMAGE_SIDE_PX = 2048
MAX_IMAGE_VOXELS = 64 * 1024 * 1024


class ImageTooLarge(DataError):
    """The image's header declares more pixels than the server accepts (HTTP 422)."""


def check_image_size(path: str | Path, max_side_px: int = MAX_IMAGE_SIDE_PX,
                     max_voxels: int = MAX_IMAGE_VOXELS) -> tuple[int, ...]:
    """The image's shape from its header; ImageTooLarge when a side or the voxel count exceeds the limits.

    Reads only the header (nibabel keeps the voxels on disk until asked). DataError for a file that is
    not a readable NIfTI.
    """
    import nibabel as nib

    path = Path(path)
    if not path.is_file():
        raise DataError(path, "image file not found")
    try:
        shape = tuple(int(s) for s in nib.load(str(path)).shape)
    except Exception as err:  # nibabel raises many types for garbled files
        raise DataError(path, f"cannot read image (corrupt or not NIfTI): {type(err).__name__}") from err
    spatial = shape[:3]
    voxels = int(np.prod(shape, dtype=np.int64)) if shape else 0
    if any(s > max_side_px for s in spatial) or voxels > max_voxels:
        raise ImageTooLarge(path, f"image of shape {list(shape)} exceeds the server's limits "
                                  f"({max_side_px} px a side, {max_voxels} voxels)")
    return shape


@dataclass
class SagittalSlice:
    """One sagittal slice in the contract's orientation and what is needed to write a label back.

    image: (H, W) float32, row -> inferior, col -> posterior.
    spacing_mm: (row, col) mm of ``image``.
    source_shape / source_affine: the file's array shape and affine (2D files: shape (H, W)).
    ornt_to_contract: nibabel orientation transform from the file's array axes to (I, P, R).
    slice_index: index of the slice along the contract's third (R) axis.
    """

    image: np.ndarray
    spacing_mm: tuple[float, float]
    source_shape: tuple[int, ...]
    source_affine: np.ndarray
    ornt_to_contract: np.ndarray
    slice_index: int
    path: str = ""

    @property
    def num_slices(self) -> int:
        shape3 = tuple(self.source_shape) + (1,) * (3 - len(self.source_shape))
        return int(np.prod(shape3)) // (self.image.shape[0] * self.image.shape[1])


def load_sagittal_slice(path: str | Path, slice_index: int | None = None,
                        max_side_px: int = MAX_IMAGE_SIDE_PX, max_voxels: int = MAX_IMAGE_VOXELS) -> SagittalSlice:
    """Read a 2D or 3D NIfTI and return one sagittal slice in the contract's orientation.

    A 2D file (the project's format, or 3D with one singleton axis) is its own slice. In a 3D scan the
    sagittal axis is the array axis closest to left-right in the affine; ``slice_index`` counts along
    it after reorientation to +R (default: the middle slice). Raises DataError naming the file for a
    missing/corrupt file, a 4D+ image, NaN/Inf voxels, or a slice index out of range; ImageTooLarge
    (checked from the header first) for an image over the size limits.
    """
    import nibabel as nib
    from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

    path = Path(path)
    check_image_size(path, max_side_px, max_voxels)
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj, dtype=np.float32)
        affine = np.asarray(img.affine, dtype=np.float64)
    except Exception as err:  # nibabel raises many types for garbled files
        raise DataError(path, f"cannot read image (corrupt or not NIfTI): {type(err).__name__}") from err
    source_shape = tuple(int(s) for s in data.shape)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim == 2:
        data = data[..., None]
    if data.ndim != 3:
        raise DataError(path, f"expected a 2D or 3D image, got shape {source_shape}")
    if not np.isfinite(data).all():
        raise DataError(path, f"image has {int((~np.isfinite(data)).sum())} NaN/Inf voxels")

    ornt = io_orientation(affine)
    transform = ornt_transform(ornt, axcodes2ornt(_CONTRACT_AXCODES))
    vol = apply_orientation(data, transform)  # (H, W, slices) with row -> I, col -> P, slice -> R
    new_affine = affine @ inv_ornt_aff(transform, data.shape)
    if vol.shape[0] < 2 or vol.shape[1] < 2:
        raise DataError(path, f"the sagittal plane of shape {vol.shape[:2]} is too small (image shape {source_shape})")
    n = vol.shape[2]
    index = n // 2 if slice_index is None else int(slice_index)
    if not 0 <= index < n:
        raise DataError(path, f"slice index {slice_index} is outside 0..{n - 1} (sagittal slices)")
    spacing = (float(np.linalg.norm(new_affine[:3, 0])), float(np.linalg.norm(new_affine[:3, 1])))
    if min(spacing) <= 0 or not all(np.isfinite(spacing)):
        raise DataError(path, f"invalid in-plane spacing {spacing} in the affine")
    return SagittalSlice(
        image=np.ascontiguousarray(vol[:, :, index]),
        spacing_mm=spacing,
        source_shape=source_shape,
        source_affine=affine,
        ornt_to_contract=transform,
        slice_index=index,
        path=str(path),
    )


def slice_label_volume(sl: SagittalSlice, label2d: np.ndarray) -> np.ndarray:
    """Put a (H, W) label of the slice back into the file's array layout (zeros on other slices)."""
    from nibabel.orientations import apply_orientation, ornt_transform

    label2d = np.asarray(label2d)
    if label2d.shape != sl.image.shape:
        raise ValueError(f"label shape {label2d.shape} differs from the slice's {sl.image.shape}")
    shape3 = tuple(sl.source_shape[:3]) + (1,) * max(0, 3 - len(sl.source_shape))
    # the reoriented volume's shape: apply the orientation to an empty array of the file's shape
    vol = apply_orientation(np.zeros(shape3, dtype=label2d.dtype), sl.ornt_to_contract).copy()
    vol[:, :, sl.slice_index] = label2d
    back = ornt_transform(np.asarray(_contract_ornt()), _source_ornt(sl))
    out = apply_orientation(vol, back)
    return np.ascontiguousarray(out.reshape(sl.source_shape))


def _contract_ornt() -> np.ndarray:
    from nibabel.orientations import axcodes2ornt

    return axcodes2ornt(_CONTRACT_AXCODES)


def _source_ornt(sl: SagittalSlice) -> np.ndarray:
    from nibabel.orientations import io_orientation

    return io_orientation(sl.source_affine)


def write_label_image(path: str | Path, sl: SagittalSlice, label2d: np.ndarray) -> Path:
    """Write the slice's (H, W) label as a uint16 NIfTI on the source image's grid and affine."""
    import nibabel as nib

    path = Path(path)
    vol = slice_label_volume(sl, np.asarray(label2d, dtype=np.uint16))
    img = nib.Nifti1Image(vol, sl.source_affine)
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_qform(sl.source_affine, code=1)
    img.header.set_sform(sl.source_affine, code=1)
    nib.save(img, str(path))
    return path


def scale_intensity(image: np.ndarray) -> np.ndarray:
    """(H, W) MR slice -> (H, W) float32 in [0, 1] with the training pipeline's per-image scaling."""
    from diskrobust.transforms.intensity import ScaleIntensityMR

    out = ScaleIntensityMR()(np.asarray(image, dtype=np.float32)[None])
    return np.asarray(out, dtype=np.float32)[0]

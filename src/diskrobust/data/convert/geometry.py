"""Reading 3D volumes with MONAI and cutting the mid-sagittal slice in the project's orientation.

World coordinates here are RAS mm: MONAI's readers hand back ``meta["affine"]`` in RAS for every
format (ITKReader converts ITK's LPS with ``affine_lps_to_ras=True``), so one rule covers .mha, NRRD,
DICOM and NIfTI. The L-R axis is the same line in LPS and RAS, only its sign differs.

Project orientation (docs/architecture.md): a 2D array ``img[row, col]`` with row -> inferior and
col -> posterior. In RAS, inferior is -S (-z) and posterior is -A (-y).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from diskrobust.data.errors import DataError

__all__ = ["Volume", "read_volume", "SagittalAxes", "find_sagittal_axes", "SagittalSlice", "cut_sagittal"]


@dataclass
class Volume:
    """A 3D array indexed like the file's voxel grid and its (4, 4) voxel-index -> RAS mm affine."""

    array: np.ndarray  # (N0, N1, N2)
    affine: np.ndarray  # (4, 4) float64
    path: str
    file_shape: tuple[int, ...] | None = None  # the array shape as stored, before a 2D slice got its third axis

    @property
    def is_2d(self) -> bool:
        """One slice only: a 2D file, or a 3D one with a single voxel along an axis."""
        return min(self.array.shape) == 1

    @property
    def spacing(self) -> np.ndarray:
        return np.linalg.norm(self.affine[:3, :3], axis=0)


def _reader_for(path: Path):
    from monai.data import ITKReader, NibabelReader

    name = path.name.lower()
    if name.endswith(".nii") or name.endswith(".nii.gz"):
        return NibabelReader()
    # ITK covers MetaImage, NRRD, a DICOM series folder (via GDCM) and NIfTI too
    return ITKReader()


def read_volume(path: str | Path, what: str = "image") -> Volume:
    """Read a 3D image, a 2D NIfTI slice (given a singleton third axis) or a DICOM series folder.

    Raises DataError naming the file for a missing, unreadable or corrupt file, a vector/4D image, a
    2D image without 3D geometry, a singular affine and NaN/Inf voxels.
    """
    from monai.transforms import LoadImage

    path = Path(path)
    if not path.exists():
        raise DataError(path, f"{what} not found")
    try:
        data, meta = LoadImage(reader=_reader_for(path), image_only=False)(str(path))
    except Exception as err:  # readers raise RuntimeError/OSError/ValueError/... for bad files
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise DataError(path, f"cannot read {what} (corrupt or unsupported): {type(err).__name__}: {first}") from err
    arr = np.asarray(data)
    file_shape = tuple(int(n) for n in arr.shape)
    affine = np.asarray(meta["affine"], dtype=np.float64)
    if arr.ndim == 2 and affine.shape == (4, 4):
        arr = arr[:, :, None]  # a 2D NIfTI keeps its 3D affine: the third axis is the through-plane one
    if arr.ndim == 4 and 1 in arr.shape[3:]:
        arr = arr[..., 0]
    if arr.ndim != 3 or affine.shape != (4, 4):
        raise DataError(path, f"{what} must be a 3D scalar volume with 3D geometry, got array shape {arr.shape}")
    if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise DataError(path, f"{what} has a singular affine (zero spacing or degenerate direction)")
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise DataError(path, f"{what} has {int((~np.isfinite(arr)).sum())} NaN/Inf voxels")
    return Volume(array=arr, affine=affine, path=str(path), file_shape=file_shape)


@dataclass
class SagittalAxes:
    """Which voxel axis runs L-R (sagittal), S-I and A-P, with the A-P/S-I signs from the header."""

    sagittal: int
    superior_inferior: int
    anterior_posterior: int
    flip_rows: bool  # voxel index along the S-I axis grows towards superior: reverse it
    flip_cols: bool  # voxel index along the A-P axis grows towards anterior: reverse it
    obliquity_deg: float  # angle between the sagittal axis and L-R


def find_sagittal_axes(affine: np.ndarray) -> SagittalAxes:
    """Assign the three voxel axes to L-R, S-I and A-P from the direction cosines of a RAS affine.

    The assignment maximises the summed |cosine| with the world axes over all six permutations, so
    a slightly oblique acquisition still gets one axis per anatomical direction.
    """
    dirs = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)  # column i = unit direction of voxel axis i
    best = max(
        itertools.permutations(range(3)),
        key=lambda p: abs(dirs[0, p[0]]) + abs(dirs[2, p[1]]) + abs(dirs[1, p[2]]),
    )
    sag, si, ap = best
    return SagittalAxes(
        sagittal=sag,
        superior_inferior=si,
        anterior_posterior=ap,
        flip_rows=bool(dirs[2, si] > 0),  # +S: reverse so rows go inferior
        flip_cols=bool(dirs[1, ap] > 0),  # +A: reverse so cols go posterior
        obliquity_deg=float(np.degrees(np.arccos(min(1.0, abs(dirs[0, sag]))))),
    )


@dataclass
class SagittalSlice:
    """One sagittal slice in project orientation: ``image``/``labels`` (H, W), row -> inferior, col -> posterior."""

    image: np.ndarray  # (H, W) float32
    labels: np.ndarray | None  # (H, W) int, or None
    affine: np.ndarray  # (4, 4) (row, col, slice) -> RAS mm
    spacing_mm: tuple[float, float]  # (row, col)
    index: int  # slice index along the sagittal voxel axis
    axes: SagittalAxes
    notes: list[str] = field(default_factory=list)


def cut_sagittal(
    image: np.ndarray, labels: np.ndarray | None, affine: np.ndarray, axes: SagittalAxes, index: int
) -> SagittalSlice:
    """Cut slice ``index`` along ``axes.sagittal`` from (N0, N1, N2) arrays and re-orient it.

    The output affine maps (row, col, 0) to the same RAS point as the source voxel it came from, so
    the slice stays where the header puts it; column 2 is the sagittal axis pointed towards +R.
    """
    sag, si, ap = axes.sagittal, axes.superior_inferior, axes.anterior_posterior
    shape = image.shape
    if not 0 <= index < shape[sag]:
        raise ValueError(f"slice index {index} outside 0..{shape[sag] - 1}")

    def _orient(vol: np.ndarray) -> np.ndarray:
        plane = np.transpose(vol, (si, ap, sag))[:, :, index]  # rows along S-I, cols along A-P
        if axes.flip_rows:
            plane = plane[::-1]
        if axes.flip_cols:
            plane = plane[:, ::-1]
        return np.ascontiguousarray(plane)

    # voxel index of output pixel (r, c): base + r * e_row + c * e_col
    base = np.zeros(3)
    e_row, e_col, e_sag = np.zeros(3), np.zeros(3), np.zeros(3)
    e_row[si] = -1.0 if axes.flip_rows else 1.0
    e_col[ap] = -1.0 if axes.flip_cols else 1.0
    base[si] = shape[si] - 1 if axes.flip_rows else 0
    base[ap] = shape[ap] - 1 if axes.flip_cols else 0
    base[sag] = index
    m = affine[:3, :3]
    e_sag[sag] = 1.0 if (m @ np.eye(3)[sag])[0] >= 0 else -1.0
    out_aff = np.eye(4)
    out_aff[:3, 0] = m @ e_row
    out_aff[:3, 1] = m @ e_col
    out_aff[:3, 2] = m @ e_sag
    out_aff[:3, 3] = affine[:3, :3] @ base + affine[:3, 3]

    img2d = _orient(image).astype(np.float32)
    lab2d = None if labels is None else _orient(labels)
    spacing = (float(np.linalg.norm(out_aff[:3, 0])), float(np.linalg.norm(out_aff[:3, 1])))
    return SagittalSlice(image=img2d, labels=lab2d, affine=out_aff, spacing_mm=spacing, index=int(index), axes=axes)

"""Dataset-independent conversion of one series: mid-sagittal slice, orientation checks, per-disk contours.

Every dataset reader (spider, mrspineseg, generic) turns its files into `SeriesTask`s whose label map
translates the source label values into the SPIDER convention; everything after that (slice choice,
orientation, contours, files) is shared and works on SPIDER labels: vertebrae 1.., canal 100,
disks 201.. from the bottom.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from skimage.measure import label as _connected_components

from diskrobust.data.contours import contour_to_mask, dice, mask_to_contour
from diskrobust.data.convert.geometry import SagittalSlice, Volume, cut_sagittal, find_sagittal_axes, read_volume
from diskrobust.data.levels import SPIDER_CANAL, SPIDER_DISKS, disk_level, level_height
from diskrobust.data.errors import DataError

__all__ = [
    "SeriesTask",
    "ConvertOptions",
    "apply_label_map",
    "choose_mid_slice",
    "check_orientation",
    "convert_disks",
    "convert_series",
    "check_not_2d",
]

_DISK_VALUES = np.arange(SPIDER_DISKS.start, SPIDER_DISKS.stop)


class NoDisksError(DataError):
    """A label source without any disk: the series is skipped (reported), not failed."""


@dataclass
class ConvertOptions:
    """Thresholds for accepting a disk; see docs/data.md (Real datasets) for what each guards against."""

    min_disk_area_mm2: float = 40.0  # a real mid-sagittal lumbar disk is ~300 mm^2
    min_roundtrip_dice: float = 0.9  # the 176-point contour must refill the mask this well
    keep_largest_component: bool = False  # otherwise a disk in several pieces is skipped
    grid_tolerance_mm: float = 0.05  # image and mask affines must agree this well


@dataclass
class SeriesTask:
    """One image series to convert.

    ``label_map`` maps source label values to SPIDER ones (values missing from it become background
    and are listed in the report). ``slice_provider`` replaces the mask path for sources that are not
    label volumes (generic contour files): ``provider(volume) -> SagittalSlice`` with SPIDER labels.
    """

    subject: str
    patient: str
    image: Path
    mask: Path | None = None
    label_map: Mapping[int, int] = field(default_factory=dict)
    slice_provider: Callable[[Volume], SagittalSlice] | None = None
    source_label: str = "mask"  # what the report calls the label source
    converter: str = "generic"  # spider and mrspineseg need 3D series; generic also takes one sagittal slice
    extra: dict[str, Any] = field(default_factory=dict)


def apply_label_map(labels: np.ndarray, label_map: Mapping[int, int], source: str | None = None) -> tuple[np.ndarray, list[int]]:
    """Source labels (any int array) -> SPIDER labels (uint16, same shape); also the unmapped nonzero values."""
    arr = np.asarray(labels)
    if not np.issubdtype(arr.dtype, np.integer):
        rounded = np.rint(arr)
        if not np.array_equal(rounded, arr):
            raise DataError(source, "label volume holds non-integer values (is it an image rather than a mask?)")
        arr = rounded
    arr = arr.astype(np.int64, copy=False)
    lo, hi = int(arr.min()), int(arr.max())
    if lo >= 0 and hi < 1 << 20:
        # a lookup table: linear time, where np.unique would sort the whole volume
        present = np.flatnonzero(np.bincount(arr.ravel(), minlength=hi + 1))
        lut = np.zeros(hi + 1, dtype=np.uint16)
        for v in present:
            lut[v] = label_map.get(int(v), 0)
        mapped = lut[arr]
    else:
        present, inverse = np.unique(arr, return_inverse=True)
        mapped = np.array([label_map.get(int(v), 0) for v in present], dtype=np.uint16)[inverse].reshape(arr.shape)
    ignored = [int(v) for v in present if v != 0 and int(v) not in label_map]
    return mapped, ignored


def choose_mid_slice(labels: np.ndarray, sagittal_axis: int, source: str | None = None) -> tuple[int, str]:
    """Index of the mid-sagittal slice along ``sagittal_axis`` of a SPIDER label volume (N0, N1, N2).

    With a canal label: the slice with the largest canal area, ties (within 2 %) broken towards the
    canal's centre of mass along L-R (the canal is widest at the midline). Without one: the disks'
    centre of mass along L-R (disks are symmetric about the midline).
    """
    other = tuple(a for a in range(3) if a != sagittal_axis)
    idx = np.arange(labels.shape[sagittal_axis])
    canal = np.count_nonzero(labels == SPIDER_CANAL, axis=other)
    if canal.any():
        com = float((idx * canal).sum() / canal.sum())
        candidates = np.flatnonzero(canal >= 0.98 * canal.max())
        best = int(candidates[np.argmin(np.abs(candidates - com))])
        return best, f"largest spinal-canal area ({int(canal[best])} px; canal centre of mass at slice {com:.1f})"
    disks = np.count_nonzero(np.isin(labels, _DISK_VALUES), axis=other)
    if disks.any():
        com = float((idx * disks).sum() / disks.sum())
        return int(round(com)), f"disks' centre of mass along L-R (slice {com:.1f}; no canal label)"
    raise DataError(source, "no spinal canal (100) or disk (201..) labels: cannot choose the mid-sagittal slice")


def _label_means(labels: np.ndarray) -> dict[int, tuple[float, float]]:
    out = {}
    for v in np.unique(labels):
        if v:
            rows, cols = np.nonzero(labels == v)
            out[int(v)] = (float(rows.mean()), float(cols.mean()))
    return out


def spine_runs_along_cols(labels: np.ndarray) -> bool:
    """True when the centroids of the labelled levels (disks, vertebrae) spread more along cols than rows.

    The lumbar spine runs S-I (rows); even with lordosis its levels spread several times less A-P.
    """
    cents = np.array([m for v, m in _label_means(labels).items() if level_height(v) is not None])
    if len(cents) < 2:
        return False
    return bool(np.ptp(cents[:, 1]) > np.ptp(cents[:, 0]))


def check_orientation(sl: SagittalSlice, min_extension_mm: float = 10.0) -> tuple[bool, bool, list[str]]:
    """Does the header-oriented slice need its rows/cols reversed to match the anatomy in its labels?

    Rows: higher spine levels (SPIDER numbers) must sit higher in the image (smaller row).
    Cols: the spinal canal lies posterior to (right of) the disk beside it. Without a canal label the
    vertebrae decide when their masks include posterior elements: they then reach much further
    posterior than anterior of the disks. Returns ``(flip_rows, flip_cols, notes)``.
    """
    labels = sl.labels
    notes: list[str] = []
    flip_rows = flip_cols = False
    means = _label_means(labels)
    heights = [(level_height(v), m[0]) for v, m in means.items() if level_height(v) is not None]
    if len({h for h, _ in heights}) >= 2:
        h, r = np.array(heights).T
        if np.polyfit(h, r, 1)[0] > 0:
            flip_rows = True
            notes.append("rows reversed: the labels put higher spine levels lower than the header's S-I direction says")
    else:
        notes.append("S-I direction from the header only (fewer than two labelled levels in the slice)")

    disks = [v for v in means if v in SPIDER_DISKS]
    votes = 0
    evidence = ""
    if SPIDER_CANAL in means and disks:
        canal = labels == SPIDER_CANAL
        for v in disks:
            rows, cols = np.nonzero(labels == v)
            band = canal[rows.min() : rows.max() + 1]
            if band.any():
                votes += 1 if np.nonzero(band)[1].mean() > cols.mean() else -1
        if votes == 0:  # no canal beside any disk: compare the overall positions
            votes = 1 if means[SPIDER_CANAL][1] > np.mean([means[v][1] for v in disks]) else -1
        evidence = "canal"
    elif disks:
        vert = np.isin(labels, np.r_[1:26, 101:126])
        sc = sl.spacing_mm[1]
        for v in disks:
            rows, cols = np.nonzero(labels == v)
            h = rows.max() - rows.min() + 1
            band = vert[max(0, rows.min() - h) : rows.max() + h + 1]
            if band.any():
                vcols = np.nonzero(band)[1]
                ext_post = (vcols.max() - cols.max()) * sc
                ext_ant = (cols.min() - vcols.min()) * sc
                if abs(ext_post - ext_ant) > min_extension_mm:
                    votes += 1 if ext_post > ext_ant else -1
        evidence = "vertebrae's posterior elements"
    if votes < 0:
        flip_cols = True
        notes.append(f"columns reversed: the {evidence} lies anterior to the disks in the header's A-P direction")
    elif votes == 0:
        notes.append("A-P direction from the header only (no canal label and no posterior elements in the vertebra labels)")
    else:
        notes.append(f"A-P direction from the header, confirmed by the {evidence}")
    return flip_rows, flip_cols, notes


def convert_disks(
    labels: np.ndarray,
    spacing_mm: tuple[float, float],
    expected: list[int],
    options: ConvertOptions,
    source: str | None = None,
) -> tuple[list[dict], list[dict]]:
    """176-point contours of the disks in a SPIDER label slice (H, W), project orientation.

    ``expected``: disk labels to account for (those present anywhere in the source volume).
    Returns ``(converted, skipped)``: converted = {level, label, points_px (176, 2), area_mm2,
    roundtrip_dice, notes}; skipped = {level, label, reason}. Every expected or present disk lands in
    one of the two lists.
    """
    h, w = labels.shape
    px_area = spacing_mm[0] * spacing_mm[1]
    present = {int(v) for v in np.unique(labels) if int(v) in SPIDER_DISKS}
    converted, skipped = [], []
    for lab in sorted(set(expected) | present):
        level = disk_level(lab)
        entry = {"level": level, "label": lab}
        if lab not in present:
            skipped.append({**entry, "reason": "not in the mid-sagittal slice (present elsewhere in the volume)"})
            continue
        mask = labels == lab
        area = float(mask.sum() * px_area)
        if mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any():
            skipped.append({**entry, "reason": "partial: cut by the edge of the field of view"})
            continue
        if area < options.min_disk_area_mm2:
            skipped.append({**entry, "reason": f"too small: {area:.1f} mm^2 < {options.min_disk_area_mm2} mm^2"})
            continue
        comps, n = _connected_components(mask, connectivity=2, return_num=True)
        notes = []
        if n > 1:
            sizes = np.bincount(comps.ravel())[1:]
            if not options.keep_largest_component:
                skipped.append({**entry, "reason": f"{n} connected components (sizes {sorted(sizes.tolist(), reverse=True)} px)"})
                continue
            mask = comps == int(np.argmax(sizes)) + 1
            notes.append(f"kept the largest of {n} connected components ({int(sizes.max())} of {int(sizes.sum())} px)")
        try:
            pts = mask_to_contour(mask, source=f"{source} disk {level}")
        except DataError as err:
            skipped.append({**entry, "reason": f"no contour: {err.problem}"})
            continue
        rt = dice(contour_to_mask(pts, (h, w)), mask)
        if rt < options.min_roundtrip_dice:
            skipped.append({**entry, "reason": f"contour does not reproduce the mask (Dice {rt:.3f} < {options.min_roundtrip_dice})"})
            continue
        converted.append({**entry, "points_px": pts, "area_mm2": round(area, 1), "roundtrip_dice": round(rt, 4), "notes": notes})
    return converted, skipped


def _grid_error_mm(a: np.ndarray, b: np.ndarray, shape) -> float:
    """Largest distance (mm) between where two affines put the corners of a voxel grid of ``shape``."""
    corners = np.array(np.meshgrid(*[[0, n - 1] for n in shape], indexing="ij")).reshape(3, -1)
    corners = np.vstack([corners, np.ones(corners.shape[1])])
    return float(np.abs(a @ corners - b @ corners).max())


def align_mask_to_image(image: Volume, mask: Volume, tol_mm: float) -> tuple[np.ndarray, str | None]:
    """The mask's array on the image's voxel grid; ``(array, note or None)``.

    The same physical grid stored with another axis order or direction (a DICOM reader sorts slices
    along the normal of the row/column cosines, a NIfTI writer may not) is re-indexed by transposes
    and flips; any other difference (shift, spacing, rotation) raises DataError naming the mask.
    """
    if mask.array.shape == image.array.shape and _grid_error_mm(image.affine, mask.affine, image.array.shape) <= tol_mm:
        return mask.array, None
    # mask index -> image index; a pure re-indexing is a signed permutation plus 0 / n-1 offsets
    p = np.linalg.inv(image.affine) @ mask.affine
    r = np.round(p[:3, :3])
    perm = [int(np.flatnonzero(r[i])[0]) if np.count_nonzero(r[i]) == 1 else -1 for i in range(3)]
    if sorted(perm) == [0, 1, 2] and np.all(np.abs(r).sum(0) == 1):
        arr = np.transpose(mask.array, perm)
        for i in range(3):
            if r[i, perm[i]] < 0:
                arr = np.flip(arr, i)
        m2 = np.zeros((4, 4))
        m2[3, 3] = 1
        for i in range(3):  # affine of the re-indexed mask, to check that it now matches
            col = mask.affine[:3, perm[i]] * r[i, perm[i]]
            m2[:3, i] = col
        start = np.array([0 if r[i, perm[i]] > 0 else mask.array.shape[perm[i]] - 1 for i in range(3)])
        src = np.zeros(3)
        src[perm] = start
        m2[:3, 3] = mask.affine[:3, :3] @ src + mask.affine[:3, 3]
        if arr.shape == image.array.shape and _grid_error_mm(image.affine, m2, image.array.shape) <= tol_mm:
            return np.ascontiguousarray(arr), "mask stored with another axis order/direction than the image: re-indexed onto the image grid"
    if mask.array.shape != image.array.shape:
        raise DataError(mask.path, f"mask shape {mask.array.shape} differs from the image's {image.array.shape} ({image.path})")
    err = _grid_error_mm(image.affine, mask.affine, image.array.shape)
    raise DataError(mask.path, f"mask geometry differs from the image's ({image.path}) by up to {err:.3f} mm")


def slice_from_mask(image: Volume, task: SeriesTask, options: ConvertOptions) -> tuple[SagittalSlice, list[int], list[int]]:
    """Read the mask, map it to SPIDER labels, choose and orient the mid-sagittal slice.

    Returns ``(slice, disk labels in the volume, ignored source labels)``.
    """
    mask = read_volume(task.mask, "mask")
    mask_array, grid_note = align_mask_to_image(image, mask, options.grid_tolerance_mm)
    labels, ignored = apply_label_map(mask_array, task.label_map, str(task.mask))
    disks_3d = [int(v) for v in np.flatnonzero(np.bincount(labels.ravel())) if int(v) in SPIDER_DISKS]
    if not disks_3d:
        raise NoDisksError(task.mask, "mask has no disk labels (after mapping to SPIDER labels)")
    axes = find_sagittal_axes(image.affine)
    index, method = choose_mid_slice(labels, axes.sagittal, str(task.mask))
    sl = cut_sagittal(image.array, labels, image.affine, axes, index)
    swap_note = []
    if spine_runs_along_cols(sl.labels):
        # the header's S-I and A-P axes are the wrong way round: the signs then come from the labels alone
        axes = replace(axes, superior_inferior=axes.anterior_posterior, anterior_posterior=axes.superior_inferior, flip_rows=False, flip_cols=False)
        sl = cut_sagittal(image.array, labels, image.affine, axes, index)
        swap_note = ["S-I and A-P axes swapped: the labelled spine runs along the header's A-P axis"]
    flip_rows, flip_cols, notes = check_orientation(sl)
    notes = swap_note + notes
    if flip_rows or flip_cols:
        axes = replace(axes, flip_rows=axes.flip_rows ^ flip_rows, flip_cols=axes.flip_cols ^ flip_cols)
        sl = cut_sagittal(image.array, labels, image.affine, axes, index)
    sl.notes = [f"mid-sagittal slice: {method}", *notes, *([grid_note] if grid_note else [])]
    return sl, disks_3d, ignored


def check_not_2d(image: Volume, converter: str) -> None:
    """Refuse a single-slice image where the converter needs a 3D series (DataError naming the file).

    SPIDER and MRSpineSeg are 3D datasets: a 2D file there is a slip. The generic converter also takes
    one sagittal slice (its singleton axis along L-R), not an axial or coronal one.
    """
    if not image.is_2d:
        return
    shape = tuple(image.file_shape or image.array.shape)
    if converter != "generic":
        raise DataError(image.path, f"a 2D image (shape {shape}), the {converter} converter needs a 3D sagittal series")
    axes = find_sagittal_axes(image.affine)
    if image.array.shape[axes.sagittal] != 1:
        raise DataError(
            image.path,
            f"a 2D image (shape {shape}) that is not a sagittal slice (its header puts the single slice across "
            "the S-I or A-P axis), the generic converter needs a 3D series or one sagittal slice",
        )


def convert_series(task: SeriesTask, out_dir: Path, options: ConvertOptions) -> dict:
    """Convert one series and write images/, labels/, contours/ files; returns its report entry.

    Never raises for bad data: a bad file (or any error converting it) gives ``status: "failed"`` with
    the error naming the file, a series without a usable disk ``status: "skipped"``; nothing is written
    for either.
    """
    from diskrobust.data.dataset_io import write_contours_json, write_image_nifti

    rep: dict[str, Any] = {
        "subject": task.subject,
        "patient": task.patient,
        "image": str(task.image),
        task.source_label: str(task.mask) if task.mask is not None else task.extra.get("source"),
        **{k: v for k, v in task.extra.items() if k != "source"},
        "status": "failed",
    }
    try:
        image = read_volume(task.image, "image")
        check_not_2d(image, task.converter)
        if task.slice_provider is not None:
            sl = task.slice_provider(image)
            expected = [int(v) for v in np.unique(sl.labels) if int(v) in SPIDER_DISKS]
            ignored: list[int] = []
        else:
            sl, expected, ignored = slice_from_mask(image, task, options)
        axes = sl.axes
        rep.update(
            {
                "volume_shape": list(image.array.shape),
                "sagittal_axis": axes.sagittal,
                "slice_index": sl.index,
                "num_slices": int(image.array.shape[axes.sagittal]),
                "obliquity_deg": round(axes.obliquity_deg, 2),
                "shape": list(sl.image.shape),
                "spacing_mm": [round(s, 5) for s in sl.spacing_mm],
                "orientation_notes": sl.notes,
            }
        )
        if ignored:
            rep["ignored_labels"] = ignored
        if abs(sl.spacing_mm[0] / sl.spacing_mm[1] - 1) > 0.1:
            rep["orientation_notes"].append(f"anisotropic in-plane pixels {sl.spacing_mm} mm (row, col): kept as they are")
        if float(sl.image.max()) == float(sl.image.min()):
            raise DataError(task.image, f"the mid-sagittal slice {sl.index} is constant")
        converted, skipped = convert_disks(sl.labels, sl.spacing_mm, expected, options, source=str(task.image))
        rep["disks_converted"] = [{k: v for k, v in d.items() if k != "points_px"} for d in converted]
        rep["disks_skipped"] = skipped
        if not converted:
            rep["status"] = "skipped"
            rep["reason"] = "no disk could be converted"
            return rep
        out_dir = Path(out_dir)
        rel = {
            "image": f"images/{task.subject}.nii.gz",
            "label": f"labels/{task.subject}.nii.gz",
            "contours": f"contours/{task.subject}.json",
        }
        write_image_nifti(out_dir / rel["image"], sl.image, sl.affine)
        write_image_nifti(out_dir / rel["label"], sl.labels.astype(np.uint16), sl.affine)
        write_contours_json(out_dir / rel["contours"], task.subject, sl.image.shape, sl.spacing_mm, converted)
        rep["outputs"] = rel
        rep["status"] = "converted"
    except NoDisksError as err:
        rep["status"] = "skipped"
        rep["reason"] = str(err)
    except DataError as err:
        rep["error"] = str(err)
    except Exception as err:  # noqa: BLE001 - one odd file must not stop a 400-series run; the report names it
        rep["error"] = f"{task.image}: unexpected {type(err).__name__}: {err}"
    return rep

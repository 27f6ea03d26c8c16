"""Reading and writing dataset files: the only module that touches images/, labels/, contours/ and datalist.json.

Formats are fixed by docs/architecture.md (Conventions). Every reader validates what it reads and raises
:class:`~diskrobust.data.errors.DataError` naming the file and the problem; every writer is atomic (a temp
file in the same folder, then ``os.replace``) and deterministic (same input -> same bytes, gzip mtime 0).
"""

from __future__ import annotations

import gzip
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from diskrobust import NUM_POINTS
from diskrobust.data.contours import point_order_problem
from diskrobust.data.errors import DataError

CONTOUR_FORMAT = "diskrobust-contours/1"
SPLITS = ("training", "validation", "test")
# gzip level 1: noisy float32 images barely compress at any level (937 vs 933 kB for 512 x 512 at level 1 vs 9,
# benchmarks/phantom_speed.py), so take the fastest; label maps shrink ~50x at any level
_GZIP_LEVEL = 1

__all__ = [
    "CONTOUR_FORMAT",
    "SPLITS",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "write_image_nifti",
    "read_image",
    "sagittal_affine",
    "write_contours_json",
    "read_contours_json",
    "write_datalist",
    "load_datalist",
]


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temp file in the same folder and ``os.replace`` (never a half file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) atomically (see `atomic_write_bytes`)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def _json_default(obj):
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _finite_or_none(obj):
    """NaN/Inf -> None recursively: strict JSON has no NaN (a missing network head gives NaN metrics)."""
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_none(v) for v in obj]
    return obj


def atomic_write_json(path: str | Path, obj: Any, indent: int = 2) -> Path:
    """Strict JSON (NaN/Inf written as null; numpy scalars and arrays, paths converted), atomically."""
    text = json.dumps(_finite_or_none(obj), indent=indent, default=_json_default, allow_nan=False)
    return atomic_write_text(path, text + "\n")


def _atomic_write_json(path: str | Path, obj: Any) -> Path:
    """The dataset files' JSON layout (indent 1), through the one atomic writer."""
    return atomic_write_json(path, obj, indent=1)


def sagittal_affine(spacing_mm: Sequence[float], slice_thickness_mm: float = 4.0, shape: Sequence[int] | None = None) -> np.ndarray:
    """The contract's (4, 4) affine for a 2D mid-sagittal array ``img[row, col]``.

    Column 0 (row index) points to -S with length spacing_row, column 1 (col index) to -A with length
    spacing_col, column 2 to +R with the slice thickness. With ``shape`` the image centre maps to the origin.
    """
    sr, sc = (float(s) for s in spacing_mm)
    aff = np.zeros((4, 4), dtype=np.float64)
    aff[2, 0] = -sr  # row -> -S (inferior)
    aff[1, 1] = -sc  # col -> -A (posterior)
    aff[0, 2] = float(slice_thickness_mm)  # implicit axis -> +R
    aff[3, 3] = 1.0
    if shape is not None:
        centre = np.array([(shape[0] - 1) / 2.0, (shape[1] - 1) / 2.0, 0.0])
        aff[:3, 3] = -aff[:3, :3] @ centre
    return aff


def write_image_nifti(path: str | Path, image2d: np.ndarray, affine: np.ndarray) -> Path:
    """Write a 2D ``(H, W)`` array as NIfTI-1 (``.nii`` or ``.nii.gz``), atomically and byte-deterministically.

    float arrays are stored as float32, integer arrays keep their dtype (labels: uint16).
    """
    import nibabel as nib

    path = Path(path)
    arr = np.asarray(image2d)
    if arr.ndim != 2:
        raise DataError(path, f"expected a 2D (H, W) array to write, got shape {arr.shape}")
    if np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float32)
        if not np.isfinite(arr).all():
            raise DataError(path, "refusing to write an image with NaN/Inf voxels")
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise DataError(path, f"affine must be 4x4, got {affine.shape}")
    img = nib.Nifti1Image(np.ascontiguousarray(arr), affine)
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    raw = img.to_bytes()
    if path.name.endswith(".gz"):
        # mtime=0 and no file name in the header: same array -> same bytes
        raw = gzip.compress(raw, compresslevel=_GZIP_LEVEL, mtime=0)
    elif not path.name.endswith(".nii"):
        raise DataError(path, "image files must end with .nii or .nii.gz")
    return atomic_write_bytes(path, raw)


def read_image(path: str | Path) -> tuple[np.ndarray, dict]:
    """Read a 2D image (or 3D with one singleton axis) from NIfTI.

    Returns ``(array (H, W) float32, meta)`` with ``meta = {"spacing_mm": (row, col), "affine": (4, 4)
    ndarray, "path": str}``. Raises DataError for a missing, unreadable or corrupt file, a shape that is
    not 2D after dropping one singleton axis, and NaN/Inf voxels.
    """
    import nibabel as nib

    path = Path(path)
    if not path.is_file():
        raise DataError(path, "image file not found")
    if not (path.name.endswith(".nii") or path.name.endswith(".nii.gz")):
        raise DataError(path, "unsupported image format (expected .nii or .nii.gz)")
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj)
        affine = np.asarray(img.affine, dtype=np.float64)
    except Exception as err:  # nibabel raises many types for truncated/garbled files
        raise DataError(path, f"cannot read image (corrupt or not NIfTI): {type(err).__name__}: {err}") from err
    if data.ndim == 3:
        singletons = [a for a in range(3) if data.shape[a] == 1]
        if not singletons:
            raise DataError(path, f"expected a 2D image or 3D with a singleton axis, got shape {data.shape}")
        axis = singletons[-1]
        keep = [a for a in range(3) if a != axis]
        data = np.take(data, 0, axis=axis)
        # the affine columns of the kept axes, the dropped one moves to column 2
        cols = np.concatenate([affine[:, keep], affine[:, [axis]], affine[:, [3]]], axis=1)
        affine = cols
    elif data.ndim != 2:
        raise DataError(path, f"expected a 2D image or 3D with a singleton axis, got shape {data.shape}")
    if data.shape[0] < 2 or data.shape[1] < 2:
        raise DataError(path, f"image too small: shape {data.shape}")
    out = data.astype(np.float32, copy=False)
    if not np.isfinite(out).all():
        bad = int((~np.isfinite(out)).sum())
        raise DataError(path, f"image has {bad} NaN/Inf voxels")
    # NIfTI keeps the affine in float32: round away its last digits (1.2 reads back as 1.2, not 1.2000000477)
    spacing = (round(float(np.linalg.norm(affine[:3, 0])), 6), round(float(np.linalg.norm(affine[:3, 1])), 6))
    if not all(np.isfinite(spacing)) or min(spacing) <= 0:
        raise DataError(path, f"invalid voxel spacing {spacing} in the affine")
    return np.ascontiguousarray(out), {"spacing_mm": spacing, "affine": affine, "path": str(path)}


def write_contours_json(
    path: str | Path,
    subject: str,
    shape: Sequence[int],
    spacing_mm: Sequence[float],
    disks: Sequence[Mapping[str, Any]],
) -> Path:
    """Write per-disk 176-point contours in the ``diskrobust-contours/1`` format.

    ``disks``: dicts with ``level``, ``label`` and ``points_px`` (176, 2) (x=col, y=row); ``points_mm`` is
    computed as ``points_px * [spacing_col, spacing_row]``.
    """
    sr, sc = (float(s) for s in spacing_mm)
    out_disks = []
    for i, disk in enumerate(disks):
        pts = np.asarray(disk["points_px"], dtype=np.float64)
        if pts.shape != (NUM_POINTS, 2) or not np.isfinite(pts).all():
            raise DataError(path, f"disk {i} ({disk.get('level')}): points_px must be finite ({NUM_POINTS}, 2), got {pts.shape}")
        mm = pts * np.array([sc, sr])
        out_disks.append(
            {
                "level": str(disk["level"]),
                "label": int(disk["label"]),
                "points_px": np.round(pts, 4).tolist(),
                "points_mm": np.round(mm, 4).tolist(),
            }
        )
    doc = {
        "format": CONTOUR_FORMAT,
        "subject": str(subject),
        "shape": [int(shape[0]), int(shape[1])],
        "spacing_mm": [sr, sc],
        "num_points": NUM_POINTS,
        "disks": out_disks,
    }
    return _atomic_write_json(path, doc)


def _load_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise DataError(path, f"{what} not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(path, f"{what} is not valid JSON: {err}") from err


def read_contours_json(path: str | Path, image_shape: Sequence[int] | None = None) -> dict:
    """Read and validate a contour file; ``points_px``/``points_mm`` come back as float32 (176, 2) arrays.

    Checks the format tag, 176 finite points per disk and, when ``image_shape`` (H, W) is given, that the
    points lie inside the image. Raises DataError naming the file, the disk and the problem.
    """
    path = Path(path)
    doc = _load_json(path, "contour file")
    if not isinstance(doc, dict):
        raise DataError(path, "contour file must hold a JSON object")
    if doc.get("format") != CONTOUR_FORMAT:
        raise DataError(path, f"unknown contour format {doc.get('format')!r} (expected {CONTOUR_FORMAT!r})")
    for key in ("subject", "shape", "spacing_mm", "disks"):
        if key not in doc:
            raise DataError(path, f"missing key {key!r}")
    try:
        shape = [int(v) for v in doc["shape"]]
        spacing = [float(v) for v in doc["spacing_mm"]]
    except (TypeError, ValueError) as err:
        raise DataError(path, f"'shape' and 'spacing_mm' must be two numbers each: {err}") from err
    if len(shape) != 2 or len(spacing) != 2 or min(spacing) <= 0 or not np.isfinite(spacing).all():
        raise DataError(path, f"bad shape {doc['shape']} or spacing_mm {doc['spacing_mm']}")
    if image_shape is not None and tuple(int(s) for s in image_shape[-2:]) != tuple(shape):
        raise DataError(path, f"contour shape {tuple(shape)} does not match the image shape {tuple(image_shape[-2:])}")
    if not isinstance(doc["disks"], list) or not doc["disks"]:
        raise DataError(path, "'disks' must be a non-empty list")
    disks = []
    for i, disk in enumerate(doc["disks"]):
        name = f"disk {i}" + (f" ({disk.get('level')})" if isinstance(disk, dict) and "level" in disk else "")
        if not isinstance(disk, dict) or "points_px" not in disk or "label" not in disk:
            raise DataError(path, f"{name}: needs 'level', 'label' and 'points_px'")
        try:
            pts = np.asarray(disk["points_px"], dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise DataError(path, f"{name}: points_px is not a numeric array: {err}") from err
        if pts.shape != (NUM_POINTS, 2):
            raise DataError(path, f"{name}: expected {NUM_POINTS} points of (x, y), got shape {pts.shape}")
        if not np.isfinite(pts).all():
            raise DataError(path, f"{name}: points_px has NaN/Inf values")
        order = point_order_problem(pts)
        if order is not None:
            raise DataError(path, f"{name}: {order} (docs/architecture.md, contour point order)")
        if image_shape is not None:
            h, w = shape
            outside = (pts[:, 0] < -0.5) | (pts[:, 0] > w - 0.5) | (pts[:, 1] < -0.5) | (pts[:, 1] > h - 0.5)
            if outside.any():
                raise DataError(path, f"{name}: {int(outside.sum())} points lie outside the {h}x{w} image (first: point {int(np.argmax(outside))})")
        mm = pts * np.array([spacing[1], spacing[0]])
        disks.append(
            {
                "level": str(disk.get("level", f"disk{i}")),
                "label": int(disk["label"]),
                "points_px": pts.astype(np.float32),
                "points_mm": mm.astype(np.float32),
            }
        )
    return {
        "format": CONTOUR_FORMAT,
        "subject": str(doc["subject"]),
        "shape": tuple(shape),
        "spacing_mm": tuple(spacing),
        "num_points": NUM_POINTS,
        "disks": disks,
        "path": str(path),
    }


def write_datalist(path: str | Path, splits: Mapping[str, Sequence[Mapping[str, Any]]]) -> Path:
    """Write a MONAI datalist ``{"training": [...], "validation": [...], "test": [...]}`` (paths as given)."""
    doc = {name: [dict(e) for e in entries] for name, entries in splits.items()}
    return _atomic_write_json(path, doc)


def load_datalist(path: str | Path, split: str) -> list[dict]:
    """The entries of one split with their file paths made absolute (relative to the datalist's folder).

    Raises DataError for a missing/corrupt datalist, an unknown or empty split, and an entry whose file is
    missing (the message names the datalist, the entry and the missing path).
    """
    path = Path(path)
    doc = _load_json(path, "datalist")
    if not isinstance(doc, dict):
        raise DataError(path, "datalist must hold a JSON object of splits")
    if split not in doc:
        raise DataError(path, f"unknown split {split!r}; the datalist has {sorted(doc)}")
    entries = doc[split]
    if not isinstance(entries, list) or not entries:
        raise DataError(path, f"split {split!r} is empty")
    base = path.resolve().parent
    out = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or "image" not in entry:
            raise DataError(path, f"{split}[{i}]: entry must be an object with an 'image' path")
        name = entry.get("subject", f"{split}[{i}]")
        resolved = dict(entry)
        for key in ("image", "label", "contours"):
            if key not in entry:
                continue
            p = Path(entry[key])
            p = p if p.is_absolute() else base / p
            if not p.is_file():
                raise DataError(path, f"entry {name!r} ({split}[{i}]): {key} file missing: {p}")
            resolved[key] = str(p)
        out.append(resolved)
    return out

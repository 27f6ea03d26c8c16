"""Any ITK/nibabel-readable image (NIfTI, MHA, NRRD, a DICOM series folder) with a disk mask or contour files.

Files are paired by patterns relative to ``--root`` with a ``{subject}`` placeholder, e.g.
``--image-pattern "img/{subject}.nii.gz" --mask-pattern "seg/{subject}_seg.nii.gz"``; a pattern may
name folders (a DICOM series per folder: ``--image-pattern "dicom/{subject}"``).

Labels come from the command line: ``--disk-labels "L5/S1=11,L4/L5=12"`` (level=value) or
``--disk-labels 201,202`` (values already in SPIDER numbering), optional ``--canal-label`` and
``--vertebra-labels "L5=2,L4=3"``; other mask values become background and are listed in the report.

Contour files (instead of a mask) are JSON in world mm::

    {"space": "LPS", "disks": [{"level": "L4/L5", "points": [[x, y, z], ...]}, ...]}

``space`` is "LPS" (ITK/DICOM) or "RAS" (NIfTI); ``points`` an ordered closed outline of the disk
(any number >= 3 of points, any start) lying in one sagittal plane of the image. The outline is
filled in the mid-sagittal slice and re-traced with the project's 176-point recipe.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from diskrobust.data.contours import contour_to_mask
from diskrobust.data.convert.common import SeriesTask, check_orientation
from diskrobust.data.convert.geometry import SagittalSlice, Volume, cut_sagittal, find_sagittal_axes
from diskrobust.data.levels import SPIDER_CANAL, SPIDER_DISKS, disk_level, level_to_disk_label, vertebra_name
from diskrobust.data.convert.spider import subject_name
from diskrobust.data.errors import DataError

__all__ = [
    "parse_disk_labels",
    "parse_vertebra_labels",
    "build_label_map",
    "pair_files",
    "read_world_contours",
    "contour_slice_provider",
    "find_generic_series",
]


def parse_disk_labels(spec: str) -> dict[int, int]:
    """``"L5/S1=11,L4/L5=12"`` or ``"201,202"`` -> {source value: SPIDER disk label}."""
    out: dict[int, int] = {}
    for item in (s.strip() for s in str(spec).split(",")):
        if not item:
            continue
        if "=" in item:
            level, value = (t.strip() for t in item.rsplit("=", 1))
            target = level_to_disk_label(level)
        else:
            level, value = None, item
        try:
            v = int(value)
        except ValueError:
            raise ValueError(f"--disk-labels item {item!r}: the label value must be an integer") from None
        if level is None:
            if v not in SPIDER_DISKS:
                raise ValueError(f"--disk-labels item {item!r}: a bare value must be a SPIDER disk label 201..225; use LEVEL=VALUE otherwise")
            target = v
        if v in out:
            raise ValueError(f"--disk-labels: value {v} given twice")
        if target in out.values():
            raise ValueError(f"--disk-labels: level {disk_level(target)} given twice")
        out[v] = target
    if not out:
        raise ValueError("--disk-labels is empty")
    return out


def parse_vertebra_labels(spec: str | None) -> dict[int, int]:
    """``"L5=2,L4=3,T12=7"`` -> {source value: SPIDER vertebra number (L5 = 1)}."""
    names = {vertebra_name(k): k for k in range(1, 25)}
    out: dict[int, int] = {}
    for item in (s.strip() for s in str(spec or "").split(",")):
        if not item:
            continue
        name, _, value = item.partition("=")
        key = name.strip().upper()
        if key not in names or not value.strip().lstrip("-").isdigit():
            raise ValueError(f"--vertebra-labels item {item!r}: expected NAME=VALUE with NAME like L5, L1, T12")
        out[int(value)] = names[key]
    return out


def build_label_map(disk_labels: str, canal_label: int | None = None, vertebra_labels: str | None = None) -> dict[int, int]:
    """The source -> SPIDER label map from the command-line options; a value may be used once."""
    disks = parse_disk_labels(disk_labels)
    vert = parse_vertebra_labels(vertebra_labels)
    label_map: dict[int, int] = {}
    for part in (disks, vert, {} if canal_label is None else {int(canal_label): SPIDER_CANAL}):
        for k, v in part.items():
            if k in label_map:
                raise ValueError(f"label value {k} is given for two structures")
            label_map[k] = v
    return label_map


def _pattern_regex(pattern: str) -> re.Pattern:
    if pattern.count("{subject}") != 1:
        raise ValueError(f"pattern {pattern!r} must contain '{{subject}}' exactly once")
    head, tail = pattern.split("{subject}")
    return re.compile("^" + re.escape(head) + r"(?P<subject>[^/]+?)" + re.escape(tail) + "$")


def pair_files(root: str | Path, image_pattern: str, partner_pattern: str, partner_name: str) -> tuple[list[tuple[str, Path, Path]], list[dict]]:
    """Match ``image_pattern`` under ``root`` and find each match's partner file.

    Returns ``([(subject, image, partner)], unpaired)`` sorted by subject; unpaired lists images
    without a partner and partners without an image.
    """
    root = Path(root)
    found = {}
    for pattern in (image_pattern, partner_pattern):
        rx = _pattern_regex(pattern)
        matches = {}
        for p in sorted(root.glob(pattern.replace("{subject}", "*"))):
            m = rx.match(p.relative_to(root).as_posix())
            if m:
                matches[m.group("subject")] = p
        found[pattern] = matches
    images, partners = found[image_pattern], found[partner_pattern]
    pairs, unpaired = [], []
    for subject, img in sorted(images.items()):
        if subject in partners:
            pairs.append((subject, img, partners[subject]))
        else:
            unpaired.append({"path": str(img), "problem": f"no {partner_name} {partner_pattern.replace('{subject}', subject)}"})
    unpaired += [
        {"path": str(p), "problem": f"no image {image_pattern.replace('{subject}', s)}"} for s, p in sorted(partners.items()) if s not in images
    ]
    return pairs, unpaired


def read_world_contours(path: str | Path) -> list[tuple[int, np.ndarray]]:
    """A world-coordinate contour file -> [(SPIDER disk label, points (N, 3) RAS mm)]."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(path, f"cannot read the contour file: {err}") from err
    if not isinstance(doc, dict) or not isinstance(doc.get("disks"), list) or not doc["disks"]:
        raise DataError(path, "contour file must be an object with a non-empty 'disks' list")
    space = str(doc.get("space", "LPS")).upper()
    if space not in ("LPS", "RAS"):
        raise DataError(path, f"'space' must be 'LPS' or 'RAS', got {space!r}")
    out = []
    for i, disk in enumerate(doc["disks"]):
        try:
            label = level_to_disk_label(disk["level"])
            pts = np.asarray(disk["points"], dtype=np.float64)
        except (KeyError, TypeError, ValueError) as err:
            raise DataError(path, f"disk {i}: needs 'level' (like 'L4/L5') and 'points' [[x, y, z], ...]: {err}") from err
        if pts.ndim != 2 or pts.shape[1] != 3 or len(pts) < 3 or not np.isfinite(pts).all():
            raise DataError(path, f"disk {i} ({disk['level']}): 'points' must be >= 3 finite [x, y, z] points, got shape {pts.shape}")
        if space == "LPS":
            pts = pts * np.array([-1.0, -1.0, 1.0])
        out.append((label, pts))
    return out


def contour_slice_provider(path: Path, max_offplane_mm: float = 2.0):
    """A `SeriesTask.slice_provider` filling world contours into the image's sagittal slice.

    The slice is the one nearest to the contours' mean L-R position; a point further than
    ``max_offplane_mm`` from it is an error (the contours are not in one sagittal plane).
    """

    def provider(image: Volume) -> SagittalSlice:
        disks = read_world_contours(path)
        axes = find_sagittal_axes(image.affine)
        inv = np.linalg.inv(image.affine)
        all_pts = np.vstack([p for _, p in disks])
        vox = (inv[:3, :3] @ all_pts.T).T + inv[:3, 3]
        index = int(round(float(vox[:, axes.sagittal].mean())))
        n = image.array.shape[axes.sagittal]
        if not 0 <= index < n:
            raise DataError(path, f"the contours lie outside the image volume (slice {index} of 0..{n - 1})")
        thickness = float(image.spacing[axes.sagittal])
        off = np.abs(vox[:, axes.sagittal] - index).max() * thickness
        if off > max_offplane_mm:
            raise DataError(path, f"contour points lie up to {off:.1f} mm off the sagittal slice {index}: not one sagittal plane")

        def fill(ax) -> SagittalSlice:
            sl = cut_sagittal(image.array, None, image.affine, ax, index)
            inv2 = np.linalg.inv(sl.affine)
            labels = np.zeros(sl.image.shape, dtype=np.uint16)
            for label, pts in disks:
                rcs = (inv2[:3, :3] @ pts.T).T + inv2[:3, 3]  # (row, col, slice offset)
                labels[contour_to_mask(rcs[:, [1, 0]], labels.shape)] = label
            sl.labels = labels
            return sl

        sl = fill(axes)
        flip_rows, _, notes = check_orientation(sl)
        if flip_rows:
            axes.flip_rows = not axes.flip_rows
            sl = fill(axes)
        sl.notes = [f"slice {index}: the contours' mean L-R position (off-plane up to {off:.2f} mm)", *notes]
        return sl

    return provider


def find_generic_series(
    root: str | Path,
    image_pattern: str,
    mask_pattern: str | None = None,
    contour_pattern: str | None = None,
    label_map: dict[int, int] | None = None,
    patient_regex: str | None = None,
) -> tuple[list[SeriesTask], list[dict]]:
    """Tasks for images paired with masks (``label_map`` required) or world contour files.

    ``patient_regex``: a regex whose first group (or whole match) taken from the subject name is the
    patient id, so several series of one patient share a split (default: the subject itself).
    """
    if (mask_pattern is None) == (contour_pattern is None):
        raise ValueError("give exactly one of --mask-pattern and --contour-pattern")
    if mask_pattern is not None and not label_map:
        raise ValueError("--mask-pattern needs --disk-labels")
    partner = mask_pattern or contour_pattern
    pairs, unpaired = pair_files(root, image_pattern, partner, "mask" if mask_pattern else "contour file")
    rx = re.compile(patient_regex) if patient_regex else None
    tasks = []
    for subject, img, other in pairs:
        patient = subject
        if rx is not None:
            m = rx.search(subject)
            if m is None:
                unpaired.append({"path": str(img), "problem": f"--patient-regex {patient_regex!r} does not match subject {subject!r}"})
                continue
            patient = m.group(1) if m.groups() else m.group(0)
        if mask_pattern:
            tasks.append(SeriesTask(subject=subject_name(subject), patient=patient, image=img, mask=other, label_map=label_map))
        else:
            tasks.append(
                SeriesTask(
                    subject=subject_name(subject),
                    patient=patient,
                    image=img,
                    slice_provider=contour_slice_provider(other),
                    source_label="contours",
                    extra={"source": str(other)},
                )
            )
    return tasks, unpaired

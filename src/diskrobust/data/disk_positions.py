"""Disk positions for inference: where to cut each disk's patch in an image (centres or a contour file)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from diskrobust.data.contours import contour_centroid
from diskrobust.data.dataset_io import CONTOUR_FORMAT, read_contours_json
from diskrobust.data.errors import DataError

__all__ = ["read_disk_positions"]


def read_disk_positions(path: str, image_shape: Sequence[int]) -> list[dict]:
    """Disk centres (x, y) image px with level and SPIDER label, from a centres JSON or a contour JSON.

    Centres JSON: {"disks": [{"level": "L4/L5", "label": 202, "centre_px": [x, y]}, ...]}.
    Contour JSON (diskrobust-contours/1): each disk's centre is its contour's area centroid.
    Raises DataError naming the file and the problem.
    """
    path_ = Path(path)
    if not path_.is_file():
        raise DataError(path_, "disk positions file not found")
    try:
        doc = json.loads(path_.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(path_, f"not valid JSON: {err}") from err
    if isinstance(doc, dict) and doc.get("format") == CONTOUR_FORMAT:
        contours = read_contours_json(path_, image_shape=image_shape)
        return [
            {"level": d["level"], "label": int(d["label"]), "centre_px": contour_centroid(d["points_px"])}
            for d in contours["disks"]
        ]
    if not isinstance(doc, dict) or not isinstance(doc.get("disks"), list) or not doc["disks"]:
        raise DataError(path_, "expected {\"disks\": [{\"level\", \"label\", \"centre_px\": [x, y]}, ...]} "
                               "or a diskrobust-contours/1 file")
    h, w = int(image_shape[0]), int(image_shape[1])
    out = []
    for i, disk in enumerate(doc["disks"]):
        if not isinstance(disk, dict) or "centre_px" not in disk:
            raise DataError(path_, f"disk {i}: needs 'centre_px' [x, y] (and 'level', 'label')")
        try:
            centre = np.asarray(disk["centre_px"], dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise DataError(path_, f"disk {i}: centre_px is not numeric: {err}") from err
        if centre.shape != (2,) or not np.isfinite(centre).all():
            raise DataError(path_, f"disk {i}: centre_px must be two finite numbers [x, y], got {disk['centre_px']}")
        if not (-0.5 <= centre[0] <= w - 0.5 and -0.5 <= centre[1] <= h - 0.5):
            raise DataError(path_, f"disk {i}: centre_px {centre.tolist()} lies outside the {h}x{w} image")
        label = int(disk.get("label", 201 + i))
        out.append({"level": str(disk.get("level", f"disk{label}")), "label": label, "centre_px": centre})
    return out

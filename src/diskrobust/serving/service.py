"""One request, end to end: the slice, the disks (clicked or searched), their level names, the outputs.

``DiskShapeService.infer(path, centres=None, slice_index=None)`` -> (SagittalSlice, disks); then
``disks_label_image`` (SPIDER labels on the slice) and ``disks_to_json`` (points in image px and mm).
Free of MONAI Label, so it is tested in the project's own tests and served unchanged by app/.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diskrobust import NUM_POINTS, PATCH_SIZE
from diskrobust.data.contours import contour_to_mask, px_to_mm
from diskrobust.serving.disk_search import search_disks
from diskrobust.serving.io import MAX_IMAGE_SIDE_PX, MAX_IMAGE_VOXELS, SagittalSlice, load_sagittal_slice, scale_intensity
from diskrobust.serving.levels import name_levels
from diskrobust.serving.prediction import DEFAULT_PATCH_SPACING_MM, DiskPrediction, check_deadline, predict_disks

__all__ = ["NO_DISKS_FOUND", "DiskShapeService", "disks_label_image", "disks_to_json"]

NO_DISKS_FOUND = "no lumbar disks found"
LOW_AGREEMENT = "the two heads disagree (seg_agreement below the threshold): doubtful disk"


class DiskShapeService:
    """Disk contours and label image for one image file, from a loaded network.

    ``infer(path, centres=None, slice_index=None)`` -> (SagittalSlice, list[DiskPrediction], bottom
    first). Without centres the disks are searched for (``disk_search.search_disks``: the spine's
    column of disks, [] without a spine); with centres (clicks) those disks are outlined. Levels are
    named from the column's lower end in both cases (``levels.name_levels``); a clicked disk whose
    heads disagree is kept and flagged.
    """

    def __init__(self, network: torch.nn.Module, patch_size: int = PATCH_SIZE,
                 patch_spacing_mm: float = DEFAULT_PATCH_SPACING_MM, threshold: float = 0.5,
                 min_agreement: float = 0.8, max_side_px: int = MAX_IMAGE_SIDE_PX,
                 max_voxels: int = MAX_IMAGE_VOXELS):
        self.network = network.eval()
        # a network from load_bundle_network knows the patch geometry it was trained with
        patch_size, patch_spacing_mm = getattr(network, "serving_patch", (patch_size, patch_spacing_mm))
        self.patch_size = int(patch_size)
        self.patch_spacing_mm = float(patch_spacing_mm)
        self.threshold = float(threshold)
        self.min_agreement = float(min_agreement)
        self.max_side_px = int(max_side_px)
        self.max_voxels = int(max_voxels)

    def infer(self, path: str | Path, centres: np.ndarray | None = None, slice_index: int | None = None,
              deadline: float | None = None) -> tuple[SagittalSlice, list[DiskPrediction]]:
        sl = load_sagittal_slice(path, slice_index, self.max_side_px, self.max_voxels)
        image = scale_intensity(sl.image)
        check_deadline(deadline)
        searched = centres is None or len(centres) == 0
        if searched:
            disks = search_disks(self.network, image, sl.spacing_mm, self.threshold, self.min_agreement,
                                 self.patch_size, self.patch_spacing_mm, deadline)
        else:
            centres = np.asarray(centres, dtype=np.float64).reshape(-1, 2)
            h, w = sl.image.shape
            outside = (centres[:, 0] < 0) | (centres[:, 0] > w - 1) | (centres[:, 1] < 0) | (centres[:, 1] > h - 1)
            if outside.any():
                raise ValueError(f"disk centre(s) {centres[outside].tolist()} lie outside the slice of "
                                 f"shape ({h}, {w}) (points are image (x, y) px)")
            disks = predict_disks(self.network, image, sl.spacing_mm, centres, self.patch_size,
                                  self.patch_spacing_mm, deadline=deadline)
            for d in disks:
                if d.seg_agreement is not None and d.seg_agreement < self.min_agreement:
                    d.flags.append(LOW_AGREEMENT)
        disks = name_levels(self.network, image, sl.spacing_mm, disks, add_found=searched,
                            min_agreement=self.min_agreement, patch_size=self.patch_size,
                            patch_spacing_mm=self.patch_spacing_mm, deadline=deadline)
        return sl, disks


def disks_label_image(disks: Sequence[DiskPrediction], shape: Sequence[int]) -> np.ndarray:
    """(H, W) uint16 label image with each disk's filled contour set to its label (0 elsewhere)."""
    out = np.zeros(tuple(int(s) for s in shape), dtype=np.uint16)
    for d in disks:
        out[contour_to_mask(d.points_px, out.shape)] = d.label
    return out


def disks_to_json(disks: Sequence[DiskPrediction], sl: SagittalSlice) -> dict[str, Any]:
    """JSON-ready result: per disk its level, label, centre, points in image px and mm, and flags.

    Image px are (x, y) of the slice in the contract orientation; mm are ``px * (spacing_col,
    spacing_row)`` from the pixel origin, as in the project's contour files. ``message`` is
    NO_DISKS_FOUND when the list is empty.
    """
    return {
        "format": "diskrobust-contours/2",
        "shape": [int(s) for s in sl.image.shape],
        "spacing_mm": [float(s) for s in sl.spacing_mm],
        "slice_index": int(sl.slice_index),
        "num_points": int(disks[0].points_px.shape[0]) if disks else NUM_POINTS,
        "message": f"{len(disks)} disk(s) found" if disks else NO_DISKS_FOUND,
        "disks": [
            {
                "level": d.level,
                "label": int(d.label),
                "centre_px": [round(float(v), 3) for v in d.centre_px],
                "points_px": np.round(d.points_px, 3).tolist(),
                "points_mm": np.round(px_to_mm(d.points_px, sl.spacing_mm), 3).tolist(),
                "seg_agreement": None if d.seg_agreement is None else round(float(d.seg_agreement), 4),
                "doubtful": bool(d.flags),
                "flags": list(d.flags),
                **d.extra,
            }
            for d in disks
        ],
    }

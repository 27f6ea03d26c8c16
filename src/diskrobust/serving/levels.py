"""Level names from anatomy: the lowest lumbar disk is the one above the sacrum (L5/S1).

Counting from the first blob names the levels wrongly as soon as the lowest disk is missed. Here the
column is followed downwards instead: below the lowest disk known, one disk step further down (the
step the column itself shows), the network is asked for another disk (``disk_search.probe_disk``).
Where none is found, the column ends: the bone below is the sacrum and the disk above it is L5/S1. A
disk found there is added (flagged as found by a probe) and the walk goes on. When the image ends
before the place to look, the column's end is not in view: the names then assume that the lowest disk
is L5/S1 and every disk is flagged so (as with a network without a segmentation head, which cannot
tell a disk from bone).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from diskrobust import PATCH_SIZE
from diskrobust.data.contours import px_to_mm
from diskrobust.data.levels import SPIDER_DISKS, disk_level
from diskrobust.serving.disk_search import (
    MAX_TURN_DEG,
    NEIGHBOUR_MM,
    STRAIGHT_TURN_DEG,
    signed_turn_deg,
    probe_disk,
)
from diskrobust.serving.prediction import DEFAULT_PATCH_SPACING_MM, DiskPrediction, output_keys

__all__ = ["FIRST_DISK_LABEL", "TYPICAL_STEP_MM", "disk_level_name", "level_labels", "name_levels"]

FIRST_DISK_LABEL = 201
MAX_DISKS = len(SPIDER_DISKS)  # 201..225
TYPICAL_STEP_MM = 38.0  # lumbar disk centre to the next one, when the disks give no step of their own
MAX_PROBES_BELOW = 3
NOT_IN_VIEW = "the image ends below the lowest disk before the sacrum: level names assume it is L5/S1"
GAP_BELOW = "a disk below may be missing (a gap in the column): the level name may be too low"


def disk_level_name(label: int) -> str:
    """SPIDER disk label -> level name: 201 -> "L5/S1", 202 -> "L4/L5", ..., 206 -> "T12/L1" (data/levels.py)."""
    return disk_level(int(label))


def level_labels(count: int = 5) -> dict[str, int]:
    """{"L5/S1": 201, ...} for the lowest ``count`` disks."""
    return {disk_level_name(FIRST_DISK_LABEL + i): FIRST_DISK_LABEL + i for i in range(count)}


def _step_px(disks: Sequence[DiskPrediction], spacing_mm: Sequence[float]) -> tuple[np.ndarray, float]:
    """The column's step upwards between neighbouring disks (x, y) image px and its length in mm."""
    sr, sc = (float(s) for s in spacing_mm)
    if len(disks) >= 2:
        centres = np.stack([d.centre_px for d in disks])
        steps = np.diff(centres, axis=0)
        lengths = np.linalg.norm(px_to_mm(steps, spacing_mm), axis=1)
        near = (lengths >= NEIGHBOUR_MM[0]) & (lengths <= NEIGHBOUR_MM[1])
        if near.any():
            return np.median(steps[near], axis=0), float(np.median(lengths[near]))
    return np.array([0.0, -TYPICAL_STEP_MM / sr]), TYPICAL_STEP_MM


def _continues_column(found: DiskPrediction, column: Sequence[DiskPrediction], spacing_mm: Sequence[float]) -> bool:
    """Whether a disk found below ``column`` (bottom first) continues its curve.

    The step up from it must turn less than MAX_TURN_DEG into the column's first step, and the same
    way the column bends (or hardly at all): the sacrum's fused segments, which the network may take
    for a disk, bend back the other way below L5/S1.
    """
    if len(column) < 2:
        return True
    mm = px_to_mm(np.stack([found.centre_px] + [d.centre_px for d in column]), spacing_mm)
    steps = np.diff(mm, axis=0)
    turns = [signed_turn_deg(steps[k], steps[k + 1]) for k in range(len(steps) - 1)]
    first, rest = turns[0], turns[1:]
    if abs(first) > MAX_TURN_DEG:
        return False
    bend = float(np.sign(sum(t for t in rest if abs(t) > STRAIGHT_TURN_DEG))) if rest else 0.0
    return abs(first) <= STRAIGHT_TURN_DEG or bend == 0.0 or np.sign(first) == bend


def name_levels(
    network: torch.nn.Module,
    image: np.ndarray,
    spacing_mm: Sequence[float],
    disks: Sequence[DiskPrediction],
    add_found: bool = True,
    min_agreement: float = 0.5,
    patch_size: int = PATCH_SIZE,
    patch_spacing_mm: float = DEFAULT_PATCH_SPACING_MM,
    deadline: float | None = None,
) -> list[DiskPrediction]:
    """Label and name ``disks`` (bottom first) from the column's lower end; returns them bottom first.

    Disks found below the lowest one are added when ``add_found`` (the automatic search), or only
    counted (clicked disks: the annotator chose which to outline). Doubts go into each disk's flags.
    """
    disks = sorted(disks, key=lambda d: -float(d.centre_px[1]))
    if not disks:
        return []
    step, step_mm = _step_px(disks, spacing_mm)
    below: list[DiskPrediction] = []
    end_in_view = False
    lowest = disks[0]
    h, w = image.shape
    for _ in range(MAX_PROBES_BELOW if "seg" in output_keys(network) else 0):
        where = lowest.centre_px - step
        if not (0 <= where[0] <= w - 1 and 0 <= where[1] <= h - 1):
            break
        found = probe_disk(network, image, spacing_mm, where, step_mm, min_agreement, patch_size,
                           patch_spacing_mm, deadline)
        if found is not None and not _continues_column(found, [*below, *disks], spacing_mm):
            found = None
        if found is None:
            end_in_view = True
            break
        found.flags.append("found by a probe below the column")
        below.insert(0, found)
        lowest = found
    column = below + disks if add_found else disks
    offset = 0 if add_found else len(below)
    last = MAX_DISKS - 1
    column = column[: last + 1 - offset]
    mm = px_to_mm(np.stack([d.centre_px for d in column]), spacing_mm)
    gaps = np.linalg.norm(np.diff(mm, axis=0), axis=1) > 1.5 * step_mm
    gap_below = False
    for rank, disk in enumerate(column):
        disk.label = FIRST_DISK_LABEL + offset + rank
        disk.level = disk_level_name(disk.label)
        if not end_in_view and NOT_IN_VIEW not in disk.flags:
            disk.flags.append(NOT_IN_VIEW)
        if rank > 0 and gaps[rank - 1]:
            gap_below = True
        if gap_below and GAP_BELOW not in disk.flags:
            disk.flags.append(GAP_BELOW)
    return column

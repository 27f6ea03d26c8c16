"""Automatic disk search: candidates from the segmentation head, the spine's column of disks, probes.

1. ``segmentation_map``: the network's segmentation head slid over the whole slice at the patch spacing
   (MONAI ``SlidingWindowInferer``, Gaussian blending; each window min-max scaled by the project's one
   ``minmax_scale``, as a training patch is). The head was trained to fill the disk at a patch's
   centre, but it lights up on anything disk-like: the disks, and also spinous processes and texture.
2. ``disk_components``: connected components of the thresholded map whose area and elongation are
   those of a mid-sagittal lumbar disk. These are only candidates.
3. Each candidate is refined by ``predict_disks`` (point head, re-centred on its contour) and scored by
   the agreement of the two heads.
4. ``best_column``: the disks of a spine form one chain from bottom to top, consecutive centres
   22-60 mm apart, the chain turning gently and one way (lordosis), each disk's long axis across the
   chain. A dynamic programme over the candidates finds the chains of highest summed agreement; the
   most anterior good one is the disks' (the posterior elements form a chain behind them); the rest
   (texture) is dropped. Fewer than ``MIN_COLUMN_DISKS`` such disks: no spine.
5. Gaps in the chain (a spacing about twice the others) are probed at the expected place; a disk
   found there is added and flagged as found by a probe.

Level names come from anatomy afterwards (``levels.name_levels``): the column's lower end.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from diskrobust import PATCH_SIZE
from diskrobust.data.contours import px_to_mm
from diskrobust.serving.prediction import (
    DEFAULT_PATCH_SPACING_MM,
    DiskPrediction,
    check_deadline,
    output_keys,
    predict_disks,
)
from diskrobust.transforms.patches import patch_scale

__all__ = [
    "DISK_AREA_MM2",
    "DISK_ELONGATION",
    "MIN_COLUMN_DISKS",
    "segmentation_map",
    "disk_components",
    "disk_axis",
    "best_column",
    "probe_disk",
    "search_disks",
]

# A lumbar disk at mid-sagittal: 30-33 mm long, 7-19 mm high (anatomy_and_mr_facts.md), i.e. about
# 200-650 mm^2, elongated about 2-4 : 1. The search keeps components inside generous bounds around that.
DISK_AREA_MM2 = (120.0, 900.0)
DISK_ELONGATION = (1.3, 6.0)
# Centre-to-centre distance of neighbouring lumbar disks: a vertebral body (24-30 mm) plus a disk.
NEIGHBOUR_MM = (22.0, 60.0)
MAX_TURN_DEG = 30.0  # between consecutive chain steps (lumbar lordosis spreads ~30-80 deg over 5 steps)
MAX_CHAIN_TILT_DEG = 50.0  # of one chain step from the image's vertical (a sagittal image, head up)
MAX_AXIS_ALONG_CHAIN = 0.6  # |cos| of the disk's long axis with the chain: a disk lies across the column
STRAIGHT_TURN_DEG = 5.0  # turns below this do not count as bending either way
GAP_PENALTY = 1.0  # a step over a missed disk costs a disk's score: a chain without gaps wins a tie
MIN_COLUMN_DISKS = 3  # fewer disks in a column is no evidence of a spine


class _WindowSegmentation(torch.nn.Module):
    """The segmentation probability of a batch of windows, each min-max scaled as a training patch."""

    def __init__(self, network: torch.nn.Module, deadline: float | None):
        super().__init__()
        self.network = network
        self.deadline = deadline

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from diskrobust.transforms.intensity import minmax_scale

        check_deadline(self.deadline)
        scaled = np.stack([minmax_scale(w) for w in x.detach().cpu().numpy()])
        return torch.sigmoid(self.network(torch.from_numpy(scaled).to(x.device))["seg"])


@torch.no_grad()
def segmentation_map(
    network: torch.nn.Module,
    image: np.ndarray,
    spacing_mm: Sequence[float],
    patch_size: int = PATCH_SIZE,
    patch_spacing_mm: float = DEFAULT_PATCH_SPACING_MM,
    overlap: float = 0.25,
    batch_size: int = 8,
    deadline: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Disk probability over the whole slice from the segmentation head slid at the patch spacing.

    image (H, W) in [0, 1] -> (prob (h', w') float32 on the patch-spacing grid, scale (2,) image px per
    grid px (x, y)). Windows overlap by ``overlap`` and are blended with Gaussian weights: the network
    was trained with the disk at the patch centre, so its centre pixels are the ones to trust.
    """
    from monai.inferers import SlidingWindowInferer

    if "seg" not in output_keys(network):
        raise ValueError("the automatic disk search needs the network's segmentation head ('seg' output)")
    scale = patch_scale(spacing_mm, patch_spacing_mm)
    h, w = image.shape
    size = (max(1, int(round(h / scale[1]))), max(1, int(round(w / scale[0]))))
    img = torch.as_tensor(np.asarray(image, dtype=np.float32))[None, None]
    grid_img = F.interpolate(img, size=size, mode="bilinear", align_corners=True)
    device = next(network.parameters()).device
    inferer = SlidingWindowInferer(
        roi_size=(patch_size, patch_size), sw_batch_size=batch_size, overlap=overlap, mode="gaussian",
        padding_mode="constant", cval=0.0, sw_device=device, device=torch.device("cpu"),
    )
    prob = inferer(grid_img.to(device), _WindowSegmentation(network, deadline))
    scale_used = np.array([(w - 1) / max(size[1] - 1, 1), (h - 1) / max(size[0] - 1, 1)])
    return torch.as_tensor(prob)[0, 0].float().cpu().numpy(), scale_used


def disk_components(
    prob: np.ndarray,
    grid_spacing_mm: float,
    threshold: float = 0.5,
    area_mm2: Sequence[float] = DISK_AREA_MM2,
    elongation: Sequence[float] = DISK_ELONGATION,
) -> np.ndarray:
    """Centroids (K, 2) (x, y) grid px of the disk-like components of a probability map (h, w).

    A component of ``prob > threshold`` (8-connected) is kept when its area in mm^2 and its elongation
    (major / minor axis of the inertia ellipse, skimage regionprops) are those of a disk.
    """
    from skimage.measure import label, regionprops

    comps = label(np.asarray(prob) > threshold, connectivity=2)
    px_area = float(grid_spacing_mm) ** 2
    centres = []
    for region in regionprops(comps):
        area = region.area * px_area
        ratio = region.axis_major_length / max(region.axis_minor_length, 1e-6)
        if area_mm2[0] <= area <= area_mm2[1] and elongation[0] <= ratio <= elongation[1]:
            r, c = region.centroid
            centres.append((c, r))
    return np.asarray(centres, dtype=np.float64).reshape(-1, 2)


def disk_axis(points_px: np.ndarray, spacing_mm: Sequence[float]) -> np.ndarray:
    """Unit (x, y) mm direction of a contour's long axis (principal axis of its points)."""
    mm = px_to_mm(np.asarray(points_px, dtype=np.float64), spacing_mm)
    mm = mm - mm.mean(0)
    _, vecs = np.linalg.eigh(mm.T @ mm)
    return vecs[:, -1]


def _angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    cos = float(np.dot(a, b) / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


def signed_turn_deg(a: np.ndarray, b: np.ndarray) -> float:
    """Signed angle (degrees) from step a to step b (positive: counter-clockwise in (x, y) mm)."""
    return float(np.degrees(np.arctan2(a[0] * b[1] - a[1] * b[0], float(np.dot(a, b)))))


def _one_column(mm, score, axes, usable, neighbour_mm, gap_factor) -> tuple[list[int], float]:
    """The best chain (bottom first) over the usable candidates and its summed score."""
    up = np.array([0.0, -1.0])
    lo, hi = float(neighbour_mm[0]), float(neighbour_mm[1])

    def step_ok(i: int, j: int) -> bool:  # j above i
        v = mm[j] - mm[i]
        dist = float(np.linalg.norm(v))
        if not (lo <= dist <= hi * gap_factor) or _angle_deg(v, up) > MAX_CHAIN_TILT_DEG:
            return False
        unit = v / dist
        return all(abs(float(np.dot(axes[k], unit))) <= MAX_AXIS_ALONG_CHAIN for k in (i, j))

    order = [i for i in np.argsort(-mm[:, 1], kind="stable") if usable[i]]  # bottom first
    # state (j, i, bend): a chain whose last step is i -> j and whose bend so far has the sign `bend`
    # (0: straight so far). best[state] = summed score, back[state] = the state before.
    best: dict[tuple[int, int, int], float] = {}
    back: dict[tuple[int, int, int], tuple[int, int, int] | None] = {}
    ending: dict[int, list[tuple[int, int, int]]] = {}  # the states whose chain ends at a candidate
    for b, j in enumerate(order):
        for i in order[:b]:
            if not step_ok(i, j):
                continue
            gain = score[j] - (GAP_PENALTY if float(np.linalg.norm(mm[j] - mm[i])) > hi else 0.0)
            candidates = [((j, i, 0), score[i] + gain, None)]
            for (jj, ii, bend) in ending.get(i, []):
                s = best[(jj, ii, bend)]
                turn = signed_turn_deg(mm[i] - mm[ii], mm[j] - mm[i])
                if abs(turn) > MAX_TURN_DEG:
                    continue
                sign = 0 if abs(turn) <= STRAIGHT_TURN_DEG else int(np.sign(turn))
                if sign and bend and sign != bend:
                    continue  # the lordosis bends one way: a reversal is not the same column
                candidates.append(((j, i, sign or bend), s + gain, (jj, ii, bend)))
            for state, s, prev in candidates:
                if state not in best:
                    ending.setdefault(j, []).append(state)
                if s > best.get(state, -1.0):
                    best[state], back[state] = s, prev
    if not best:
        return [], 0.0
    state: tuple[int, int, int] | None = max(best, key=best.get)
    total = best[state]
    chain: list[int] = []
    while state is not None:
        j, i, _ = state
        chain.append(j)
        prev = back[state]
        if prev is None:
            chain.append(i)
        state = prev
    return chain[::-1], float(total)


def best_column(disks: Sequence[DiskPrediction], spacing_mm: Sequence[float], min_agreement: float = 0.5,
                neighbour_mm: Sequence[float] = NEIGHBOUR_MM, gap_factor: float = 2.2) -> list[int]:
    """Indices (bottom first) of the disks that form the spine's column; [] when none does.

    A chain goes upwards (decreasing y) with steps of ``neighbour_mm`` (a step up to ``gap_factor``
    times that range's upper end is allowed, so a missed disk does not split the column;
    ``search_disks`` probes it), each step tilted less than MAX_CHAIN_TILT_DEG from vertical, turning
    less than MAX_TURN_DEG from the previous one and always the same way (the lordosis is one curve:
    the fused sacral segments below L5/S1 bend back the other way), and every disk's long axis across
    the step. Disks whose two heads agree less than ``min_agreement`` take no part; a chain scores its
    summed agreement less GAP_PENALTY per gap step, and needs MIN_COLUMN_DISKS disks.

    The posterior elements (spinous processes) form a second chain of the same spacing behind the
    disks, and the head agrees on them too: of the chains scoring at least half the best one, the
    most anterior (smallest x in mm; the contract puts anterior on the left) is the disks' column.
    """
    n = len(disks)
    if n == 0:
        return []
    mm = px_to_mm(np.stack([d.centre_px for d in disks]), spacing_mm)
    score = np.array([0.0 if d.seg_agreement is None else float(d.seg_agreement) for d in disks])
    axes = [disk_axis(d.points_px, spacing_mm) for d in disks]
    usable = [d.seg_agreement is None or d.seg_agreement >= min_agreement for d in disks]
    chains: list[tuple[list[int], float]] = []
    for _ in range(3):
        chain, total = _one_column(mm, score, axes, usable, neighbour_mm, gap_factor)
        if len(chain) < MIN_COLUMN_DISKS:
            break
        chains.append((chain, total))
        for k in chain:
            usable[k] = False
    if not chains:
        return []
    top = max(total for _, total in chains)
    eligible = [chain for chain, total in chains if total >= 0.5 * top]
    return min(eligible, key=lambda chain: float(mm[chain, 0].mean()))


def probe_disk(network: torch.nn.Module, image: np.ndarray, spacing_mm: Sequence[float], where_px: np.ndarray,
               expected_step_mm: float, min_agreement: float = 0.5, patch_size: int = PATCH_SIZE,
               patch_spacing_mm: float = DEFAULT_PATCH_SPACING_MM, deadline: float | None = None,
               ) -> DiskPrediction | None:
    """A disk near ``where_px`` (x, y) image px, or None.

    The point head is run there and re-centred; the result counts as a disk when its two heads agree
    (``min_agreement``) and it settled within a third of ``expected_step_mm`` of where it was looked for.
    """
    h, w = image.shape
    x, y = float(where_px[0]), float(where_px[1])
    if not (0 <= x <= w - 1 and 0 <= y <= h - 1):
        return None
    found = predict_disks(network, image, spacing_mm, np.array([[x, y]]), patch_size, patch_spacing_mm,
                          deadline=deadline)
    if not found:
        return None
    disk = found[0]
    if disk.seg_agreement is None:  # without a segmentation head nothing tells a disk from bone
        return None
    moved = float(np.linalg.norm(px_to_mm(disk.centre_px - np.array([x, y]), spacing_mm)))
    if disk.seg_agreement is not None and disk.seg_agreement < min_agreement:
        return None
    return disk if moved <= expected_step_mm / 3.0 else None


def search_disks(
    network: torch.nn.Module,
    image: np.ndarray,
    spacing_mm: Sequence[float],
    threshold: float = 0.5,
    min_agreement: float = 0.5,
    patch_size: int = PATCH_SIZE,
    patch_spacing_mm: float = DEFAULT_PATCH_SPACING_MM,
    deadline: float | None = None,
) -> list[DiskPrediction]:
    """The disks of the spine's column in a slice (H, W) in [0, 1], bottom first, without level names.

    [] when no column of at least MIN_COLUMN_DISKS disks is found (no spine in the image).
    """
    prob, scale = segmentation_map(network, image, spacing_mm, patch_size, patch_spacing_mm, deadline=deadline)
    centres = disk_components(prob, patch_spacing_mm, threshold) * scale
    check_deadline(deadline)
    candidates = predict_disks(network, image, spacing_mm, centres, patch_size, patch_spacing_mm, deadline=deadline)
    chain = [candidates[i] for i in best_column(candidates, spacing_mm, min_agreement)]
    if not chain:
        return []
    return _fill_gaps(network, image, spacing_mm, chain, min_agreement, patch_size, patch_spacing_mm, deadline)


def _fill_gaps(network, image, spacing_mm, chain, min_agreement, patch_size, patch_spacing_mm, deadline):
    """Probe the middle of each step about twice the chain's typical one; add the disk found there."""
    mm = px_to_mm(np.stack([d.centre_px for d in chain]), spacing_mm)
    steps = np.linalg.norm(np.diff(mm, axis=0), axis=1)
    typical = float(np.median(steps))
    out = [chain[0]]
    for k in range(1, len(chain)):
        if steps[k - 1] > 1.5 * typical:
            middle = (chain[k - 1].centre_px + chain[k].centre_px) / 2.0
            disk = probe_disk(network, image, spacing_mm, middle, typical, min_agreement, patch_size,
                              patch_spacing_mm, deadline)
            if disk is not None:
                # provenance, not a doubt: the probe holds the disk to the column's own agreement bar
                disk.extra["found_by"] = "a probe in a gap of the column"
                out.append(disk)
        out.append(chain[k])
    return out

"""Per-disk prediction: patches cut as the training pipeline cuts them, the network's 176 points mapped
back to image px, re-centring on the predicted contour, the agreement of the two heads, the robustness
probe, and the bundle network itself.

Preprocessing is the bundles' (one chain): the slice is scaled with ``ScaleIntensityMR`` (0.5-99.5
percentiles, ``io.scale_intensity``) and each patch is cut and min-max scaled by
``diskrobust.transforms.patches.extract_patch``, the function the training patch bank uses.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diskrobust import PATCH_SIZE
from diskrobust.data.contours import contour_centroid, contour_to_mask, dice, px_to_mm
from diskrobust.data.errors import DataError
from diskrobust.transforms.patches import extract_patch, patch_points_to_image, patch_scale

__all__ = [
    "DEFAULT_PATCH_SPACING_MM",
    "InferenceTimeout",
    "DiskPrediction",
    "check_deadline",
    "cut_patches",
    "run_network",
    "output_keys",
    "predict_disks",
    "disk_robustness",
    "load_bundle_network",
]

DEFAULT_PATCH_SPACING_MM = 0.5


class InferenceTimeout(TimeoutError):
    """The request ran past its time limit (checked between network batches)."""


def check_deadline(deadline: float | None) -> None:
    """Raise InferenceTimeout when ``time.monotonic()`` is past ``deadline`` (None: no limit)."""
    if deadline is not None and time.monotonic() > deadline:
        raise InferenceTimeout("the inference ran past the server's time limit")


def output_keys(network: torch.nn.Module) -> set[str]:
    """The heads a DiskShapeNet-like network has: "pred" (points) and/or "seg" (mask)."""
    keys = set()
    if getattr(network, "has_point_head", True):
        keys.add("pred")
    if getattr(network, "has_seg_head", True):
        keys.add("seg")
    return keys


def cut_patches(
    image: np.ndarray,
    centres_px: np.ndarray,
    spacing_mm: Sequence[float],
    patch_size: int = PATCH_SIZE,
    patch_spacing_mm: float = DEFAULT_PATCH_SPACING_MM,
    intensity: str | None = "minmax",
) -> tuple[torch.Tensor, np.ndarray]:
    """Patches around centres, cut as the training pipeline cuts them (``extract_patch``).

    image (H, W) raw slice; centres_px (K, 2) image (x, y) px -> ((K, 1, S, S) float32 patches,
    scale (2,) (x, y) image px per patch px). Patch pixel (S/2, S/2) lies on the centre; intensity
    "minmax" scales each patch to [0, 1] as in training.
    """
    centres = np.asarray(centres_px, dtype=np.float64).reshape(-1, 2)
    scale = patch_scale(spacing_mm, patch_spacing_mm)
    patches = [extract_patch(image, c, spacing_mm, patch_size, patch_spacing_mm, "zeros", intensity)[0] for c in centres]
    if not patches:
        return torch.zeros((0, 1, patch_size, patch_size)), scale
    return torch.from_numpy(np.stack(patches)), scale


@torch.no_grad()
def run_network(network: torch.nn.Module, patches: torch.Tensor, batch_size: int = 16,
                deadline: float | None = None) -> dict[str, torch.Tensor]:
    """Run the network on (K, 1, S, S) patches in batches -> {"pred": (K, N, 2), "seg": (K, 1, S, S)} on CPU.

    ``deadline`` (time.monotonic() seconds) is checked before each batch (InferenceTimeout).
    """
    device = next(network.parameters()).device
    outs: dict[str, list[torch.Tensor]] = {}
    for start in range(0, len(patches), batch_size):
        check_deadline(deadline)
        out = network(patches[start:start + batch_size].to(device))
        for k, v in out.items():
            outs.setdefault(k, []).append(v.detach().float().cpu())
    return {k: torch.cat(v) for k, v in outs.items()}


@dataclass
class DiskPrediction:
    """One disk: SPIDER label (201 = L5/S1, ...; 0 until named), level name, patch centre, contour.

    points_px: (N, 2) (x, y) image px in the contract's point order.
    seg_agreement: Dice, inside the patch, of the filled contour and the segmentation head's mask
      (1 = the two heads agree; a low value flags a doubtful disk). None without a seg head.
    flags: why the disk or its level name is doubtful (empty when neither is).
    """

    label: int
    level: str
    centre_px: np.ndarray
    points_px: np.ndarray
    seg_agreement: float | None = None
    flags: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)



def predict_disks(
    network: torch.nn.Module,
    image: np.ndarray,
    spacing_mm: Sequence[float],
    centres_px: np.ndarray,
    patch_size: int = PATCH_SIZE,
    patch_spacing_mm: float = DEFAULT_PATCH_SPACING_MM,
    recentre_steps: int = 5,
    merge_distance_mm: float = 6.0,
    deadline: float | None = None,
) -> list[DiskPrediction]:
    """Contours of the disks around ``centres_px`` (K, 2) image (x, y) px; image (H, W) in [0, 1].

    Each patch is re-centred on its predicted contour's centroid up to ``recentre_steps`` times (stops
    when it moves < 0.5 image px): the network was trained on centroid-centred patches, a click or a
    search hit is only near the centre. Centres that converge on the same disk (closer than
    ``merge_distance_mm``) are merged, keeping the better-agreeing one. The disks come back ordered
    from the bottom of the image, without level names (``levels.name_levels`` gives them).
    """
    centres = np.asarray(centres_px, dtype=np.float64).reshape(-1, 2)
    if len(centres) == 0:
        return []
    if "pred" not in output_keys(network):
        raise ValueError("disk contours need the network's point head ('pred' output)")
    out, points = _predict_at(network, image, centres, spacing_mm, patch_size, patch_spacing_mm, deadline)
    for _ in range(recentre_steps):
        new_centres = _new_centres(out, points, centres, spacing_mm, patch_size, patch_spacing_mm)
        if np.all(np.linalg.norm(new_centres - centres, axis=1) < 0.5):
            break
        centres = new_centres
        out, points = _predict_at(network, image, centres, spacing_mm, patch_size, patch_spacing_mm, deadline)

    agreement: list[float | None] = [None] * len(centres)
    if "seg" in out:
        for i in range(len(centres)):
            filled = contour_to_mask(out["pred"][i].numpy(), (patch_size, patch_size))
            agreement[i] = dice(filled, out["seg"][i, 0].numpy() > 0)

    keep = _merge_duplicates(centres, np.asarray([a if a is not None else 0.0 for a in agreement]),
                             spacing_mm, merge_distance_mm)
    order = sorted(keep, key=lambda i: -centres[i][1])  # bottom of the image first
    return [DiskPrediction(label=0, level="", centre_px=centres[i], points_px=points[i], seg_agreement=agreement[i])
            for i in order]


def _new_centres(out, points, centres, spacing_mm, patch_size, patch_spacing_mm) -> np.ndarray:
    """Where each patch should be centred next: on the disk the segmentation head fills nearest the
    patch centre (its centroid), else on the predicted contour's centroid.

    A point head trained on centred patches draws its contour around the patch centre wherever the
    disk is, so only the segmentation head, which fills the disk where it is, can move the patch.
    """
    from scipy.ndimage import center_of_mass, distance_transform_edt, label

    scale = patch_scale(spacing_mm, patch_spacing_mm)
    new = np.stack([contour_centroid(p) for p in points])
    if "seg" not in out:
        return new
    mid = patch_size / 2.0
    for k in range(len(centres)):
        comps, count = label(out["seg"][k, 0].numpy() > 0)
        if count == 0:
            continue
        if comps[int(mid), int(mid)]:
            nearest = comps[int(mid), int(mid)]
        else:  # the component closest to the patch centre
            background = np.ones_like(comps, dtype=bool)
            background[int(mid), int(mid)] = False
            _, (rows, cols) = distance_transform_edt(background, return_indices=True)
            dist = np.where(comps > 0, np.hypot(rows - mid, cols - mid), np.inf)
            nearest = comps.flat[int(np.argmin(dist))]
        r, c = center_of_mass(comps == nearest)
        new[k] = patch_points_to_image(np.array([[c, r]]), centres[k], scale, patch_size)[0]
    return new


def _predict_at(network, image, centres, spacing_mm, patch_size, patch_spacing_mm, deadline=None):
    """Network outputs at patches around centres (K, 2) and the points in image px (K, N, 2)."""
    patches, scale = cut_patches(image, centres, spacing_mm, patch_size, patch_spacing_mm)
    out = run_network(network, patches, deadline=deadline)
    points = patch_points_to_image(out["pred"].numpy().astype(np.float64), centres, scale[None], patch_size)
    return out, points


def _merge_duplicates(centres: np.ndarray, score: np.ndarray, spacing_mm: Sequence[float], distance_mm: float) -> list[int]:
    """Indices to keep: of centres closer than distance_mm, keep the one with the higher score."""
    mm = px_to_mm(centres, spacing_mm)
    keep: list[int] = []
    for i in np.argsort(-score, kind="stable"):
        if all(np.linalg.norm(mm[i] - mm[j]) >= distance_mm for j in keep):
            keep.append(int(i))
    return keep


def disk_robustness(
    network: torch.nn.Module,
    image: np.ndarray,
    spacing_mm: Sequence[float],
    disks: Sequence[DiskPrediction],
    eps: float = 0.03,
    steps: int = 10,
    tolerance_mm: float = 1.0,
    seed: int = 0,
    patch_size: int = PATCH_SIZE,
    patch_spacing_mm: float = DEFAULT_PATCH_SPACING_MM,
) -> list[dict[str, Any]]:
    """How far each disk's contour moves under a small L-inf PGD attack on its patch.

    The attack (``diskrobust.attacks.PGD``, objective "points", step eps / 5, seeded random start)
    maximises the squared distance of the predicted points from the clean prediction, within ``eps``
    on the [0, 1] patch intensities. Per disk: {"eps", "steps", "tolerance_mm",
    "mean_displacement_px", "max_displacement_px", "mean_displacement_mm", "max_displacement_mm",
    "exceeds_tolerance"} (mean and max over the 176 points; ``exceeds_tolerance`` when the mean
    displacement is over ``tolerance_mm``). Lower is more robust.
    """
    from diskrobust.attacks import PGD

    if not disks:
        return []
    centres = np.stack([d.centre_px for d in disks])
    patches, scale = cut_patches(image, centres, spacing_mm, patch_size, patch_spacing_mm)
    device = next(network.parameters()).device
    clean = run_network(network, patches)["pred"]
    attack = PGD(network, eps=float(eps), steps=int(steps), norm="linf", objective="points", seed=int(seed))
    adv_images = attack.forward(patches.to(device), targets={"points": clean.to(device)}).images
    adv = run_network(network, adv_images.detach().cpu())["pred"]
    step_mm = np.array([patch_spacing_mm, patch_spacing_mm])
    moved_patch = (adv - clean).numpy().astype(np.float64)  # (K, N, 2) patch px
    out = []
    for m in moved_patch:
        px = np.linalg.norm(m * scale, axis=1)
        mm = np.linalg.norm(m * step_mm, axis=1)
        out.append({
            "eps": float(eps), "steps": int(steps), "tolerance_mm": float(tolerance_mm),
            "mean_displacement_px": round(float(px.mean()), 4), "max_displacement_px": round(float(px.max()), 4),
            "mean_displacement_mm": round(float(mm.mean()), 4), "max_displacement_mm": round(float(mm.max()), 4),
            "exceeds_tolerance": bool(mm.mean() > tolerance_mm),
        })
    return out


def load_bundle_network(
    bundle_path: str | Path,
    weights: str | Path | None = None,
    device: str | torch.device = "cpu",
    overrides: Mapping[str, Any] | None = None,
) -> torch.nn.Module:
    """The bundle's model (default ``models/model.pt``) built from its own description, in eval mode.

    ``diskrobust.checkpoints.build_model_from_checkpoint``: the network and the patch geometry come
    from the checkpoint; ``overrides`` (width, patch_size, patch_spacing_mm) are needed only for a plain
    state_dict and are refused when they disagree with the description. The network carries the patch
    geometry as ``serving_patch`` = (size, spacing_mm). DataError names the file and the problem.
    """
    from diskrobust.checkpoints import build_model_from_checkpoint

    weights = Path(weights) if weights else Path(bundle_path) / "models" / "model.pt"
    if not weights.is_file():
        raise DataError(weights, "model weights not found (train the bundle first: docs/monai_label.md)")
    network, desc = build_model_from_checkpoint(weights, device, dict(overrides or {}) or None)
    patch = desc.get("patch", {})
    network.serving_patch = (int(patch.get("size", PATCH_SIZE)), float(patch.get("spacing_mm", DEFAULT_PATCH_SPACING_MM)))
    return network.eval()

"""Whole-image disk-shape inference for serving (the MONAI Label app in app/), free of MONAI Label.

The MONAI Label app (app/lib/infers/) is a thin shell around these functions so that the image
handling, the disk search, the patch inference and the outputs are tested in the main environment
(tests/test_monailabel_app.py) and served unchanged in the MONAI Label one.

Flow for one image (docs/monai_label.md tells the user's side):

1. ``load_sagittal_slice``: a 2D NIfTI in the project's format, or a 3D scan whose sagittal axis is
   found from the affine (nibabel orientation tools); the chosen slice (mid-sagittal by default) is
   turned into the contract's orientation (row -> inferior, col -> posterior, docs/architecture.md).
2. ``ScaleIntensityMR`` scales the slice to [0, 1] as the training pipeline does.
3. Disk centres are given (MONAI Label ``foreground`` clicks, image (x, y) px) or found by
   ``find_disk_centres``: the network's segmentation head slid over the image (MONAI
   ``SlidingWindowInferer``, Gaussian weights) at the patch spacing, then connected components whose
   area and elongation are those of a lumbar disk.
4. ``predict_disks``: a 128 x 128 patch at the patch spacing (0.5 mm/px) around each centre, the
   network's 176 points mapped back to image px; the patch is re-centred on the predicted contour's
   centroid (the network was trained on centroid-centred patches, a click is only near the centre).
5. ``disks_label_image`` (SPIDER disk labels 201.. from the bottom) and ``disks_to_json``
   (points in image px and mm, level names).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from diskrobust import NUM_POINTS, PATCH_SIZE
from diskrobust.data.contours import contour_centroid, contour_to_mask, dice, px_to_mm
from diskrobust.data.errors import DataError
from diskrobust.transforms.patches import extract_patch, patch_points_to_image, patch_scale

__all__ = [
    "DEFAULT_PATCH_SPACING_MM",
    "DiskPrediction",
    "SagittalSlice",
    "disk_level_name",
    "load_sagittal_slice",
    "slice_label_volume",
    "write_label_image",
    "scale_intensity",
    "cut_patches",
    "run_network",
    "segmentation_map",
    "disk_components",
    "find_disk_centres",
    "predict_disks",
    "disk_robustness",
    "drop_doubtful_disks",
    "keep_spine_column",
    "disks_label_image",
    "disks_to_json",
    "parse_points",
    "parse_slice_index",
    "load_bundle_network",
    "DiskShapeService",
]

DEFAULT_PATCH_SPACING_MM = 0.5
FIRST_DISK_LABEL = 201
# Vertebrae from the bottom (SPIDER numbering): disk 200 + k lies directly below vertebra k.
_VERTEBRAE_FROM_BOTTOM = ("L5", "L4", "L3", "L2", "L1", "T12", "T11", "T10", "T9", "T8", "T7", "T6",
                          "T5", "T4", "T3", "T2", "T1", "C7", "C6", "C5", "C4", "C3", "C2")
# The target orientation of a slice, as nibabel axis codes: row -> Inferior, col -> Posterior, slice -> Right.
_CONTRACT_AXCODES = ("I", "P", "R")

# A lumbar disk at mid-sagittal: 30-33 mm long, 7-19 mm high (anatomy_and_mr_facts.md), i.e. about
# 200-650 mm^2, elongated about 2-4 : 1. The search keeps components inside generous bounds around that.
DISK_AREA_MM2 = (120.0, 900.0)
DISK_ELONGATION = (1.3, 6.0)


def disk_level_name(label: int) -> str:
    """SPIDER disk label -> level name: 201 -> "L5/S1", 202 -> "L4/L5", ..., 206 -> "T12/L1"."""
    k = int(label) - 200
    if not 1 <= k <= len(_VERTEBRAE_FROM_BOTTOM):
        raise ValueError(f"disk label {label} is outside 201..{200 + len(_VERTEBRAE_FROM_BOTTOM)}")
    below = "S1" if k == 1 else _VERTEBRAE_FROM_BOTTOM[k - 2]
    return f"{_VERTEBRAE_FROM_BOTTOM[k - 1]}/{below}"


# ---------------------------------------------------------------------------------------------------
# image in / label out
# ---------------------------------------------------------------------------------------------------


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


def load_sagittal_slice(path: str | Path, slice_index: int | None = None) -> SagittalSlice:
    """Read a 2D or 3D NIfTI and return one sagittal slice in the contract's orientation.

    A 2D file (the project's format, or 3D with one singleton axis) is its own slice. In a 3D scan the
    sagittal axis is the array axis closest to left-right in the affine; ``slice_index`` counts along
    it after reorientation to +R (default: the middle slice). Raises DataError naming the file for a
    missing/corrupt file, a 4D+ image, NaN/Inf voxels, or a slice index out of range.
    """
    import nibabel as nib
    from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

    path = Path(path)
    if not path.is_file():
        raise DataError(path, "image file not found")
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj, dtype=np.float32)
        affine = np.asarray(img.affine, dtype=np.float64)
    except Exception as err:  # nibabel raises many types for garbled files
        raise DataError(path, f"cannot read image (corrupt or not NIfTI): {type(err).__name__}: {err}") from err
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


# ---------------------------------------------------------------------------------------------------
# patches
# ---------------------------------------------------------------------------------------------------


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
def run_network(network: torch.nn.Module, patches: torch.Tensor, batch_size: int = 16) -> dict[str, torch.Tensor]:
    """Run the network on (K, 1, S, S) patches in batches -> {"pred": (K, N, 2), "seg": (K, 1, S, S)} on CPU."""
    device = next(network.parameters()).device
    outs: dict[str, list[torch.Tensor]] = {}
    for start in range(0, len(patches), batch_size):
        out = network(patches[start:start + batch_size].to(device))
        for k, v in out.items():
            outs.setdefault(k, []).append(v.detach().float().cpu())
    return {k: torch.cat(v) for k, v in outs.items()}


# ---------------------------------------------------------------------------------------------------
# finding disks
# ---------------------------------------------------------------------------------------------------


class _SegHead(torch.nn.Module):
    """The network's segmentation probability only, as SlidingWindowInferer wants one tensor.

    Each window (B, 1, S, S) is min-max scaled to [0, 1] first, as training patches are.
    """

    def __init__(self, network: torch.nn.Module):
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lo = x.amin(dim=(1, 2, 3), keepdim=True)
        span = x.amax(dim=(1, 2, 3), keepdim=True) - lo
        x = torch.where(span > 0, (x - lo) / span.clamp_min(1e-12), torch.zeros_like(x))
        return torch.sigmoid(self.network(x)["seg"])


@torch.no_grad()
def segmentation_map(
    network: torch.nn.Module,
    image: np.ndarray,
    spacing_mm: Sequence[float],
    patch_size: int = PATCH_SIZE,
    patch_spacing_mm: float = DEFAULT_PATCH_SPACING_MM,
    overlap: float = 0.5,
    batch_size: int = 8,
) -> tuple[np.ndarray, np.ndarray]:
    """Disk probability over the whole slice from the segmentation head slid at the patch spacing.

    image (H, W) in [0, 1] -> (prob (h', w') float32 on the patch-spacing grid, scale (2,) image px per
    grid px (x, y)). Windows overlap by ``overlap`` and are blended with Gaussian weights: the network
    was trained with the disk at the patch centre, so its centre pixels are the ones to trust.
    """
    from monai.inferers import SlidingWindowInferer

    if "seg" not in _output_keys(network):
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
    prob = inferer(grid_img.to(device), _SegHead(network))
    scale_used = np.array([(w - 1) / max(size[1] - 1, 1), (h - 1) / max(size[0] - 1, 1)])
    return prob[0, 0].float().cpu().numpy(), scale_used


def _output_keys(network: torch.nn.Module) -> set[str]:
    keys = set()
    if getattr(network, "has_point_head", True):
        keys.add("pred")
    if getattr(network, "has_seg_head", True):
        keys.add("seg")
    return keys


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


def find_disk_centres(
    network: torch.nn.Module,
    image: np.ndarray,
    spacing_mm: Sequence[float],
    patch_size: int = PATCH_SIZE,
    patch_spacing_mm: float = DEFAULT_PATCH_SPACING_MM,
    threshold: float = 0.5,
    area_mm2: Sequence[float] = DISK_AREA_MM2,
    elongation: Sequence[float] = DISK_ELONGATION,
) -> np.ndarray:
    """Disk centres found in a slice (H, W) in [0, 1]: (K, 2) image (x, y) px, from the bottom (largest y) up.

    ``segmentation_map`` then ``disk_components``; the centres are only starting points, which
    ``predict_disks`` refines on the point head's contour.
    """
    prob, scale = segmentation_map(network, image, spacing_mm, patch_size, patch_spacing_mm)
    centres = disk_components(prob, patch_spacing_mm, threshold, area_mm2, elongation) * scale
    return centres[np.argsort(-centres[:, 1])] if len(centres) else centres


# ---------------------------------------------------------------------------------------------------
# per-disk prediction
# ---------------------------------------------------------------------------------------------------


@dataclass
class DiskPrediction:
    """One disk: label 201.., level name, the patch centre used and the contour in image px.

    points_px: (N, 2) (x, y) image px in the contract's point order.
    seg_agreement: Dice, inside the patch, of the filled contour and the segmentation head's mask
      (1 = the two heads agree; a low value flags a doubtful disk). None without a seg head.
    """

    label: int
    level: str
    centre_px: np.ndarray
    points_px: np.ndarray
    seg_agreement: float | None = None
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
) -> list[DiskPrediction]:
    """Contours of the disks around ``centres_px`` (K, 2) image (x, y) px; image (H, W) in [0, 1].

    Each patch is re-centred on its predicted contour's centroid up to ``recentre_steps`` times (stops
    when it moves < 0.5 image px). Centres that converge on the same disk (closer than
    ``merge_distance_mm``) are merged. Disks are labelled 201, 202, ... from the bottom of the image.
    """
    centres = np.asarray(centres_px, dtype=np.float64).reshape(-1, 2)
    if len(centres) == 0:
        return []
    if "pred" not in _output_keys(network):
        raise ValueError("disk contours need the network's point head ('pred' output)")
    out, points = _predict_at(network, image, centres, spacing_mm, patch_size, patch_spacing_mm)
    for _ in range(recentre_steps):
        new_centres = np.stack([contour_centroid(p) for p in points])
        if np.all(np.linalg.norm(new_centres - centres, axis=1) < 0.5):
            break
        centres = new_centres
        out, points = _predict_at(network, image, centres, spacing_mm, patch_size, patch_spacing_mm)

    agreement: list[float | None] = [None] * len(centres)
    if "seg" in out:
        for i in range(len(centres)):
            filled = contour_to_mask(out["pred"][i].numpy(), (patch_size, patch_size))
            agreement[i] = dice(filled, out["seg"][i, 0].numpy() > 0)

    keep = _merge_duplicates(centres, np.asarray([a if a is not None else 0.0 for a in agreement]),
                             spacing_mm, merge_distance_mm)
    order = sorted(keep, key=lambda i: -centres[i][1])  # bottom of the image first
    return [
        DiskPrediction(
            label=FIRST_DISK_LABEL + rank,
            level=disk_level_name(FIRST_DISK_LABEL + rank),
            centre_px=centres[i],
            points_px=points[i],
            seg_agreement=agreement[i],
        )
        for rank, i in enumerate(order)
    ]


def _predict_at(network, image, centres, spacing_mm, patch_size, patch_spacing_mm):
    """Network outputs at patches around centres (K, 2) and the points in image px (K, N, 2)."""
    patches, scale = cut_patches(image, centres, spacing_mm, patch_size, patch_spacing_mm)
    out = run_network(network, patches)
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


@torch.no_grad()
def _clean_outputs(network, patches):
    return run_network(network, patches)


def disk_robustness(
    network: torch.nn.Module,
    image: np.ndarray,
    spacing_mm: Sequence[float],
    disks: Sequence[DiskPrediction],
    eps: float = 0.03,
    steps: int = 10,
    seed: int = 0,
    patch_size: int = PATCH_SIZE,
    patch_spacing_mm: float = DEFAULT_PATCH_SPACING_MM,
) -> list[dict[str, float]]:
    """How far each disk's contour moves under a small L-inf PGD attack on its patch.

    The attack (``diskrobust.attacks.PGD``, objective "points", step eps / 5, seeded random start)
    maximises the squared distance of the predicted points from the clean prediction, within ``eps``
    on the [0, 1] patch intensities. Per disk: {"eps", "steps", "mean_displacement_px",
    "max_displacement_px", "mean_displacement_mm", "max_displacement_mm"} (image px / mm; mean and max
    over the 176 points). Lower is more robust.
    """
    from diskrobust.attacks import PGD

    if not disks:
        return []
    centres = np.stack([d.centre_px for d in disks])
    patches, scale = cut_patches(image, centres, spacing_mm, patch_size, patch_spacing_mm)
    device = next(network.parameters()).device
    clean = _clean_outputs(network, patches)["pred"]
    attack = PGD(network, eps=float(eps), steps=int(steps), norm="linf", objective="points", seed=int(seed))
    adv_images = attack.forward(patches.to(device), targets={"points": clean.to(device)}).images
    adv = _clean_outputs(network, adv_images.detach().cpu())["pred"]
    step_mm = np.array([patch_spacing_mm, patch_spacing_mm])
    moved_patch = (adv - clean).numpy().astype(np.float64)  # (K, N, 2) patch px
    out = []
    for m in moved_patch:
        px = np.linalg.norm(m * scale, axis=1)
        mm = np.linalg.norm(m * step_mm, axis=1)
        out.append({
            "eps": float(eps), "steps": int(steps),
            "mean_displacement_px": round(float(px.mean()), 4), "max_displacement_px": round(float(px.max()), 4),
            "mean_displacement_mm": round(float(mm.mean()), 4), "max_displacement_mm": round(float(mm.max()), 4),
        })
    return out


def disks_label_image(disks: Sequence[DiskPrediction], shape: Sequence[int]) -> np.ndarray:
    """(H, W) uint16 label image with each disk's filled contour set to its label (0 elsewhere)."""
    out = np.zeros(tuple(int(s) for s in shape), dtype=np.uint16)
    for d in disks:
        out[contour_to_mask(d.points_px, out.shape)] = d.label
    return out


def disks_to_json(disks: Sequence[DiskPrediction], sl: SagittalSlice) -> dict[str, Any]:
    """JSON-ready result: per disk its level, label, centre and points in image px and mm.

    Image px are (x, y) of the slice in the contract orientation; mm are ``px * (spacing_col,
    spacing_row)`` from the pixel origin, as in the project's contour files.
    """
    return {
        "format": "diskrobust-contours/1",
        "shape": [int(s) for s in sl.image.shape],
        "spacing_mm": [float(s) for s in sl.spacing_mm],
        "slice_index": int(sl.slice_index),
        "num_points": int(disks[0].points_px.shape[0]) if disks else NUM_POINTS,
        "disks": [
            {
                "level": d.level,
                "label": int(d.label),
                "centre_px": [round(float(v), 3) for v in d.centre_px],
                "points_px": np.round(d.points_px, 3).tolist(),
                "points_mm": np.round(px_to_mm(d.points_px, sl.spacing_mm), 3).tolist(),
                "seg_agreement": None if d.seg_agreement is None else round(float(d.seg_agreement), 4),
                **d.extra,
            }
            for d in disks
        ],
    }


def parse_points(value: Any, source: str = "foreground") -> np.ndarray:
    """MONAI Label click points -> (K, 2) float (x, y) image px.

    Accepts [[x, y], ...] or [[x, y, z], ...] (3D viewers send a slice coordinate, which is dropped:
    the slice is chosen by ``slice_index``), or a JSON string of either. Raises ValueError for anything else.
    """
    if value is None or (isinstance(value, (list, tuple)) and len(value) == 0):
        return np.zeros((0, 2), dtype=np.float64)
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise ValueError(f"{source}: not valid JSON: {err}") from None
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{source}: expected a list of [x, y] points, got {value!r}") from None
    if arr.ndim != 2 or arr.shape[1] not in (2, 3) or not np.isfinite(arr).all():
        raise ValueError(f"{source}: expected a list of finite [x, y] points, got shape {arr.shape}")
    return arr[:, :2].copy()


def parse_slice_index(value: Any) -> int | None:
    """``slice_index`` request value -> int, or None for the middle slice (absent, null, "" or negative).

    Raises ValueError for anything that is not a whole number.
    """
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ValueError(f"slice_index must be an integer, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"slice_index must be an integer, got {value!r}") from None
    if not np.isfinite(number) or number != int(number):
        raise ValueError(f"slice_index must be an integer, got {value!r}")
    index = int(number)
    return None if index < 0 else index


# ---------------------------------------------------------------------------------------------------
# the bundle
# ---------------------------------------------------------------------------------------------------


def load_bundle_network(
    bundle_path: str | Path,
    weights: str | Path | None = None,
    device: str | torch.device = "cpu",
    overrides: Mapping[str, Any] | None = None,
) -> torch.nn.Module:
    """The bundle's ``network_def`` (configs/inference.json) with weights (default models/model.pt), in eval mode.

    ``overrides`` replace arguments of network_def (e.g. {"width": 8} for weights trained with the
    cpu-quick profile). The weights file holds a state_dict, or {"model": state_dict} (MONAI's
    checkpoint saver). Raises DataError naming the file when the config or the weights are missing or
    do not fit the network.
    """
    from monai.bundle import ConfigParser

    bundle = Path(bundle_path)
    config_file = bundle / "configs" / "inference.json"
    if not config_file.is_file():
        raise DataError(config_file, "bundle inference config not found")
    weights = Path(weights) if weights else bundle / "models" / "model.pt"
    if not weights.is_file():
        raise DataError(weights, "model weights not found (train the bundle first: docs/monai_label.md)")
    parser = ConfigParser()
    parser.read_config(str(config_file))
    parser["bundle_root"] = str(bundle)
    for key, value in (overrides or {}).items():
        parser[f"network_def#{key}"] = value
    try:
        network = parser.get_parsed_content("network_def", instantiate=True)
    except Exception as err:
        raise DataError(config_file, f"cannot build network_def: {type(err).__name__}: {err}") from err
    try:
        state = torch.load(str(weights), map_location="cpu", weights_only=True)
    except Exception as err:
        raise DataError(weights, f"cannot read weights: {type(err).__name__}: {err}") from err
    if isinstance(state, Mapping) and "model" in state and isinstance(state["model"], Mapping):
        state = state["model"]
    try:
        network.load_state_dict(state)
    except Exception as err:
        raise DataError(weights, f"weights do not fit the bundle's network_def: {err}") from err
    return network.to(torch.device(device)).eval()


class DiskShapeService:
    """Disk contours and label image for one image file, from a loaded network.

    ``infer(path, centres=None, slice_index=None)`` -> (SagittalSlice, list[DiskPrediction]).
    Without centres the disks are searched for (``find_disk_centres``); found disks whose
    ``seg_agreement`` is below ``min_agreement`` are dropped, and of the rest only those in the spine's
    column (``keep_spine_column``) are kept. Clicked disks are always kept.
    """

    def __init__(self, network: torch.nn.Module, patch_size: int = PATCH_SIZE,
                 patch_spacing_mm: float = DEFAULT_PATCH_SPACING_MM, threshold: float = 0.5,
                 min_agreement: float = 0.5, column_tolerance_mm: float = 10.0):
        self.network = network.eval()
        self.patch_size = int(patch_size)
        self.patch_spacing_mm = float(patch_spacing_mm)
        self.threshold = float(threshold)
        self.min_agreement = float(min_agreement)
        self.column_tolerance_mm = float(column_tolerance_mm)

    def infer(self, path: str | Path, centres: np.ndarray | None = None,
              slice_index: int | None = None) -> tuple[SagittalSlice, list[DiskPrediction]]:
        sl = load_sagittal_slice(path, slice_index)
        image = scale_intensity(sl.image)
        searched = centres is None or len(centres) == 0
        if searched:
            centres = find_disk_centres(self.network, image, sl.spacing_mm, self.patch_size,
                                        self.patch_spacing_mm, self.threshold)
        else:
            centres = np.asarray(centres, dtype=np.float64).reshape(-1, 2)
            h, w = sl.image.shape
            outside = (centres[:, 0] < 0) | (centres[:, 0] > w - 1) | (centres[:, 1] < 0) | (centres[:, 1] > h - 1)
            if outside.any():
                raise ValueError(f"disk centre(s) {centres[outside].tolist()} lie outside the slice of "
                                 f"shape ({h}, {w}) (points are image (x, y) px)")
        disks = predict_disks(self.network, image, sl.spacing_mm, centres, self.patch_size, self.patch_spacing_mm)
        if searched:
            disks = drop_doubtful_disks(disks, self.min_agreement)
            disks = keep_spine_column(disks, sl.spacing_mm, self.column_tolerance_mm)
        return sl, disks


def keep_spine_column(
    disks: Sequence[DiskPrediction], spacing_mm: Sequence[float], tolerance_mm: float = 10.0
) -> list[DiskPrediction]:
    """Keep the found disks that lie in one column, relabelled from the bottom.

    The disks of a spine lie along one gently curved column (lordosis moves a lumbar disk centre
    < 10 mm off the straight line through its neighbours), while false finds of a weak model line up
    elsewhere (e.g. between the spinous processes). Every line through two disk centres is tried
    (RANSAC without sampling: there are few disks); the line whose disks within ``tolerance_mm``
    have the highest summed ``seg_agreement`` is the column, and only its disks are kept.
    """
    disks = list(disks)
    if len(disks) < 3:
        return disks
    mm = px_to_mm(np.stack([d.centre_px for d in disks]), spacing_mm)
    score = np.array([1.0 if d.seg_agreement is None else float(d.seg_agreement) for d in disks])
    best, best_score = None, -1.0
    for i in range(len(disks)):
        for j in range(i + 1, len(disks)):
            direction = mm[j] - mm[i]
            length = float(np.linalg.norm(direction))
            if length == 0.0:
                continue
            normal = np.array([-direction[1], direction[0]]) / length
            inliers = np.abs((mm - mm[i]) @ normal) <= tolerance_mm
            total = float(score[inliers].sum())
            if total > best_score + 1e-9:
                best, best_score = inliers, total
    kept = [d for d, keep in zip(disks, best) if keep]
    return _relabel(kept)


def _relabel(disks: list[DiskPrediction]) -> list[DiskPrediction]:
    for rank, d in enumerate(disks):  # already ordered from the bottom
        d.label = FIRST_DISK_LABEL + rank
        d.level = disk_level_name(d.label)
    return disks


def drop_doubtful_disks(disks: Sequence[DiskPrediction], min_agreement: float) -> list[DiskPrediction]:
    """Found (not clicked) disks whose two heads disagree are not disks: drop them, relabel from the bottom.

    On a patch centred on something else the point head still draws a disk-like contour, but the
    segmentation head, trained to segment the centred disk only, does not fill it.
    """
    return _relabel([d for d in disks if d.seg_agreement is None or d.seg_agreement >= min_agreement])

"""One axis-aligned patch per disk, resampled to a fixed mm/px, and the map back to the image.

Geometry: a patch of `patch_size` S px at `patch_spacing_mm` mm/px is centred on `centre_px` (x, y) of the
source image. With scale = (patch_spacing / spacing_col, patch_spacing / spacing_row) (image px per patch
px, (x, y) order), image_point = (patch_point - S / 2) * scale + centre_px. S / 2 (64 for 128) is the
patch centre, the constant the network adds to its point head.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.transforms import MapTransform, Transform
from scipy.ndimage import map_coordinates

from diskrobust import PATCH_SIZE
from diskrobust.data.contours import contour_centroid, contour_to_mask
from diskrobust.transforms.intensity import minmax_scale

__all__ = [
    "patch_scale",
    "patch_points_to_image",
    "image_points_to_patch",
    "extract_patch",
    "ExtractDiskPatches",
    "ExtractDiskPatchesd",
]

_PADDING = {"zeros": ("constant", 0.0), "border": ("nearest", 0.0)}


def patch_scale(spacing_rowcol: Sequence[float], patch_spacing_mm: float = 0.5) -> np.ndarray:
    """(2,) (x, y) image pixels per patch pixel for an image of spacing (row, col) mm."""
    sr, sc = (float(s) for s in spacing_rowcol)
    if sr <= 0 or sc <= 0 or patch_spacing_mm <= 0:
        raise ValueError(f"spacings must be positive, got image {spacing_rowcol}, patch {patch_spacing_mm}")
    return np.array([patch_spacing_mm / sc, patch_spacing_mm / sr])


def patch_points_to_image(points, centre_px, scale, patch_size: int = PATCH_SIZE):
    """Patch px (..., N, 2) -> source image px. centre_px and scale are (2,) or batched (..., 2);
    works on numpy arrays and torch tensors alike (broadcast over N)."""
    points, centre, sc = _as_arrays(points, centre_px, scale)
    return (points - patch_size / 2.0) * sc[..., None, :] + centre[..., None, :]


def image_points_to_patch(points, centre_px, scale, patch_size: int = PATCH_SIZE):
    """Inverse of `patch_points_to_image`."""
    points, centre, sc = _as_arrays(points, centre_px, scale)
    return (points - centre[..., None, :]) / sc[..., None, :] + patch_size / 2.0


def _as_arrays(points, centre_px, scale):
    """Torch in -> torch on the points' device and dtype; anything else -> float64 numpy."""
    if isinstance(points, torch.Tensor):
        def conv(v):
            return torch.as_tensor(v, device=points.device, dtype=points.dtype)
    else:
        def conv(v):
            return np.asarray(v, dtype=np.float64)
    return conv(points), conv(centre_px), conv(scale)


def _normalise(patch: np.ndarray, intensity: str | None) -> np.ndarray:
    if intensity == "minmax":
        return minmax_scale(patch)
    if intensity == "clip":
        return np.clip(patch, 0.0, 1.0)
    if intensity is None or intensity == "none":
        return patch
    raise ValueError(f"intensity must be 'minmax', 'clip' or None, got {intensity!r}")


def extract_patch(
    image: np.ndarray,
    centre_px: Sequence[float],
    spacing_rowcol: Sequence[float],
    patch_size: int = PATCH_SIZE,
    patch_spacing_mm: float = 0.5,
    padding: str = "zeros",
    intensity: str | None = "minmax",
) -> tuple[np.ndarray, np.ndarray]:
    """Cut a patch around any centre (e.g. a detected disk position at inference).

    image: (H, W) or (1, H, W); centre_px: (x, y) image px. Bilinear resampling; outside the image
    `padding` "zeros" or "border" (edge value). intensity: "minmax" (per patch to [0, 1], as the paper),
    "clip" (to [0, 1], for images already scaled) or None.
    Returns (patch (1, S, S) float32, scale (2,) (x, y)).
    """
    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 3 and img.shape[0] == 1:
        img = img[0]
    if img.ndim != 2:
        raise ValueError(f"extract_patch needs an image (H, W) or (1, H, W), got {np.shape(image)}")
    if padding not in _PADDING:
        raise ValueError(f"padding must be one of {sorted(_PADDING)}, got {padding!r}")
    scale = patch_scale(spacing_rowcol, patch_spacing_mm)
    cx, cy = (float(c) for c in centre_px)
    grid = np.arange(patch_size, dtype=np.float64) - patch_size / 2.0
    xs = grid * scale[0] + cx
    ys = grid * scale[1] + cy
    rows, cols = np.meshgrid(ys, xs, indexing="ij")
    mode, cval = _PADDING[padding]
    patch = map_coordinates(img, [rows, cols], order=1, mode=mode, cval=cval, prefilter=False)
    return _normalise(patch.astype(np.float32), intensity)[None], scale


class ExtractDiskPatches(Transform):
    """image (1, H, W) + contours (D, 176, 2) image px + image spacing (row, col) -> list of D patch dicts.

    Each dict: "image" (1, S, S) float32, "points" (176, 2) float32 patch px, "mask" (1, S, S) float32
    (filled patch contour), "level" (str, when `levels` is given), "centre_px" (2,) (x, y) source image px
    (the contour's area centroid), "scale" (2,) (x, y) so that
    image_points = (points - S / 2) * scale + centre_px (`patch_points_to_image`).
    """

    def __init__(
        self,
        patch_size: int = PATCH_SIZE,
        patch_spacing_mm: float = 0.5,
        padding: str = "zeros",
        intensity: str | None = "minmax",
    ):
        self.patch_size = int(patch_size)
        self.patch_spacing_mm = float(patch_spacing_mm)
        self.padding = padding
        self.intensity = intensity

    def __call__(self, image, contours, spacing_mm, levels: Sequence[str] | None = None) -> list[dict]:
        img = np.asarray(image, dtype=np.float32)
        cont = np.asarray(contours, dtype=np.float64)
        if cont.ndim == 2:
            cont = cont[None]
        if cont.ndim != 3 or cont.shape[-1] != 2:
            raise ValueError(f"ExtractDiskPatches needs contours (D, N, 2), got {cont.shape}")
        if levels is not None and len(levels) != len(cont):
            raise ValueError(f"{len(levels)} levels for {len(cont)} contours")
        out = []
        for i, pts in enumerate(cont):
            centre = contour_centroid(pts)
            patch, scale = extract_patch(
                img, centre, spacing_mm, self.patch_size, self.patch_spacing_mm, self.padding, self.intensity
            )
            ppts = image_points_to_patch(pts, centre, scale, self.patch_size)
            mask = contour_to_mask(ppts, (self.patch_size, self.patch_size)).astype(np.float32)[None]
            item = {
                "image": patch,
                "points": ppts.astype(np.float32),
                "mask": mask,
                "centre_px": centre.astype(np.float32),
                "scale": scale.astype(np.float32),
            }
            if levels is not None:
                item["level"] = str(levels[i])
            out.append(item)
        return out


class ExtractDiskPatchesd(MapTransform):
    """Dictionary twin of `ExtractDiskPatches`: reads `image_key` (1, H, W), `contours_key` (D, 176, 2),
    `spacing_key` (row, col) and `levels_key`, returns a list of D dicts (MONAI flattens list outputs
    the way it does for RandCropByPosNegLabeld). Other keys (e.g. "subject") are copied into each
    patch dict; the whole-image keys and the contour metadata are not.

    Inference (no contours): when the item has no `contours_key` but `centres_key` (D, 2) (x, y) image px
    (`LoadDiskPositionsd`), the patches are cut at those centres in the same way, without "points" and
    "mask"; `disk_labels` (D,) become each patch's "disk_label"."""

    def __init__(
        self,
        image_key: str = "image",
        contours_key: str = "contours",
        spacing_key: str = "spacing_mm",
        levels_key: str = "levels",
        patch_size: int = PATCH_SIZE,
        patch_spacing_mm: float = 0.5,
        padding: str = "zeros",
        intensity: str | None = "minmax",
        drop_keys: Sequence[str] = ("label", "disk_labels"),
        centres_key: str = "centres",
        labels_key: str = "disk_labels",
        allow_missing_keys: bool = False,
    ):
        super().__init__([image_key, contours_key], allow_missing_keys)
        self.centres_key, self.labels_key = centres_key, labels_key
        self.image_key, self.contours_key = image_key, contours_key
        self.spacing_key, self.levels_key = spacing_key, levels_key
        self.drop_keys = set(drop_keys)
        self.extractor = ExtractDiskPatches(patch_size, patch_spacing_mm, padding, intensity)

    def __call__(self, data: Mapping[Hashable, object]) -> list[dict]:
        d = dict(data)
        if self.spacing_key not in d:
            raise KeyError(f"ExtractDiskPatchesd needs the image spacing under {self.spacing_key!r}")
        levels = d.get(self.levels_key)
        if self.contours_key not in d and self.centres_key in d:
            return self._at_centres(d, levels)
        patches = self.extractor(d[self.image_key], d[self.contours_key], d[self.spacing_key], levels)
        used = {self.image_key, self.contours_key, self.spacing_key, self.levels_key} | self.drop_keys
        shared = {k: v for k, v in d.items() if k not in used}
        return [{**shared, **p} for p in patches]

    def _at_centres(self, d: dict, levels) -> list[dict]:
        ex = self.extractor
        centres = np.asarray(d[self.centres_key], dtype=np.float64).reshape(-1, 2)
        labels = d.get(self.labels_key)
        used = {self.image_key, self.centres_key, self.levels_key, self.labels_key} | (self.drop_keys - {self.spacing_key})
        shared = {k: v for k, v in d.items() if k not in used}
        out = []
        for i, centre in enumerate(centres):
            patch, scale = extract_patch(d[self.image_key], centre, d[self.spacing_key], ex.patch_size,
                                         ex.patch_spacing_mm, ex.padding, ex.intensity)
            item = {**shared, "image": patch, "centre_px": centre.astype(np.float32), "scale": scale.astype(np.float32),
                    self.spacing_key: np.asarray(d[self.spacing_key], dtype=np.float64)}
            if levels is not None:
                item["level"] = str(levels[i])
            if labels is not None:
                item["disk_label"] = int(labels[i])
            out.append(item)
        return out

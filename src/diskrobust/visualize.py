"""Images for TensorBoard and the docs: contours over a patch, amplified perturbations, panels.

All functions are pure and return float32 numpy arrays (3, H, W) in [0, 1] (channel first, as
`SummaryWriter.add_image` expects by default). Contours are (N, 2) arrays of (x, y) = (col, row)
pixels, closed (the last point joins the first).
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib
import numpy as np
import torch
from skimage.draw import disk, line

__all__ = ["COLORS", "draw_contours", "amplify_perturbation", "side_by_side", "to_rgb"]

# Standard colours so every panel reads the same way.
COLORS: dict[str, tuple[float, float, float]] = {
    "truth": (0.0, 1.0, 0.0),
    "pred": (1.0, 0.0, 0.0),
    "attacked": (1.0, 0.5, 0.0),
    "clean": (0.0, 0.6, 1.0),
    "ood": (1.0, 0.0, 1.0),
    "seg": (1.0, 1.0, 0.0),
}

# Radius (px) of the dot that marks a contour's point 0 (the anterior-superior corner).
_FIRST_POINT_RADIUS = 1.5


def _to_numpy(array) -> np.ndarray:
    if torch.is_tensor(array):
        array = array.detach().cpu().numpy()
    return np.asarray(array)

def _grey_2d(array, dtype, what: str) -> np.ndarray:
    """(H, W) or (1, H, W) tensor/array -> finite (H, W) numpy array of `dtype`; ValueError naming `what`."""
    array = _to_numpy(array).astype(dtype)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2:
        raise ValueError(f"{what}: expected (H, W) or (1, H, W), got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{what} contains NaN or Inf")
    return array


def to_rgb(image) -> np.ndarray:
    """Grey (H, W) or (1, H, W) image in [0, 1] -> (3, H, W) float32 (values clipped to [0, 1])."""
    image = _grey_2d(image, np.float32, "grey image")
    return np.repeat(np.clip(image, 0.0, 1.0)[None], 3, axis=0)


def _clip_segment(p0: np.ndarray, p1: np.ndarray, width: int, height: int):
    """Liang-Barsky clip of the segment p0-p1 ((x, y)) to the image's pixel area; None if it misses."""
    lo = np.array([-0.5, -0.5])
    hi = np.array([width - 0.5, height - 0.5])
    d = p1 - p0
    t0, t1 = 0.0, 1.0
    for k in range(2):
        if d[k] == 0:
            if p0[k] < lo[k] or p0[k] > hi[k]:
                return None
            continue
        ta, tb = (lo[k] - p0[k]) / d[k], (hi[k] - p0[k]) / d[k]
        t0, t1 = max(t0, min(ta, tb)), min(t1, max(ta, tb))
        if t0 > t1:
            return None
    return p0 + t0 * d, p0 + t1 * d


def _closed_polyline_pixels(points: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of the closed polyline through (x, y) points, clipped to the image.

    Segments are clipped before they are rasterised, so a wild (e.g. attacked) prediction far
    outside the patch costs no more than one inside it, and degenerate (collapsed) contours draw.
    """
    rows, cols = [], []
    for p0, p1 in zip(points, np.roll(points, -1, axis=0)):
        clipped = _clip_segment(p0, p1, width, height)
        if clipped is None:
            continue
        (x0, y0), (x1, y1) = np.rint(clipped[0]).astype(int), np.rint(clipped[1]).astype(int)
        rr, cc = line(y0, x0, y1, x1)
        rows.append(rr)
        cols.append(cc)
    if not rows:
        return np.zeros(0, int), np.zeros(0, int)
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    keep = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
    return rows[keep], cols[keep]


def draw_contours(image, contours: Sequence, colors: Sequence[tuple[float, float, float]],
                  mark_first: bool = True) -> np.ndarray:
    """Draw closed contours over a grey image, -> (3, H, W) float32 in [0, 1].

    image: (H, W) or (1, H, W) tensor/array in [0, 1].
    contours: list of (N, 2) arrays/tensors of (x, y) pixels, drawn as closed polylines
        (skimage.draw.line between rounded points); parts outside the image are clipped.
    colors: one RGB tuple in [0, 1] per contour (see `COLORS`).
    mark_first: draw a small dot on point 0 so the point order (and a flipped contour) shows.
    Later contours are drawn over earlier ones.
    """
    rgb = to_rgb(image)
    height, width = rgb.shape[1:]
    if len(contours) != len(colors):
        raise ValueError(f"draw_contours: {len(contours)} contours but {len(colors)} colours")
    for i, (points, color) in enumerate(zip(contours, colors)):
        points = _to_numpy(points).astype(np.float64)
        if points.ndim != 2 or points.shape[1] != 2 or points.shape[0] < 2:
            raise ValueError(f"draw_contours: contour {i} must be (N >= 2, 2) (x, y) points, got shape {points.shape}")
        if not np.isfinite(points).all():
            raise ValueError(f"draw_contours: contour {i} contains NaN or Inf")
        color = np.asarray(color, dtype=np.float32)
        if color.shape != (3,) or color.min() < 0 or color.max() > 1:
            raise ValueError(f"draw_contours: colour {i} must be an RGB tuple in [0, 1], got {tuple(color.tolist())}")
        rows, cols = _closed_polyline_pixels(points, height, width)
        rgb[:, rows, cols] = color[:, None]
        if mark_first:
            rows, cols = disk((points[0, 1], points[0, 0]), _FIRST_POINT_RADIUS, shape=(height, width))
            rgb[:, rows, cols] = color[:, None]
    return rgb


def amplify_perturbation(delta, colormap: str = "RdBu_r") -> tuple[np.ndarray, float]:
    """Show a perturbation (H, W) (or (1, H, W)) with a diverging colour map centred at 0.

    The perturbation is multiplied by `scale` = 1 / max|delta| so its extreme reaches a full colour
    (red positive, blue negative, white zero); `scale` is returned for the image tag
    (e.g. "delta x 14.3"). An all-zero perturbation gives a white image and scale 1.
    Returns ((3, H, W) float32 in [0, 1], scale).
    """
    delta = _grey_2d(delta, np.float64, "amplify_perturbation: perturbation")
    peak = float(np.abs(delta).max())
    scale = 1.0 / peak if peak > 0 else 1.0
    values = np.clip(delta * scale, -1.0, 1.0)
    rgba = matplotlib.colormaps[colormap]((values + 1.0) / 2.0)
    return np.ascontiguousarray(rgba[..., :3].transpose(2, 0, 1), dtype=np.float32), scale


def side_by_side(images: Sequence) -> np.ndarray:
    """Concatenate k (3, H, W) images left to right -> (3, H, W * k) (widths may differ)."""
    if len(images) == 0:
        raise ValueError("side_by_side: no images")
    arrays = [_to_numpy(im).astype(np.float32) for im in images]
    for i, a in enumerate(arrays):
        if a.ndim != 3 or a.shape[0] != 3:
            raise ValueError(f"side_by_side: image {i} must be (3, H, W), got shape {a.shape}")
        if a.shape[1] != arrays[0].shape[1]:
            raise ValueError(f"side_by_side: image {i} has height {a.shape[1]}, image 0 has {arrays[0].shape[1]}")
    return np.concatenate(arrays, axis=2)

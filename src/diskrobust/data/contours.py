"""Disk contour geometry: mask <-> 176-point contour with point correspondence, resampling, units, Dice.

Conventions (docs/architecture.md): points are (x, y) = (col, row) pixel coordinates with pixel
centres at integers. A disk contour has 176 = 4 x 44 points: point 0 is the anterior-superior
corner, side 0 runs down the anterior side to the anterior-inferior corner (point 44), side 1 along
the inferior endplate to the posterior-inferior corner (88), side 2 up the posterior side to the
posterior-superior corner (132), side 3 along the superior endplate back towards point 0. Each side
holds its start corner and 44 points equally spaced by arc length.

Everything here is plain numpy except `polygon_fill_torch`, the batched (B, N, 2) polygon fill used by
metrics and attacks on any torch device.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from skimage.draw import polygon as _draw_polygon
from skimage.measure import find_contours

from diskrobust import NUM_POINTS, POINTS_PER_SIDE
from diskrobust.data.errors import DataError

NUM_SIDES = 4
# A mask smaller than this cannot give four meaningful sides of 44 points.
MIN_MASK_PIXELS = 16

__all__ = [
    "NUM_POINTS",
    "POINTS_PER_SIDE",
    "MIN_MASK_PIXELS",
    "mask_to_contour",
    "contour_to_mask",
    "resample_closed",
    "resample_open",
    "resample_sides",
    "signed_area",
    "contour_centroid",
    "px_to_mm",
    "mm_to_px",
    "dice",
    "validate_contour",
    "point_order_problem",
    "polygon_fill_torch",
]


def signed_area(points: np.ndarray) -> float:
    """Shoelace signed area of a closed polygon (N, 2) (x, y). Negative for the contract's point order."""
    p = np.asarray(points, dtype=np.float64)
    x, y = p[:, 0], p[:, 1]
    return 0.5 * float(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y))


def contour_centroid(points: np.ndarray) -> np.ndarray:
    """Area centroid (2,) (x, y) of a closed polygon (N, 2).

    The area centroid, not the mean of the points: sides have 44 points each whatever their length,
    so the point mean is pulled towards the short sides.
    """
    p = np.asarray(points, dtype=np.float64)
    x, y = p[:, 0], p[:, 1]
    xn, yn = np.roll(x, -1), np.roll(y, -1)
    cross = x * yn - xn * y
    area = 0.5 * cross.sum()
    if abs(area) < 1e-9:
        return p.mean(0)
    cx = ((x + xn) * cross).sum() / (6.0 * area)
    cy = ((y + yn) * cross).sum() / (6.0 * area)
    return np.array([cx, cy])


def _arc_positions(points: np.ndarray, closed: bool) -> tuple[np.ndarray, np.ndarray]:
    """Polyline vertices (closing vertex appended when `closed`) and cumulative arc length."""
    p = np.asarray(points, dtype=np.float64)
    if closed:
        p = np.concatenate([p, p[:1]], axis=0)
    seg = np.linalg.norm(np.diff(p, axis=0), axis=1)
    return p, np.concatenate([[0.0], np.cumsum(seg)])


def _interp_polyline(p: np.ndarray, s: np.ndarray, targets: np.ndarray) -> np.ndarray:
    x = np.interp(targets, s, p[:, 0])
    y = np.interp(targets, s, p[:, 1])
    return np.stack([x, y], axis=1)


def resample_open(points: np.ndarray, n: int) -> np.ndarray:
    """`n` points equally spaced by arc length along an open polyline (M, 2), from its first vertex
    included to its last vertex excluded: (n, 2). Used for one side of a contour (start corner kept)."""
    p, s = _arc_positions(points, closed=False)
    if s[-1] <= 0:
        return np.repeat(p[:1], n, axis=0)
    return _interp_polyline(p, s, np.arange(n) * (s[-1] / n))


def resample_closed(points: np.ndarray, n: int) -> np.ndarray:
    """`n` points equally spaced by arc length along a closed polygon (M, 2), starting at point 0: (n, 2)."""
    p, s = _arc_positions(points, closed=True)
    if s[-1] <= 0:
        return np.repeat(p[:1], n, axis=0)
    return _interp_polyline(p, s, np.arange(n) * (s[-1] / n))


def resample_sides(points: np.ndarray, points_per_side: int = POINTS_PER_SIDE) -> np.ndarray:
    """Re-sample a 4-sided contour (4 k, 2) side by side to (4 * points_per_side, 2).

    The corners are the points at indices 0, k, 2k, 3k (the contract's order); each side keeps its
    start corner and is re-spaced evenly by arc length up to (not including) the next corner.
    """
    p = np.asarray(points, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 2 or p.shape[0] % NUM_SIDES or p.shape[0] < NUM_SIDES:
        raise ValueError(f"resample_sides needs a (4k, 2) contour, got {p.shape}")
    k = p.shape[0] // NUM_SIDES
    sides = []
    for side in range(NUM_SIDES):
        start = side * k
        stop = start + k + 1  # include the next corner so the last segment is part of this side
        seg = p[np.arange(start, stop) % p.shape[0]]
        sides.append(resample_open(seg, points_per_side))
    return np.concatenate(sides, axis=0)


def _unit(v: Sequence[float], name: str) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64).reshape(2)
    norm = np.linalg.norm(v)
    if not np.isfinite(norm) or norm == 0:
        raise ValueError(f"{name} must be a non-zero (x, y) direction, got {v}")
    return v / norm


def mask_to_contour(
    mask: np.ndarray,
    num_points: int = NUM_POINTS,
    anterior: Sequence[float] = (-1.0, 0.0),
    superior: Sequence[float] = (0.0, -1.0),
    source: str | None = None,
) -> np.ndarray:
    """Ordered disk contour (num_points, 2) (x, y) px from a binary disk mask (H, W).

    Recipe (anatomy_and_mr_facts.md): pad by one pixel and trace the 0.5 iso-line
    (skimage.measure.find_contours), keep the longest, undo the pad; principal axes of the traced
    points, the long axis being antero-posterior and pointed along `anterior`, the short one along
    `superior` (both (x, y) image directions; defaults: anterior = left, superior = up); corners are
    the points maximising +-u +-v in the frame normalised to the half-extents; the contour is oriented
    AS -> AI -> PI -> PS and each side resampled by arc length to num_points / 4 points.

    Raises DataError (naming `source`) for an empty or too small mask, or a shape whose corners
    cannot be ordered (e.g. a mask that is not disk-like).
    """
    m = np.asarray(mask).astype(bool)
    if m.ndim != 2:
        raise DataError(source, f"disk mask must be 2D (H, W), got shape {m.shape}")
    if num_points % NUM_SIDES or num_points < 4 * NUM_SIDES:
        raise ValueError(f"num_points must be a multiple of 4 (>= 16), got {num_points}")
    n_pix = int(m.sum())
    if n_pix == 0:
        raise DataError(source, "disk mask is empty")
    if n_pix < MIN_MASK_PIXELS:
        raise DataError(source, f"disk mask has {n_pix} pixels, fewer than {MIN_MASK_PIXELS}: too small for a contour")

    padded = np.pad(m, 1).astype(np.float32)
    traces = find_contours(padded, 0.5)
    rc = max(traces, key=len) - 1.0  # undo the pad
    if np.allclose(rc[0], rc[-1]):
        rc = rc[:-1]  # find_contours repeats the first vertex of a closed line
    pts = rc[:, ::-1].astype(np.float64)  # (row, col) -> (x, y)

    ant = _unit(anterior, "anterior")
    sup = _unit(superior, "superior")
    # Principal axes of the traced outline, which is dense (about 1 px spacing) so the point
    # covariance stands for the outline's shape.
    centre = pts.mean(0)
    cov = np.cov((pts - centre).T)
    evals, evecs = np.linalg.eigh(cov)
    u = evecs[:, int(np.argmax(evals))]
    if u @ ant < 0:
        u = -u
    v = np.array([-u[1], u[0]])
    if v @ sup < 0:
        v = -v
    a = (pts - centre) @ u
    b = (pts - centre) @ v
    a = (a - 0.5 * (a.max() + a.min())) / max(0.5 * (a.max() - a.min()), 1e-9)
    b = (b - 0.5 * (b.max() + b.min())) / max(0.5 * (b.max() - b.min()), 1e-9)

    # In the (a, b) frame the contract order AS(+,+) -> AI(+,-) -> PI(-,-) -> PS(-,+) is clockwise,
    # i.e. negative shoelace area: flip the trace if needed.
    if signed_area(np.stack([a, b], 1)) > 0:
        pts, a, b = pts[::-1].copy(), a[::-1].copy(), b[::-1].copy()
    corners = [int(np.argmax(a + b)), int(np.argmax(a - b)), int(np.argmax(-a - b)), int(np.argmax(-a + b))]
    n = len(pts)
    offsets = [(c - corners[0]) % n for c in corners]
    if not (offsets[0] < offsets[1] < offsets[2] < offsets[3]):
        raise DataError(source, "disk mask outline is not disk-like: its four corners are not in AS, AI, PI, PS order")
    pts = np.roll(pts, -corners[0], axis=0)
    per_side = num_points // NUM_SIDES
    sides = []
    for side in range(NUM_SIDES):
        start = offsets[side]
        stop = offsets[side + 1] if side < NUM_SIDES - 1 else n
        seg = pts[np.arange(start, stop + 1) % n]
        sides.append(resample_open(seg, per_side))
    return np.concatenate(sides, axis=0)


def contour_to_mask(points: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Filled polygon (H, W) bool of a closed contour (N, 2) (x, y), pixel centres at integers.

    A pixel is inside when its centre is inside the polygon (skimage.draw.polygon), which inverts
    `mask_to_contour`'s 0.5 iso-line so the round trip is tight.
    """
    p = np.asarray(points, dtype=np.float64)
    h, w = int(shape[0]), int(shape[1])
    out = np.zeros((h, w), dtype=bool)
    rr, cc = _draw_polygon(p[:, 1], p[:, 0], shape=(h, w))
    out[rr, cc] = True
    return out


def px_to_mm(points: np.ndarray, spacing_rowcol: Sequence[float]) -> np.ndarray:
    """(…, 2) (x, y) pixels -> in-plane mm from the pixel origin: x * spacing_col, y * spacing_row."""
    s = np.asarray(spacing_rowcol, dtype=np.float64).reshape(2)
    return np.asarray(points, dtype=np.float64) * s[::-1]


def mm_to_px(points_mm: np.ndarray, spacing_rowcol: Sequence[float]) -> np.ndarray:
    """Inverse of `px_to_mm`."""
    s = np.asarray(spacing_rowcol, dtype=np.float64).reshape(2)
    return np.asarray(points_mm, dtype=np.float64) / s[::-1]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two binary arrays of the same shape; 1.0 when both are empty."""
    a = np.asarray(a).astype(bool)
    b = np.asarray(b).astype(bool)
    if a.shape != b.shape:
        raise ValueError(f"dice of arrays with different shapes {a.shape} and {b.shape}")
    total = int(a.sum()) + int(b.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(a, b).sum()) / total


def validate_contour(
    points, image_shape: Sequence[int] | None = None, source: str | None = None, num_points: int = NUM_POINTS
) -> np.ndarray:
    """Check a disk contour and return it as float64 (num_points, 2).

    Raises DataError naming `source` when it is not (num_points, 2), holds NaN/Inf, lies (partly)
    outside the image extent [-0.5, W - 0.5] x [-0.5, H - 0.5] when `image_shape` (H, W) is given,
    or encloses no area.
    """
    try:
        p = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise DataError(source, f"contour is not a numeric array: {err}") from None
    if p.shape != (num_points, 2):
        raise DataError(source, f"contour must have shape ({num_points}, 2), got {p.shape}")
    if not np.all(np.isfinite(p)):
        raise DataError(source, "contour holds NaN or Inf coordinates")
    if image_shape is not None:
        h, w = int(image_shape[0]), int(image_shape[1])
        lo = p.min(0)
        hi = p.max(0)
        if lo[0] < -0.5 or lo[1] < -0.5 or hi[0] > w - 0.5 or hi[1] > h - 0.5:
            raise DataError(
                source,
                f"contour leaves the image of shape ({h}, {w}): x in [{lo[0]:.1f}, {hi[0]:.1f}], "
                f"y in [{lo[1]:.1f}, {hi[1]:.1f}]",
            )
    if abs(signed_area(p)) < 1.0:
        raise DataError(source, "contour encloses (almost) no area")
    return p


def point_order_problem(points: np.ndarray) -> str | None:
    """Why a (176, 2) contour breaks the documented point order, or None when it follows it.

    Two checks that hold for any plausible disk shape and tilt: the orientation (anterior side down,
    inferior endplate towards posterior, ...: a negative shoelace area with y down), and the start
    corner (side 0, points 0-43, is the anterior side: its mean x is the smallest of the four sides;
    a disk is ~3x wider than high, so this holds up to ~70 degrees of tilt). A reversed contour or
    one starting at another corner fails one of them.
    """
    p = np.asarray(points, dtype=np.float64)
    if p.shape != (NUM_POINTS, 2):
        return f"expected ({NUM_POINTS}, 2) points, got {p.shape}"
    if signed_area(p) > 0:
        return (
            "points run clockwise on screen (the reverse of the convention: point 0 anterior-superior, "
            "then down the anterior side); reverse the order"
        )
    side_x = p.reshape(NUM_SIDES, POINTS_PER_SIDE, 2)[:, :, 0].mean(1)
    k = int(np.argmin(side_x))
    if k != 0:
        return (
            f"point 0 is not the anterior-superior corner: side {k} (points {k * POINTS_PER_SIDE}-"
            f"{(k + 1) * POINTS_PER_SIDE - 1}) is the most anterior, so the contour should start at point "
            f"{k * POINTS_PER_SIDE} (roll it by {-k * POINTS_PER_SIDE})"
        )
    return None


def polygon_fill_torch(points: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Batched polygon fill: points (B, N, 2) (x, y) px -> (B, 1, H, W) float {0, 1} on points' device.

    Even-odd rule at pixel centres, by scanlines: every edge crossing a row toggles the pixels at or
    to the right of the crossing; the toggles are scattered into a (B, H, W + 1) counter and a cumulative
    sum along the row gives each pixel's parity. Cost O(B H (N + W)), no (B, H, W, N) intermediate.
    Not differentiable (a metric/mask helper). Agrees with `contour_to_mask` except possibly for pixels
    whose centre lies on the outline.
    """
    if points.ndim != 3 or points.shape[-1] != 2:
        raise ValueError(f"polygon_fill_torch needs points of shape (B, N, 2), got {tuple(points.shape)}")
    h, w = int(shape[0]), int(shape[1])
    p = points.detach()
    dtype = torch.float64 if p.dtype == torch.float64 else torch.float32
    p = p.to(dtype)
    bsz = p.shape[0]
    x0, y0 = p[..., 0], p[..., 1]
    x1, y1 = torch.roll(x0, -1, dims=1), torch.roll(y0, -1, dims=1)
    rows = torch.arange(h, device=p.device, dtype=dtype).view(1, h, 1)  # (1, H, 1)
    y0e, y1e = y0[:, None, :], y1[:, None, :]  # (B, 1, N)
    x0e, x1e = x0[:, None, :], x1[:, None, :]
    # Half-open rule: an edge crosses the scanline when exactly one end is strictly below it, so
    # horizontal edges and shared vertices count once and every row has an even number of crossings.
    crosses = (y0e > rows) != (y1e > rows)  # (B, H, N)
    dy = torch.where(crosses, y1e - y0e, torch.ones_like(y1e - y0e))
    x_cross = x0e + (rows - y0e) * (x1e - x0e) / dy
    # pixel col c is toggled by a crossing at x when x <= c, i.e. from col ceil(x) on; non-crossings
    # and crossings right of the image go to the spare column w
    start = torch.ceil(x_cross).clamp(0, w)
    start = torch.where(crosses, start, torch.full_like(start, w)).long()
    toggles = torch.zeros(bsz, h, w + 1, device=p.device, dtype=torch.int32)
    toggles.scatter_add_(2, start, torch.ones_like(start, dtype=torch.int32))
    inside = (toggles[..., :w].cumsum(-1) % 2) == 1
    out_dtype = points.dtype if points.dtype.is_floating_point else torch.float32
    return inside.to(out_dtype).unsqueeze(1)

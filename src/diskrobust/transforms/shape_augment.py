"""The paper's shape-aware augmentation: PCA shape model + thin-plate-spline image warp.

A new disk shape is `mean + sum_k c_k sqrt(lambda_k) P_k` with `c_k ~ U[-c_max, c_max]` over the first
`n_modes` principal modes of the training contours (patch pixels, 352-vectors), and a real training
patch is warped with a thin-plate spline so its contour lands on the new shape, with 16 fixed control
points on the patch border.

Placement rule (what happens when a drawn shape does not fit): the new shape is translated so its
area centroid equals the source contour's (patches are centred on that centroid, so the new patch is
centred like a real one), then it must lie inside the patch with `margin` pixels to spare and keep
the contract's orientation (negative signed area). A draw that fails is redrawn, up to `max_tries`
times; after that the last draw's coefficients are halved until the shape fits (c = 0 is the mean
shape). All draws come from the one generator passed in, so a sample stays a pure function of it.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from pathlib import Path

import numpy as np
import torch
from monai.transforms import MapTransform, Randomizable, Transform

from diskrobust.data.contours import contour_centroid, polygon_fill_torch, signed_area
from diskrobust.data.errors import DataError
from diskrobust.transforms.tps import tps_warp

__all__ = [
    "ShapePCA",
    "draw_new_shape",
    "augment_patch",
    "RandShapeAugment",
    "RandShapeAugmentd",
]


class ShapePCA:
    """PCA shape model of (N, P, 2) contours in patch pixels.

    Attributes: `mean` (P, 2), `components` (K, P, 2) orthonormal as 2P-vectors, `eigenvalues` (K,)
    descending (variance along each component, px^2). K = number of modes with non-zero variance
    (at most N - 1).
    """

    def __init__(self, mean: np.ndarray, components: np.ndarray, eigenvalues: np.ndarray):
        self.mean = np.asarray(mean, dtype=np.float64)
        self.components = np.asarray(components, dtype=np.float64)
        self.eigenvalues = np.asarray(eigenvalues, dtype=np.float64)
        if self.mean.ndim != 2 or self.mean.shape[1] != 2:
            raise ValueError(f"ShapePCA mean must be (P, 2), got {self.mean.shape}")
        if self.components.shape[1:] != self.mean.shape or self.components.shape[0] != self.eigenvalues.shape[0]:
            raise ValueError(
                f"ShapePCA components {self.components.shape} / eigenvalues {self.eigenvalues.shape} "
                f"do not match mean {self.mean.shape}"
            )

    @property
    def num_modes(self) -> int:
        """Number of modes available for sampling."""
        return int(self.eigenvalues.shape[0])

    @classmethod
    def fit(cls, contours: np.ndarray, rel_tol: float = 1e-9) -> ShapePCA:
        """Fit on training contours (N, P, 2). Modes with variance below rel_tol x the largest are dropped."""
        x = np.asarray(contours, dtype=np.float64)
        if x.ndim != 3 or x.shape[-1] != 2:
            raise ValueError(f"ShapePCA.fit needs contours (N, P, 2), got {x.shape}")
        if x.shape[0] < 2:
            raise ValueError(f"ShapePCA.fit needs at least 2 contours, got {x.shape[0]}")
        if not np.all(np.isfinite(x)):
            raise ValueError("ShapePCA.fit: contours hold NaN or Inf")
        n, p, _ = x.shape
        flat = x.reshape(n, 2 * p)
        mean = flat.mean(0)
        _, s, vt = np.linalg.svd(flat - mean, full_matrices=False)
        eig = s**2 / (n - 1)
        keep = eig > rel_tol * max(eig.max(), 1e-300)
        return cls(mean.reshape(p, 2), vt[keep].reshape(-1, p, 2), eig[keep])

    def _check_modes(self, n_modes: int) -> None:
        if n_modes < 0 or n_modes > self.num_modes:
            raise ValueError(
                f"n_modes={n_modes} requested but this shape model has {self.num_modes} modes "
                f"(fit on more training contours, or use fewer modes)"
            )

    def synthesize(self, coefficients: np.ndarray) -> np.ndarray:
        """Shapes from standardised coefficients c (n, m) (units of sqrt(lambda), first m modes) -> (n, P, 2)."""
        c = np.atleast_2d(np.asarray(coefficients, dtype=np.float64))
        m = c.shape[1]
        self._check_modes(m)
        scaled = c * np.sqrt(self.eigenvalues[:m])
        return self.mean[None] + np.tensordot(scaled, self.components[:m], axes=(1, 0))

    def sample_coefficients(self, n: int, n_modes: int, c_max: float = 2.0, generator=None) -> np.ndarray:
        """c (n, n_modes) ~ U[-c_max, c_max]; generator: numpy Generator or RandomState (default: fresh)."""
        self._check_modes(n_modes)
        rng = np.random.default_rng() if generator is None else generator
        return rng.uniform(-c_max, c_max, size=(n, n_modes))

    def sample(self, n: int, n_modes: int, c_max: float = 2.0, generator=None) -> np.ndarray:
        """n new shapes (n, P, 2): mean + sum_k c_k sqrt(lambda_k) P_k, c_k ~ U[-c_max, c_max]."""
        return self.synthesize(self.sample_coefficients(n, n_modes, c_max, generator))

    def save(self, path: str | Path) -> None:
        """Write mean, components and eigenvalues to an .npz file (its folder is created)."""
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        np.savez(Path(path), mean=self.mean, components=self.components, eigenvalues=self.eigenvalues)

    @classmethod
    def load(cls, path: str | Path) -> ShapePCA:
        """Read a model written by `save`; DataError naming the file if it is missing or malformed."""
        path = Path(path)
        try:
            with np.load(path) as z:
                return cls(z["mean"], z["components"], z["eigenvalues"])
        except FileNotFoundError:
            raise DataError(path, "shape model file not found") from None
        except (KeyError, ValueError, OSError) as err:
            raise DataError(path, f"not a ShapePCA .npz file: {err}") from None


def _fits(points: np.ndarray, patch_size: int, margin: float) -> bool:
    lo, hi = points.min(0), points.max(0)
    inside = lo.min() >= margin and hi.max() <= patch_size - 1 - margin
    return bool(inside and signed_area(points) < 0)


def draw_new_shape(
    pca: ShapePCA,
    n_modes: int,
    source_points: np.ndarray,
    patch_size: int,
    generator,
    c_max: float = 2.0,
    margin: float = 2.0,
    max_tries: int = 10,
) -> np.ndarray:
    """One new shape (P, 2) for a patch whose contour is `source_points`, by the module's placement rule."""
    target = contour_centroid(source_points)
    c = None
    for _ in range(max(max_tries, 1)):
        c = pca.sample_coefficients(1, n_modes, c_max, generator)
        shape = pca.synthesize(c)[0]
        shape = shape + (target - contour_centroid(shape))
        if _fits(shape, patch_size, margin):
            return shape
    for _ in range(30):
        c = c * 0.5
        shape = pca.synthesize(c)[0]
        shape = shape + (target - contour_centroid(shape))
        if _fits(shape, patch_size, margin):
            return shape
    raise ValueError(
        "the shape model's mean shape does not fit in the patch: was the model fit on contours in "
        f"this patch geometry (size {patch_size})?"
    )


def augment_patch(
    image,
    points: np.ndarray,
    new_points: np.ndarray,
    border_points: int = 16,
    grid_stride: int = 4,
    contour_stride: int = 2,
) -> tuple[torch.Tensor, np.ndarray, torch.Tensor]:
    """Warp one patch image (1, S, S) so `points` (P, 2) land on `new_points` (P, 2).

    The spline is anchored on every `contour_stride`-th contour point plus the border points: with 2,
    88 + 16 anchors instead of 192 make the solve ~6x and the evaluation ~2x cheaper, and the skipped
    points still land within ~0.1 px (measured on phantom shapes; tests check the warped mask).
    Returns (image (1, S, S) float32 tensor clipped to [0, 1], new points float32 (P, 2) numpy,
    filled mask of the new points (1, S, S) float32 tensor, `polygon_fill_torch`).
    """
    img = torch.as_tensor(image)
    if img.ndim != 3 or img.shape[0] != 1:
        raise ValueError(f"augment_patch needs an image (1, S, S), got {tuple(img.shape)}")
    img = img.to(torch.float32)
    step = max(int(contour_stride), 1)
    src = torch.as_tensor(np.asarray(points)[::step], dtype=torch.float32)[None]
    dst = torch.as_tensor(np.asarray(new_points)[::step], dtype=torch.float32)[None]
    warped = tps_warp(img[None], src, dst, border_points=border_points, grid_stride=grid_stride)[0].clamp_(0.0, 1.0)
    new_points = np.asarray(new_points, dtype=np.float32)
    mask = polygon_fill_torch(torch.from_numpy(new_points)[None], img.shape[-2:])[0]
    return warped, new_points, mask


class RandShapeAugment(Randomizable, Transform):
    """Array transform: (image (1, S, S), points (P, 2)) -> (warped image, new points (P, 2), mask (1, S, S)).

    Args:
        pca: the training contours' `ShapePCA` (patch pixels, same patch size).
        n_modes: modes that vary (3, 5, 10 for the paper's P3/P5/P10, 30 for validation data).
        c_max: coefficient range in units of sqrt(eigenvalue).
        prob: probability of augmenting; otherwise the input comes back unchanged (with its mask).
        border_points, grid_stride: see `tps_warp`; contour_stride: see `augment_patch`.
        margin, max_tries: placement rule (module doc).
    Reproducible with `set_random_state(seed)`.
    """

    def __init__(
        self,
        pca: ShapePCA,
        n_modes: int,
        c_max: float = 2.0,
        prob: float = 1.0,
        border_points: int = 16,
        grid_stride: int = 4,
        margin: float = 2.0,
        max_tries: int = 10,
        contour_stride: int = 2,
    ):
        pca._check_modes(n_modes)
        self.contour_stride = contour_stride
        self.pca = pca
        self.n_modes = int(n_modes)
        self.c_max = float(c_max)
        self.prob = float(prob)
        self.border_points = border_points
        self.grid_stride = grid_stride
        self.margin = margin
        self.max_tries = max_tries
        self._do = True
        self._new_points: np.ndarray | None = None

    def randomize(self, data: tuple[np.ndarray, int], generator: np.random.Generator | None = None) -> None:
        """Draw whether to augment and the new shape, from `self.R` or, when given, `generator` (a numpy
        Generator: the datasets pass one per (seed, epoch, index), so a sample does not depend on the
        order in which samples are drawn)."""
        points, patch_size = data
        if generator is None:
            rng = self.R
            self._do = rng.rand() < self.prob
        else:
            rng = generator
            self._do = self.prob >= 1.0 or generator.random() < self.prob
        self._new_points = None
        if self._do:
            self._new_points = draw_new_shape(
                self.pca, self.n_modes, points, patch_size, rng, self.c_max, self.margin, self.max_tries
            )

    def __call__(self, image, points, randomize: bool = True, generator: np.random.Generator | None = None):
        pts = np.asarray(points, dtype=np.float64)
        if pts.shape != self.pca.mean.shape:
            raise ValueError(f"points shape {pts.shape} does not match the shape model's {self.pca.mean.shape}")
        size = int(np.asarray(image.shape)[-1])
        if randomize:
            self.randomize((pts, size), generator)
        if not self._do:
            img = torch.as_tensor(image, dtype=torch.float32)
            pts32 = pts.astype(np.float32)
            return img, pts32, polygon_fill_torch(torch.from_numpy(pts32)[None], img.shape[-2:])[0]
        return augment_patch(image, pts, self._new_points, self.border_points, self.grid_stride, self.contour_stride)


class RandShapeAugmentd(Randomizable, MapTransform):
    """Dictionary twin of `RandShapeAugment`: reads `image_key` (1, S, S) and `points_key` (P, 2) and
    writes the warped image, the new points and the new filled mask (`mask_key`)."""

    def __init__(
        self,
        pca: ShapePCA,
        n_modes: int,
        image_key: str = "image",
        points_key: str = "points",
        mask_key: str = "mask",
        c_max: float = 2.0,
        prob: float = 1.0,
        border_points: int = 16,
        grid_stride: int = 4,
        margin: float = 2.0,
        max_tries: int = 10,
        contour_stride: int = 2,
        allow_missing_keys: bool = False,
    ):
        MapTransform.__init__(self, [image_key, points_key], allow_missing_keys)
        self.image_key, self.points_key, self.mask_key = image_key, points_key, mask_key
        self.augment = RandShapeAugment(
            pca, n_modes, c_max, prob, border_points, grid_stride, margin, max_tries, contour_stride
        )

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None):
        super().set_random_state(seed, state)
        self.augment.set_random_state(state=self.R)
        return self

    def randomize(self, data=None, generator: np.random.Generator | None = None) -> None:
        self.augment.randomize(data, generator)

    def __call__(self, data: Mapping[Hashable, object], generator: np.random.Generator | None = None) -> dict:
        """`generator`: draw from this numpy Generator instead of the transform's own random state."""
        d = dict(data)
        image, points, mask = self.augment(d[self.image_key], d[self.points_key], generator=generator)
        d[self.image_key], d[self.points_key], d[self.mask_key] = image, points, mask
        return d

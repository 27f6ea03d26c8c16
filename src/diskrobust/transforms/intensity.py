"""MR intensity normalisation (MR intensities have no physical unit, so each image is scaled on its own)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

from monai.config import KeysCollection
from monai.transforms import MapTransform, NormalizeIntensity, ScaleIntensityRangePercentiles, Transform

import numpy as np

__all__ = ["ScaleIntensityMR", "ScaleIntensityMRd", "minmax_scale"]


def minmax_scale(patch: np.ndarray) -> np.ndarray:
    """Map a patch's [min, max] to [0, 1] (all zeros for a constant patch): the network's input range.

    The one min-max normalisation of the project (patches for training, evaluation, inference, serving).
    """
    lo, hi = float(patch.min()), float(patch.max())
    return (patch - lo) / (hi - lo) if hi > lo else np.zeros_like(patch)


class ScaleIntensityMR(Transform):
    """Scale an MR image (C, H, W) (or any shape) per image.

    mode="percentile" (default): clip to the [lower, upper] percentiles and map them to [0, 1]
    (monai ScaleIntensityRangePercentiles), so a few hot voxels (fat, flow artefacts) do not squash the
    disk contrast. mode="zscore": zero mean, unit variance (monai NormalizeIntensity); not in [0, 1].
    Keeps the input's type (numpy / torch / MetaTensor), float32.
    """

    def __init__(self, lower: float = 0.5, upper: float = 99.5, mode: str = "percentile"):
        if mode not in ("percentile", "zscore"):
            raise ValueError(f"ScaleIntensityMR mode must be 'percentile' or 'zscore', got {mode!r}")
        if not 0.0 <= lower < upper <= 100.0:
            raise ValueError(f"ScaleIntensityMR needs 0 <= lower < upper <= 100, got {lower}, {upper}")
        self.mode = mode
        if mode == "percentile":
            self._impl = ScaleIntensityRangePercentiles(lower, upper, b_min=0.0, b_max=1.0, clip=True)
        else:
            self._impl = NormalizeIntensity()

    def __call__(self, img):
        return self._impl(img)


class ScaleIntensityMRd(MapTransform):
    """Dictionary twin of `ScaleIntensityMR` for `keys`."""

    def __init__(
        self,
        keys: KeysCollection = "image",
        lower: float = 0.5,
        upper: float = 99.5,
        mode: str = "percentile",
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.scaler = ScaleIntensityMR(lower, upper, mode)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.scaler(d[key])
        return d

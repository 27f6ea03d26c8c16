"""Loading the project's dataset files as MONAI transforms (via diskrobust.data.dataset_io)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform

from diskrobust.data.dataset_io import read_contours_json, read_image

__all__ = ["LoadDiskImage", "LoadDiskImaged", "LoadDiskContours", "LoadDiskContoursd"]


class LoadDiskImage(Transform):
    """Path of a 2D NIfTI image -> (image (1, H, W) float32, spacing_mm (row, col)).

    Reads with `dataset_io.read_image` (the project's orientation convention; DataError on bad files)
    and adds the channel axis MONAI transforms expect.
    """

    def __call__(self, path) -> tuple[np.ndarray, tuple[float, float]]:
        array, meta = read_image(path)
        return array[None], tuple(meta["spacing_mm"])


class LoadDiskImaged(MapTransform):
    """Dictionary twin of `LoadDiskImage`: replaces the path at `keys` by the (1, H, W) image and writes
    the spacing to `spacing_key` ("spacing_mm")."""

    def __init__(self, keys: KeysCollection = "image", spacing_key: str = "spacing_mm", allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.spacing_key = spacing_key
        self.loader = LoadDiskImage()

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key], d[self.spacing_key] = self.loader(d[key])
        return d


class LoadDiskContours(Transform):
    """Path of a contour JSON -> dict {"contours" (D, 176, 2) float32 (x, y) px, "levels" [D str],
    "disk_labels" (D,) int64, "spacing_mm" (row, col), "shape" (H, W)}.

    `image_shape` (H, W) checks that the contours fit the image (DataError naming the file otherwise).
    """

    def __call__(self, path, image_shape=None) -> dict:
        doc = read_contours_json(path, image_shape=image_shape)
        return {
            "contours": np.stack([d["points_px"] for d in doc["disks"]]).astype(np.float32),
            "levels": [d["level"] for d in doc["disks"]],
            "disk_labels": np.array([d["label"] for d in doc["disks"]], dtype=np.int64),
            "spacing_mm": tuple(doc["spacing_mm"]),
            "shape": tuple(doc["shape"]),
        }


class LoadDiskContoursd(MapTransform):
    """Dictionary twin of `LoadDiskContours`: the path at `keys` ("contours") becomes the (D, 176, 2) array,
    and "levels", "disk_labels" and "spacing_mm" (names configurable) are added. When `image_key` holds an
    already loaded image its shape is checked against the file's."""

    def __init__(
        self,
        keys: KeysCollection = "contours",
        levels_key: str = "levels",
        labels_key: str = "disk_labels",
        spacing_key: str = "spacing_mm",
        image_key: str | None = "image",
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.levels_key, self.labels_key, self.spacing_key, self.image_key = levels_key, labels_key, spacing_key, image_key
        self.loader = LoadDiskContours()

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        image = d.get(self.image_key) if self.image_key else None
        image_shape = tuple(image.shape[-2:]) if hasattr(image, "shape") else None
        for key in self.key_iterator(d):
            out = self.loader(d[key], image_shape=image_shape)
            d[key] = out["contours"]
            d[self.levels_key] = out["levels"]
            d[self.labels_key] = out["disk_labels"]
            d[self.spacing_key] = out["spacing_mm"]
        return d

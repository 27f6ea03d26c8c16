"""Loading the project's dataset files as MONAI transforms (via diskrobust.data.dataset_io)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from pathlib import Path

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform

from diskrobust.data.dataset_io import read_contours_json, read_image
from diskrobust.data.disk_positions import read_disk_positions
from diskrobust.data.errors import DataError

__all__ = ["LoadDiskImage", "LoadDiskImaged", "LoadDiskContours", "LoadDiskContoursd", "LoadDiskPositionsd"]


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
    the spacing to `spacing_key` ("spacing_mm"). With `meta=True` it also records the file ("source"),
    its shape ("source_shape" (2,)), NIfTI affine ("affine" (4, 4)) and, when the item has none, a
    "subject" named after the file, which the inference writers need
    to map contours back onto the image."""

    def __init__(self, keys: KeysCollection = "image", spacing_key: str = "spacing_mm", meta: bool = False,
                 allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.spacing_key = spacing_key
        self.meta = bool(meta)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            source = d[key]
            array, meta = read_image(source)
            d[key], d[self.spacing_key] = array[None], tuple(meta["spacing_mm"])
            if self.meta:
                d["source"] = str(source)
                name = Path(source).name
                d.setdefault("subject", name[: -len(".nii.gz")] if name.endswith(".nii.gz") else Path(source).stem)
                d["source_shape"] = np.asarray(array.shape, dtype=np.int64)
                d["affine"] = np.asarray(meta["affine"], dtype=np.float64)
        return d


class LoadDiskContours(Transform):
    """Path of a contour JSON -> dict {"contours" (D, 176, 2) float64 (x, y) px, "levels" [D str],
    "disk_labels" (D,) int64, "spacing_mm" (row, col), "shape" (H, W), "subject"}.

    float64 because the patch geometry (centroid, scale) is computed from the contours: the file's
    4 decimals survive, float32 rounding would move every patch by ~1e-5 px.

    `image_shape` (H, W) checks that the contours fit the image (DataError naming the file otherwise).
    """

    def __call__(self, path, image_shape=None) -> dict:
        doc = read_contours_json(path, image_shape=image_shape)
        return {
            "contours": np.stack([d["points_px"] for d in doc["disks"]]).astype(np.float64),
            "levels": [d["level"] for d in doc["disks"]],
            "disk_labels": np.array([d["label"] for d in doc["disks"]], dtype=np.int64),
            "spacing_mm": tuple(doc["spacing_mm"]),
            "shape": tuple(doc["shape"]),
            "subject": str(doc["subject"]),
        }


class LoadDiskContoursd(MapTransform):
    """Dictionary twin of `LoadDiskContours`: the path at `keys` ("contours") becomes the (D, 176, 2) array,
    and "levels", "disk_labels" and "spacing_mm" (names configurable) are added, and "subject" when the
    item has none. When `image_key` holds an already loaded image its shape is checked against the
    file's, and a spacing already in the item (the image's, from `LoadDiskImaged`) must agree with the
    file's (DataError naming both files otherwise)."""

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
            known = d.get(self.spacing_key)
            if known is not None and not np.allclose(out["spacing_mm"], known, rtol=1e-3):
                source = f" ({d['source']})" if d.get("source") else ""
                raise DataError(d[key], f"spacing_mm {list(out['spacing_mm'])} disagrees with the image's "
                                        f"{list(known)}{source}")
            d.setdefault("subject", out["subject"])
            d[key] = out["contours"]
            d[self.levels_key] = out["levels"]
            d[self.labels_key] = out["disk_labels"]
            d[self.spacing_key] = out["spacing_mm"]
        return d


class LoadDiskPositionsd(MapTransform):
    """Where to cut inference patches: the path at `keys` ("disks": a centres JSON or a contour JSON,
    `diskrobust.data.disk_positions`) becomes "centres" (D, 2) float64 (x, y) image px, with "levels" and
    "disk_labels". An empty path means the image is itself one disk patch of `patch_size` (its centre,
    level "patch", label 201); any other image size is refused, naming the file.
    Needs the loaded image under `image_key` (for its shape)."""

    def __init__(self, keys: KeysCollection = "disks", image_key: str = "image", centres_key: str = "centres",
                 levels_key: str = "levels", labels_key: str = "disk_labels", patch_size: int = 128,
                 allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.image_key, self.centres_key = image_key, centres_key
        self.levels_key, self.labels_key, self.patch_size = levels_key, labels_key, int(patch_size)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        shape = tuple(np.shape(d[self.image_key])[-2:])
        for key in self.key_iterator(d):
            path = d[key] or ""
            if not path:
                s = self.patch_size
                if shape != (s, s):
                    raise DataError(d.get("source", "input image"), f"without a disk positions file the image must be "
                                    f"one {s}x{s} patch, got {shape}; pass --input_disks centres.json")
                disks = [{"level": "patch", "label": 201, "centre_px": np.array([s / 2.0, s / 2.0])}]
            else:
                disks = read_disk_positions(path, shape)
            d[self.centres_key] = np.stack([np.asarray(x["centre_px"], np.float64) for x in disks])
            d[self.levels_key] = [x["level"] for x in disks]
            d[self.labels_key] = np.array([int(x["label"]) for x in disks], np.int64)
        return d

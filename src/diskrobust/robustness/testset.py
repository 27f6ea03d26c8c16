"""The test patches a sweep attacks, as tensors, with a digest of everything in them.

`load_test_set` accepts a `DiskPatchDataset` (the bundles), any sequence of item dicts ("image",
"points", "mask", "subject", "level") or a `TestSet` (sliced). The digest covers the pixels, the
contours, the masks, the subjects, levels and spacing: a sweep unit computed on other data is never
reused (see `diskrobust.robustness.units`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import torch

from diskrobust.data.errors import DataError

__all__ = ["TestSet", "load_test_set"]


@dataclass
class TestSet:
    """The test patches as tensors (CPU): images (N, 1, H, W), points (N, 176, 2), mask (N, 1, H, W)."""

    __test__ = False  # not a pytest test class despite its name

    images: torch.Tensor
    points: torch.Tensor
    mask: torch.Tensor
    subjects: list[str]
    levels: list[str]
    spacing_mm: float
    source: str = ""

    def __len__(self) -> int:
        return self.images.shape[0]

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for t in (self.images, self.points, self.mask):
            h.update(t.contiguous().numpy().tobytes())
        h.update(json.dumps([self.subjects, self.levels, self.spacing_mm]).encode())
        return h.hexdigest()[:16]


def _plain(t) -> torch.Tensor:
    t = torch.as_tensor(t)
    return t.as_tensor() if hasattr(t, "as_tensor") else t


def load_test_set(dataset, num_samples: int | None = None, spacing_mm: float | None = None) -> TestSet:
    """The first `num_samples` items of a dataset of dicts ("image", "points", "mask", "subject", "level").

    Accepts a `DiskPatchDataset` (spacing from its `patch_spacing_mm`), any sequence of such dicts, or a
    `TestSet` (sliced). Raises DataError for an empty dataset or items missing keys.
    """
    source = str(getattr(dataset, "datalist_path", "") or type(dataset).__name__)
    if isinstance(dataset, TestSet):
        n = len(dataset) if num_samples is None else min(num_samples, len(dataset))
        if n == 0:
            raise DataError(dataset.source, "the test set is empty")
        return TestSet(dataset.images[:n], dataset.points[:n], dataset.mask[:n], dataset.subjects[:n],
                       dataset.levels[:n], dataset.spacing_mm, dataset.source)
    total = len(dataset)
    if total == 0:
        raise DataError(source, "the test split holds no disk patches (empty datalist or split)")
    n = total if num_samples is None else min(int(num_samples), total)
    if spacing_mm is None:
        spacing_mm = getattr(dataset, "patch_spacing_mm", None) or getattr(getattr(dataset, "bank", None),
                                                                           "patch_spacing_mm", None) or 0.5
    images, points, masks, subjects, levels = [], [], [], [], []
    for i in range(n):
        item = dataset[i]
        missing = [k for k in ("image", "points", "mask") if k not in item]
        if missing:
            raise DataError(source, f"item {i} lacks {missing} (needs image, points, mask)")
        images.append(_plain(item["image"]).float().reshape(1, *_plain(item["image"]).shape[-2:]))
        points.append(_plain(item["points"]).float().reshape(-1, 2))
        masks.append(_plain(item["mask"]).float().reshape(1, *_plain(item["mask"]).shape[-2:]))
        subjects.append(str(item.get("subject", f"item{i}")))
        levels.append(str(item.get("level", "")))
    return TestSet(torch.stack(images), torch.stack(points), torch.stack(masks), subjects, levels,
                   float(spacing_mm), source)



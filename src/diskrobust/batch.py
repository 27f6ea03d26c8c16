"""Batch layout shared by the dataset, the trainer, the handlers and the attacks.

A batch is a dict: "image" (B, 1, H, W) in [0, 1], "points" (B, 176, 2) (x, y) patch pixels,
"mask" (B, 1, H, W) filled true contour, optionally "weight" (B,) and any metadata keys.
"""

from __future__ import annotations

from collections.abc import Mapping

TARGET_KEYS = ("points", "mask", "weight")


def prepare_disk_batch(batchdata: Mapping, device=None, non_blocking: bool = False, **kwargs):
    """MONAI `prepare_batch` for SupervisedTrainer/Evaluator: -> (image, {points, mask[, weight]}) on `device`."""
    image = batchdata["image"].to(device=device, non_blocking=non_blocking)
    targets = {k: batchdata[k].to(device=device, non_blocking=non_blocking) for k in TARGET_KEYS if k in batchdata}
    return image, targets

"""Network output -> what MONAI Label and the writers take (the `postprocessing` of inference.json)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from diskrobust.data.contours import contour_to_mask

__all__ = ["DiskNetOutputd"]


class DiskNetOutputd:
    """Postprocessing for one decollated sample (MONAI Label): {"pred": {"pred": (N, 2), "seg": (1, S, S)}} ->
    "pred" = disk mask (1, S, S) uint8 from the seg head (logit > 0), or the filled contour without one,
    and "points" = (N, 2) float32 (x, y) patch px when the point head exists."""

    def __init__(self, key: str = "pred", points_key: str = "points"):
        self.key = key
        self.points_key = points_key

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        out = d[self.key]
        if not isinstance(out, Mapping):
            return d  # already converted
        points = out.get("pred")
        if points is not None:
            d[self.points_key] = np.asarray(torch.as_tensor(points).detach().cpu(), dtype=np.float32)
        if out.get("seg") is not None:
            d[self.key] = (torch.as_tensor(out["seg"]).detach().cpu() > 0).to(torch.uint8)
        elif points is not None:
            shape = tuple(d["image"].shape[-2:])
            d[self.key] = torch.as_tensor(contour_to_mask(d[self.points_key], shape)[None].astype(np.uint8))
        return d

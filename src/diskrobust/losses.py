"""Losses of the disk shape network, per sample and reduced.

Shapes: points (B, 176, 2) as (x, y) patch pixels; seg logits and masks (B, 1, H, W).
Per-sample functions return (B,) so attacks can keep the worst iterate per sample and
adversarial training can weight samples.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F


def point_mae_per_sample(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute coordinate error, (B, N, 2) x (B, N, 2) -> (B,)."""
    return (pred - target).abs().flatten(1).mean(1)


def point_sse_per_sample(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Sum of squared coordinate errors (the paper's attack objective), (B, N, 2) -> (B,)."""
    return (pred - target).pow(2).flatten(1).sum(1)


def soft_dice_loss_per_sample(logits: torch.Tensor, mask: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """1 - soft Dice of sigmoid(logits) against a binary mask, (B, 1, H, W) -> (B,)."""
    prob = torch.sigmoid(logits).flatten(1)
    mask = mask.flatten(1).to(prob.dtype)
    inter = (prob * mask).sum(1)
    return 1.0 - (2.0 * inter + smooth) / (prob.sum(1) + mask.sum(1) + smooth)


def bce_per_sample(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy with logits averaged over pixels, (B, 1, H, W) -> (B,)."""
    return F.binary_cross_entropy_with_logits(logits, mask.to(logits.dtype), reduction="none").flatten(1).mean(1)


def seg_loss_per_sample(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The paper's segmentation term: (BCE-with-logits + (1 - soft Dice)) / 2, -> (B,)."""
    return 0.5 * (bce_per_sample(logits, mask) + soft_dice_loss_per_sample(logits, mask))


def _weighted_mean(per_sample: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    if weight is None:
        return per_sample.mean()
    weight = weight.to(per_sample)
    return (per_sample * weight).sum() / weight.sum().clamp_min(1e-12)


class DiskShapeLoss(torch.nn.Module):
    """point MAE * point_weight + seg loss * seg_weight, on whichever heads the network has.

    `forward(outputs, targets)`: outputs is the network's dict ({"pred": (B, N, 2), "seg": (B, 1, H, W)}),
    targets a dict with "points" (B, N, 2), "mask" (B, 1, H, W) and optionally "weight" (B,), the per-sample
    weight that adversarial training uses to form (clean + adversarial) / 2 in one batch.
    The last call's terms are kept in `last_terms` (floats) for logging.
    """

    def __init__(self, point_weight: float = 1.0, seg_weight: float = 1.0):
        super().__init__()
        if point_weight < 0 or seg_weight < 0:
            raise ValueError(f"loss weights must be >= 0, got point_weight={point_weight}, seg_weight={seg_weight}")
        self.point_weight = float(point_weight)
        self.seg_weight = float(seg_weight)
        self.last_terms: dict[str, float] = {}

    def forward(self, outputs: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor]) -> torch.Tensor:
        weight = targets.get("weight")
        total = None
        terms: dict[str, float] = {}
        if "pred" in outputs and self.point_weight > 0:
            term = _weighted_mean(point_mae_per_sample(outputs["pred"], targets["points"]), weight)
            terms["point_mae"] = float(term.detach())
            total = self.point_weight * term
        if "seg" in outputs and self.seg_weight > 0:
            term = _weighted_mean(seg_loss_per_sample(outputs["seg"], targets["mask"]), weight)
            terms["seg"] = float(term.detach())
            total = self.seg_weight * term if total is None else total + self.seg_weight * term
        if total is None:
            raise ValueError(f"network outputs {sorted(outputs)} give no loss term with weights "
                             f"point={self.point_weight}, seg={self.seg_weight}")
        self.last_terms = terms
        return total

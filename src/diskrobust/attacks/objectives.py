"""Per-sample attack objectives on the network's output dict.

An objective is `callable(outputs, targets) -> (B,)`, larger = further from `targets`. outputs:
{"pred": (B, 176, 2), "seg": (B, 1, H, W) logits}; targets: {"points": (B, 176, 2), "mask": (B, 1, H, W)}.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from diskrobust.losses import point_mae_per_sample, point_sse_per_sample, soft_dice_loss_per_sample

Objective = Callable[[Mapping[str, torch.Tensor], Mapping[str, torch.Tensor]], torch.Tensor]

POINT_LOSSES = {"sse": point_sse_per_sample, "mae": point_mae_per_sample}


def point_mse_per_sample(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared coordinate error (the OOD attack's shape term), (B, N, 2) -> (B,)."""
    return (pred - target).pow(2).flatten(1).mean(1)


def mean_point_distance(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean Euclidean distance over the points ("MRSE"), (B, N, 2) -> (B,) px."""
    return (pred - target).norm(dim=-1).mean(-1)


def _require(mapping: Mapping, key: str, what: str, objective: str) -> torch.Tensor:
    if key not in mapping:
        raise KeyError(f"objective {objective!r} needs {what} {key!r}, which has only {sorted(mapping)}")
    return mapping[key]


def build_objective(objective: str | Objective, point_loss: str = "sse") -> Objective:
    """Turn "points" | "seg" | "both" | a callable into an objective.

    "points": point SSE (or MAE) of outputs["pred"] vs targets["points"]; "seg": 1 - soft Dice of
    outputs["seg"] vs targets["mask"]; "both": their sum. The returned function's `heads` attribute
    names the outputs it reads; a callable may declare its own `heads` (else the full forward runs).
    """
    if callable(objective):
        return objective
    if point_loss not in POINT_LOSSES:
        raise ValueError(f"point_loss must be one of {sorted(POINT_LOSSES)}, got {point_loss!r}")
    point_fn = POINT_LOSSES[point_loss]

    def points(outputs, targets):
        return point_fn(_require(outputs, "pred", "network output", objective),
                        _require(targets, "points", "target", objective))

    def seg(outputs, targets):
        return soft_dice_loss_per_sample(_require(outputs, "seg", "network output", objective),
                                         _require(targets, "mask", "target", objective))

    def both(outputs, targets):
        return points(outputs, targets) + seg(outputs, targets)

    # the network outputs each objective reads: the attacks skip the rest (e.g. the decoder for "points")
    points.heads, seg.heads, both.heads = ("pred",), ("seg",), ("pred", "seg")
    table = {"points": points, "seg": seg, "both": both}
    if objective not in table:
        raise ValueError(f"objective must be one of {sorted(table)} or a callable, got {objective!r}")
    return table[objective]

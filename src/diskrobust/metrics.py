"""Metrics of the disk shape network: per-sample functions and Ignite metrics.

Per-sample functions (batched, any device) return (B,):

* `mean_point_distance(pred (B, N, 2), target (B, N, 2), spacing_mm=None)`: mean Euclidean distance
  over the N points (the paper's "MRSE"), in pixels, or in mm with `spacing_mm = (row, col)`.
* `polygon_dice(pred_points (B, N, 2), mask (B, 1, H, W))`: Dice of the filled predicted contour
  against the true mask.
* `seg_dice(logits (B, 1, H, W), mask (B, 1, H, W))`: Dice of the segmentation head (logit > 0).

Ignite metrics `MeanPointDistance`, `PolygonDice`, `SegDice` average these over an epoch (synced
across DDP processes). Their default `output_transform` reads a MONAI engine's
`engine.state.output` ({"image", "label", "pred"}, batched or decollated into a list of per-sample
dicts), where "pred" is the network's dict and "label" the targets dict {"points", "mask"} from
`diskrobust.batch.prepare_disk_batch`.

Lower is better for the point distance. With MONAI's `CheckpointSaver` use
`key_metric_negative_sign=True`; with an engine's `metric_cmp_fn` use `lower_is_better`; with
Ignite's `ModelCheckpoint`/`EarlyStopping` `score_function` use `neg_mean_point_distance` (or
`negated_metric(name)` for a metric attached under another name).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from ignite.exceptions import NotComputableError
from ignite.metrics import Metric
from ignite.metrics.metric import reinit__is_reduced, sync_all_reduce

from diskrobust.data.contours import polygon_fill_torch

__all__ = [
    "mean_point_distance",
    "polygon_dice",
    "seg_dice",
    "dice_of_masks",
    "MeanPointDistance",
    "PolygonDice",
    "SegDice",
    "engine_output_transform",
    "neg_mean_point_distance",
    "negated_metric",
    "lower_is_better",
]


def _check_points(name: str, points: torch.Tensor) -> None:
    if points.ndim != 3 or points.shape[-1] != 2:
        raise ValueError(f"{name}: expected points of shape (B, N, 2), got {tuple(points.shape)}")


def _check_map(name: str, image: torch.Tensor) -> None:
    if image.ndim != 4 or image.shape[1] != 1:
        raise ValueError(f"{name}: expected a map of shape (B, 1, H, W), got {tuple(image.shape)}")


def mean_point_distance(pred: torch.Tensor, target: torch.Tensor, spacing_mm=None) -> torch.Tensor:
    """Mean Euclidean distance over points, (B, N, 2) x (B, N, 2) -> (B,).

    Points are (x, y) = (col, row) pixels. With `spacing_mm` = (row, col) mm per pixel (a sequence
    of 2, a (2,) tensor, or a (B, 2) tensor for per-sample spacing) x is scaled by the col spacing
    and y by the row spacing, giving mm.
    """
    _check_points("mean_point_distance pred", pred)
    _check_points("mean_point_distance target", target)
    if pred.shape != target.shape:
        raise ValueError(f"mean_point_distance: pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    diff = (pred - target.to(pred)).float()
    if spacing_mm is not None:
        spacing = torch.as_tensor(spacing_mm, dtype=diff.dtype, device=diff.device)
        if spacing.shape not in ((2,), (diff.shape[0], 2)):
            raise ValueError(f"mean_point_distance: spacing_mm must be (row, col) or (B, 2), got shape "
                             f"{tuple(spacing.shape)}")
        # (row, col) -> (x, y) = (col, row) scale
        diff = diff * spacing.flip(-1).reshape(-1, 1, 2)
    return diff.norm(dim=-1).mean(dim=-1)


def dice_of_masks(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Dice of two binary masks (B, ...) -> (B,); two empty masks agree perfectly (1)."""
    a = a.flatten(1).float()
    b = b.flatten(1).float()
    inter = (a * b).sum(1)
    total = a.sum(1) + b.sum(1)
    return torch.where(total > 0, 2.0 * inter / total.clamp_min(1e-12), torch.ones_like(total))


def polygon_dice(pred_points: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Dice of the filled predicted contour vs the true mask, (B, N, 2) x (B, 1, H, W) -> (B,).

    The contour is filled with `diskrobust.data.contours.polygon_fill_torch` (pixel centres inside
    by the even-odd rule, as the masks are drawn; centres exactly on the outline follow its
    half-open rule).
    """
    _check_points("polygon_dice pred_points", pred_points)
    _check_map("polygon_dice mask", mask)
    if pred_points.shape[0] != mask.shape[0]:
        raise ValueError(f"polygon_dice: batch sizes differ, points {pred_points.shape[0]} vs mask {mask.shape[0]}")
    filled = polygon_fill_torch(pred_points, mask.shape[-2:])
    return dice_of_masks(filled > 0.5, mask > 0.5)


def seg_dice(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Dice of the segmentation head (logit > 0) vs the true mask, (B, 1, H, W) x (B, 1, H, W) -> (B,)."""
    _check_map("seg_dice logits", logits)
    _check_map("seg_dice mask", mask)
    if logits.shape != mask.shape:
        raise ValueError(f"seg_dice: logits {tuple(logits.shape)} and mask {tuple(mask.shape)} differ")
    return dice_of_masks(logits.detach() > 0, mask > 0.5)


def _stack_samples(items: Sequence, what: str):
    """Re-batch decollated per-sample values: dicts of tensors -> dict of stacked tensors."""
    first = items[0]
    if isinstance(first, Mapping):
        return {k: torch.stack([torch.as_tensor(it[k]) for it in items]) for k in first
                if all(k in it for it in items) and torch.is_tensor(first[k])}
    raise ValueError(f"cannot re-batch decollated '{what}': expected per-sample dicts, got {type(first).__name__}")


def engine_output_transform(output) -> tuple[Mapping[str, torch.Tensor], Mapping[str, torch.Tensor]]:
    """MONAI engine output -> (network outputs dict, targets dict).

    Accepts the batched dict {"pred": {...}, "label": {...}, ...} (decollate=False) and the
    decollated list of per-sample dicts (MONAI's default decollate=True).
    """
    if isinstance(output, Sequence) and not isinstance(output, (str, bytes)) and len(output) > 0 \
            and isinstance(output[0], Mapping):
        pred = _stack_samples([o["pred"] for o in output], "pred")
        label = _stack_samples([o["label"] for o in output], "label")
        return pred, label
    if isinstance(output, Mapping) and "pred" in output and "label" in output:
        return output["pred"], output["label"]
    raise ValueError("metric output_transform: expected a MONAI engine output with 'pred' (network dict) and "
                     f"'label' (targets dict), got {type(output).__name__}"
                     + (f" with keys {sorted(output)}" if isinstance(output, Mapping) else ""))


def _require(metric: str, where: str, mapping: Mapping, key: str, why: str) -> torch.Tensor:
    if not isinstance(mapping, Mapping):
        raise ValueError(f"{metric}: expected the {where} as a dict, got {type(mapping).__name__}")
    if key not in mapping:
        raise ValueError(f"{metric}: the {where} has no '{key}' ({why}); keys present: {sorted(mapping)}")
    return mapping[key]


class _PerSampleMean(Metric):
    """Mean over all samples of a per-sample metric (B,), summed on `device` and reduced across processes."""

    _name = "metric"

    def __init__(self, output_transform: Callable = engine_output_transform, device="cpu"):
        super().__init__(output_transform=output_transform, device=device)

    @reinit__is_reduced
    def reset(self) -> None:
        self._sum = torch.tensor(0.0, dtype=torch.float64, device=self._device)
        self._num = torch.tensor(0, dtype=torch.long, device=self._device)

    def _per_sample(self, outputs: Mapping, targets: Mapping) -> torch.Tensor:
        raise NotImplementedError

    @reinit__is_reduced
    def update(self, output) -> None:
        outputs, targets = output
        values = self._per_sample(outputs, targets).detach()
        self._sum += values.to(device=self._device, dtype=torch.float64).sum()
        self._num += values.numel()

    @sync_all_reduce("_sum", "_num")
    def compute(self) -> float:
        if int(self._num) == 0:
            raise NotComputableError(f"{type(self).__name__} needs at least one sample before compute()")
        return float(self._sum / self._num)


class MeanPointDistance(_PerSampleMean):
    """Mean Euclidean point distance of the point head ("pred"), px (or mm with spacing_mm = (row, col)); lower is better."""

    def __init__(self, spacing_mm=None, output_transform: Callable = engine_output_transform, device="cpu"):
        self.spacing_mm = spacing_mm
        super().__init__(output_transform=output_transform, device=device)

    def _per_sample(self, outputs, targets):
        pred = _require("MeanPointDistance", "network output", outputs, "pred", "the point head is switched off?")
        points = _require("MeanPointDistance", "targets", targets, "points", "true contour points needed")
        return mean_point_distance(pred, points, self.spacing_mm)


class PolygonDice(_PerSampleMean):
    """Dice of the filled point-head contour vs the true mask; higher is better."""

    def _per_sample(self, outputs, targets):
        pred = _require("PolygonDice", "network output", outputs, "pred", "the point head is switched off?")
        mask = _require("PolygonDice", "targets", targets, "mask", "true mask needed")
        return polygon_dice(pred, mask)


class SegDice(_PerSampleMean):
    """Dice of the segmentation head (logit > 0) vs the true mask; higher is better."""

    def _per_sample(self, outputs, targets):
        seg = _require("SegDice", "network output", outputs, "seg", "the segmentation head is switched off?")
        mask = _require("SegDice", "targets", targets, "mask", "true mask needed")
        return seg_dice(seg, mask)


def negated_metric(name: str) -> Callable:
    """score_function for Ignite ModelCheckpoint/EarlyStopping where metric `name` is lower-is-better."""

    def score(engine) -> float:
        if name not in engine.state.metrics:
            raise KeyError(f"metric '{name}' not in engine.state.metrics ({sorted(engine.state.metrics)})")
        return -float(engine.state.metrics[name])

    score.__name__ = f"neg_{name}"
    return score


def neg_mean_point_distance(engine, name: str = "mean_point_distance") -> float:
    """score_function: -engine.state.metrics[name], so the lowest point distance scores best."""
    return negated_metric(name)(engine)


def lower_is_better(current: float, prev: float) -> bool:
    """`metric_cmp_fn` for MONAI engines whose key metric is an error (e.g. the point distance)."""
    return current < prev

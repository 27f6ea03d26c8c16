"""Measure an OOD detector on clean OOD starts, under the OOD attack, and under an adaptive OOD attack.

For each kind of OOD start image (uniform noise, box noise, natural images, ...):

    clean      the start images as they are
    w=0        the non-adaptive OOD attack (the paper's: only the network's output is driven to the target)
    w=<w>      the adaptive OOD attack: loss + w * detector score, so the attack also hides from the detector

Each row holds the AUROC (IND test patches vs those images, OOD positive), the detection rate at the
threshold that accepts `tpr` of IND patches, the mean point distance (px) of the network's output to the
target shape (how well the image still fools the network), and the attack success rate: the fraction
of images that fool the network (distance <= fooled_px) AND pass the detector.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from scipy.stats import rankdata
from torch import nn

from diskrobust.attacks import OODAttack, attack_context, mean_point_distance, targets_from_model, unwrap_model

from .ood_detector import threshold_at_tpr

__all__ = ["auroc", "detection_rate", "evaluate_detector", "attack_row_key"]


def auroc(ind_scores, ood_scores) -> float:
    """Area under the ROC curve, OOD as the positive class (higher score = more OOD), ties count half.

    Rank-based (Mann-Whitney U / (n_ind * n_ood)); scores are (N,) tensors or arrays.
    """
    ind = np.asarray(torch.as_tensor(ind_scores).detach().cpu().double().flatten())
    ood = np.asarray(torch.as_tensor(ood_scores).detach().cpu().double().flatten())
    if ind.size == 0 or ood.size == 0:
        raise ValueError(f"auroc needs scores of both classes, got {ind.size} IND and {ood.size} OOD")
    if not (np.isfinite(ind).all() and np.isfinite(ood).all()):
        raise ValueError("auroc: scores contain NaN or Inf")
    ranks = rankdata(np.concatenate([ind, ood]))  # average ranks for ties
    u = ranks[ind.size:].sum() - ood.size * (ood.size + 1) / 2.0
    return float(u / (ind.size * ood.size))


def detection_rate(scores, threshold: float) -> float:
    """Fraction of (N,) scores flagged OOD (strictly above the threshold)."""
    scores = torch.as_tensor(scores).detach().flatten()
    return float((scores > threshold).double().mean())


def attack_row_key(weight: float) -> str:
    """Row name of an attack with detector weight `weight` ('w=0' is the non-adaptive attack)."""
    return f"w={weight:g}"


def _scores(detector: Callable, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([detector(images[i:i + batch_size]).detach().float().cpu()
                          for i in range(0, images.shape[0], batch_size)])


def _predict_points(model: nn.Module, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    with attack_context(model), torch.no_grad():
        return torch.cat([model(images[i:i + batch_size])["pred"] for i in range(0, images.shape[0], batch_size)])


def _row(ind_scores, scores, threshold, distance, fooled_px) -> dict:
    detected = scores > threshold
    fooled = distance <= fooled_px
    return {"auroc": auroc(ind_scores, scores), "detection_rate": float(detected.double().mean()),
            "mean_score": float(scores.mean()), "point_distance_px": float(distance.mean()),
            "fooled_rate": float(fooled.double().mean()),
            "success_rate": float((fooled & ~detected).double().mean())}


def evaluate_detector(model: nn.Module, detector: Callable, ind_images: torch.Tensor,
                      ood_starts: Mapping[str, torch.Tensor], attack_kwargs: Mapping | None = None,
                      adaptive_weights: Sequence[float] = (0.0, 1.0), targets: Mapping[str, torch.Tensor] | None = None,
                      tpr: float = 0.95, fooled_px: float = 1.0, seed: int = 0, batch_size: int = 64) -> dict:
    """Detector quality on clean and attacked OOD images.

    Args:
        model: the DiskShapeNet (needs the point head); never modified.
        detector: callable(images (B, 1, S, S), outputs=None) -> (B,) OOD score, differentiable w.r.t. images.
        ind_images: (M, 1, S, S) in-distribution test patches: their scores set the threshold and the
            negatives of the AUROC; they also give the default attack targets (the network's own output).
        ood_starts: {kind: (n_kind, 1, S, S)} start images in [0, 1].
        attack_kwargs: OODAttack arguments (eps, steps, lr, ...); the detector arguments are set here.
        adaptive_weights: detector weights to attack with; 0 is the non-adaptive attack.
        targets: {"points": (T, 176, 2), "mask": (T, 1, S, S)} attack targets, cycled over each kind's
            starts (default: targets_from_model(model, ind_images)).
        tpr: fraction of IND patches accepted by the threshold.
        fooled_px: an attacked image fools the network when its mean point distance to the target is <= this.
        seed: the attacks' seed (the same for every weight, so the runs differ only in the loss).

    Returns {"threshold", "tpr", "fooled_px", "ind_scores" (M,) tensor, "weights",
    "kinds": {kind: {"clean" | "w=<w>": row}}, "strongest_adaptive": {kind: row key}}, where a row is
    {"auroc", "detection_rate", "mean_score", "point_distance_px", "fooled_rate", "success_rate"}.
    The strongest adaptive attack of a kind is the w > 0 row with the highest success rate (ties: lowest AUROC).
    """
    model = unwrap_model(model)
    if not ood_starts:
        raise ValueError("evaluate_detector: ood_starts is empty")
    device = next(model.parameters()).device
    ind_images = ind_images.to(device)
    ind_scores = _scores(detector, ind_images, batch_size)
    threshold = threshold_at_tpr(ind_scores, tpr)
    if targets is None:
        targets = targets_from_model(model, ind_images)
    kinds = list(ood_starts)
    starts = torch.cat([ood_starts[k].to(device=device, dtype=ind_images.dtype) for k in kinds])
    sizes = [ood_starts[k].shape[0] for k in kinds]
    n_targets = next(iter(targets.values())).shape[0]
    # each kind's i-th start gets target i mod T, so every kind aims at the same shapes
    index = torch.cat([torch.arange(n) % n_targets for n in sizes]).to(device)
    batch_targets = {k: v.to(device)[index] for k, v in targets.items()}

    results = {kind: {} for kind in kinds}

    def record(name: str, images: torch.Tensor) -> None:
        scores = _scores(detector, images, batch_size)
        distance = mean_point_distance(_predict_points(model, images, batch_size),
                                       batch_targets["points"]).cpu()
        for kind, s, d in zip(kinds, scores.split(sizes), distance.split(sizes)):
            results[kind][name] = _row(ind_scores, s, threshold, d, fooled_px)

    record("clean", starts)
    kwargs = dict(attack_kwargs or {})
    kwargs.setdefault("seed", seed)
    for w in adaptive_weights:
        attack = OODAttack(model, detector=detector if w > 0 else None, detector_weight=float(w), **kwargs)
        record(attack_row_key(w), attack(starts, batch_targets).images)

    strongest = {}
    adaptive = [attack_row_key(w) for w in adaptive_weights if w > 0]
    for kind in kinds:
        if adaptive:
            strongest[kind] = max(adaptive, key=lambda k: (results[kind][k]["success_rate"],
                                                           -results[kind][k]["auroc"]))
    return {"threshold": threshold, "tpr": float(tpr), "fooled_px": float(fooled_px), "ind_scores": ind_scores,
            "weights": [float(w) for w in adaptive_weights], "kinds": results, "strongest_adaptive": strongest}

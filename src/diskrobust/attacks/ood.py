"""Out-of-distribution (OOD) attack: make an unrelated image produce a chosen disk shape.

Given start images x_out (noise, natural images) and a target (the network's own output on an
in-distribution image, or a given shape), find delta with ||delta||_2 <= eps such that the output on
x_out + delta matches the target: minimise MSE(points) + (1 - soft Dice(seg, mask)) by Adamax.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
from torch import nn
from tqdm.auto import tqdm

from diskrobust.losses import soft_dice_loss_per_sample

from ._base import (Attack, AttackResult, BestIterate, attack_context, check_chunk_size, check_images, chunks, heads_of,
                    make_generator, run_model, unwrap_model)
from .objectives import mean_point_distance, point_mse_per_sample
from .pgd import _targets_on, project_, random_start

Detector = Callable[[torch.Tensor, Mapping[str, torch.Tensor]], torch.Tensor]
OPTIMIZERS = {"adamax": torch.optim.Adamax, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}


def targets_from_model(model: nn.Module, ind_images: torch.Tensor) -> dict[str, torch.Tensor]:
    """The network's own output on in-distribution images as an OOD target.

    ind_images (B, 1, H, W) -> {"points": (B, 176, 2), "mask": (B, 1, H, W) float, seg logit > 0}
    (only the heads the network has). Evaluated in eval mode; the network is left as it was.
    """
    model = unwrap_model(model)
    x = check_images(ind_images, "targets_from_model")
    with attack_context(model), torch.no_grad():
        out = model(x)
    targets = {}
    if "pred" in out:
        targets["points"] = out["pred"].detach()
    if "seg" in out:
        targets["mask"] = (out["seg"].detach() > 0).to(x.dtype)
    if not targets:
        raise ValueError(f"network output has neither 'pred' nor 'seg' (keys {sorted(out)})")
    return targets


class OODAttack(Attack):
    """Targeted L2 attack from OOD start images towards a disk shape (the paper's OOD attack).

    Args:
        model: the network (wrappers unwrapped); never modified.
        eps: L2 budget per image (paper: 40 for noise/CT starts with 4000 steps, 20 with 2000 for X-ray).
        steps: optimiser steps.
        lr: optimiser learning rate (paper: Adamax, 0.01).
        optimizer: "adamax" | "adam" | "sgd", over delta only.
        random_start: start from a uniform draw in the L2 ball of radius `start_radius` (default eps).
        detector: optional callable(images (B, 1, H, W), outputs) -> (B,) OOD score, added to the loss
            with `detector_weight` (adaptive attack: also drive the detector's score down). An nn.Module
            detector is guarded like the network (eval mode, untouched). A detector that reads only some
            of `outputs` may say so with a `heads` attribute (e.g. `()`), else the full forward runs.
        seed: seeds the random start (None: global RNG).
        progress: show a tqdm bar.
        chunk_size: attack the batch in chunks of this many samples (None: all at once), as in PGD.

    `forward(start_images (B, 1, H, W), targets {"points": (B, 176, 2), "mask": (B, 1, H, W) optional})`
    -> AttackResult: images, losses (B,) = the minimised loss at the returned images (detector term
    included), deltas, point_distance (B,) mean point distance to the target points (px).
    The returned images are the best iterate per sample (lowest loss).
    """

    def __init__(self, model: nn.Module, eps: float = 40.0, steps: int = 4000, lr: float = 0.01,
                 optimizer: str = "adamax", random_start: bool = True, start_radius: float | None = None,
                 detector: Detector | None = None, detector_weight: float = 1.0,
                 clip: tuple[float, float] = (0.0, 1.0), seed: int | None = None, progress: bool = True,
                 chunk_size: int | None = None):
        super().__init__(model, seed)
        self.chunk_size = check_chunk_size(chunk_size)
        if not (math.isfinite(eps) and eps >= 0):
            raise ValueError(f"eps must be a finite number >= 0, got {eps}")
        if int(steps) != steps or steps < 0:
            raise ValueError(f"steps must be an integer >= 0, got {steps}")
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {sorted(OPTIMIZERS)}, got {optimizer!r}")
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        self.eps = float(eps)
        self.steps = int(steps)
        self.lr = float(lr)
        self.optimizer = optimizer
        self.random_start = bool(random_start)
        self.start_radius = self.eps if start_radius is None else min(float(start_radius), self.eps)
        self.detector = detector
        self.detector_weight = float(detector_weight)
        self.clip = (float(clip[0]), float(clip[1]))
        self.progress = bool(progress)

    def loss(self, images: torch.Tensor, outputs: Mapping[str, torch.Tensor],
             targets: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Per-sample loss (B,): MSE(points) + (1 - soft Dice) + detector_weight * detector score."""
        total = torch.zeros(images.shape[0], device=images.device, dtype=images.dtype)
        used = False
        if "points" in targets and "pred" in outputs:
            total = total + point_mse_per_sample(outputs["pred"], targets["points"])
            used = True
        if "mask" in targets and "seg" in outputs:
            total = total + soft_dice_loss_per_sample(outputs["seg"], targets["mask"])
            used = True
        if not used:
            raise ValueError(f"OOD attack: targets {sorted(targets)} match no network output {sorted(outputs)}")
        if self.detector is not None:
            total = total + self.detector_weight * self.detector(images, outputs)
        return total

    def guarded_modules(self) -> tuple[nn.Module | None, ...]:
        return (self.model, self.detector if isinstance(self.detector, nn.Module) else None)

    def heads(self, targets: Mapping[str, torch.Tensor]) -> tuple[str, ...] | None:
        """The network outputs the loss reads; None (all) when a detector does not declare its `heads`."""
        if self.detector is not None and heads_of(self.detector) is None:
            return None
        wanted = {"pred"} if "points" in targets else set()
        wanted |= {"seg"} if "mask" in targets else set()
        wanted |= set(heads_of(self.detector) or ())
        return tuple(h for h in ("pred", "seg") if h in wanted)

    def forward(self, start_images: torch.Tensor, targets: Mapping[str, torch.Tensor]) -> AttackResult:
        x = check_images(start_images, "OODAttack")
        targets = _targets_on(targets, x)
        gen = make_generator(x.device, self.seed)
        if self.random_start:
            delta = random_start(x, self.start_radius, "l2", gen)
        else:
            delta = torch.zeros_like(x)
        project_(delta, x, self.eps, "l2", self.clip)
        best = BestIterate(x, maximize=False, start=delta)
        heads = self.heads(targets)
        parts = chunks(x.shape[0], self.chunk_size)
        bar = tqdm(total=(self.steps + 1) * len(parts), desc="OOD attack", disable=not self.progress, leave=False)
        for rows in parts:
            self._run(x[rows], delta[rows].clone(), {k: v[rows] for k, v in targets.items()}, heads, best, rows, bar)
        bar.close()
        adv = (x + best.delta).clamp(*self.clip)
        distance = None
        if "points" in targets:
            with torch.no_grad():
                out = run_model(self.model, adv, ("pred",))
            if "pred" in out:
                distance = mean_point_distance(out["pred"], targets["points"])
        return AttackResult(images=adv, losses=best.loss, deltas=adv - x, point_distance=distance)

    def _run(self, x: torch.Tensor, delta: torch.Tensor, targets: Mapping[str, torch.Tensor],
             heads: tuple[str, ...] | None, best: BestIterate, rows: slice, bar) -> None:
        """The samples `rows`: `steps` optimiser steps from `delta`, every iterate scored into `best`."""
        optimizer = OPTIMIZERS[self.optimizer]([delta], lr=self.lr)
        for k in range(self.steps + 1):
            last = k == self.steps
            delta.requires_grad_(not last)
            adv = (x + delta).clamp(*self.clip)
            with torch.set_grad_enabled(not last):
                loss = self.loss(adv, run_model(self.model, adv, heads), targets)
            best.update(loss, delta, rows)
            bar.update(1)
            if last:
                break
            (grad,) = torch.autograd.grad(loss.sum(), delta)
            delta.requires_grad_(False)
            with torch.no_grad():
                delta.grad = grad
                optimizer.step()
                delta.grad = None
                project_(delta, x, self.eps, "l2", self.clip)

"""Auto-PGD (APGD, Croce & Hein 2020) for multi-output regression: no step size to choose.

APGD is PGD with momentum and a step size that adapts per sample: it starts at 2 eps, and at
checkpoints (after 22 % of the steps, then at intervals shrinking by 3 % of the steps to at least 6 %)
it halves the step of every sample whose loss rose in at most `rho` of the steps since the previous
checkpoint, or whose step was not halved there and whose best loss has not improved since; a sample
whose step is halved restarts from its best point. Any objective of `build_objective` (point SSE/MAE,
1 - soft Dice, both, or a callable), untargeted (maximise) or targeted (minimise), L-inf or L2.

Update (x_k the iterate, P the projection onto ball ∩ box, alpha = 0.75, alpha = 1 at the first step):

    z_{k+1} = P(x_k + eta_k * direction(grad f(x_k)))           direction: sign (L-inf), grad / ||grad||_2 (L2)
    x_{k+1} = P(x_k + alpha (z_{k+1} - x_k) + (1 - alpha) (x_k - x_{k-1}))
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from ._base import (Attack, AttackResult, BestIterate, check_chunk_size, check_images, heads_of, make_generator,
                    run_model, run_restarts)
from .objectives import Objective, build_objective
from .pgd import NORMS, _per_sample_norm, _targets_on, ascent_direction, project_

# APGD's published constants (Croce & Hein 2020, section 3): momentum and the checkpoint schedule.
MOMENTUM = 0.75
FIRST_CHECKPOINT = 0.22
CHECKPOINT_DECREASE = 0.03
MIN_CHECKPOINT_INTERVAL = 0.06


def checkpoints(steps: int) -> list[int]:
    """The iterations after which APGD checks its step size: w_1 = ceil(0.22 N), intervals shrinking by
    0.03 N down to 0.06 N (the schedule of the reference implementation, in whole iterations)."""
    interval = max(int(FIRST_CHECKPOINT * steps), 1)
    decrease = max(int(CHECKPOINT_DECREASE * steps), 1)
    minimum = max(int(MIN_CHECKPOINT_INTERVAL * steps), 1)
    out, at = [], interval
    while at <= steps:
        out.append(at)
        interval = max(interval - decrease, minimum)
        at += interval
    return out


def apgd_start(images: torch.Tensor, eps: float, norm: str, generator: torch.Generator | None) -> torch.Tensor:
    """APGD's random start: a point on the sphere of the budget (L-inf: U[-1, 1] scaled to sup-norm eps;
    L2: a Gaussian direction of norm eps), before the box projection."""
    shape, dev, dt = images.shape, images.device, images.dtype
    if norm == "linf":
        t = torch.rand(shape, generator=generator, device=dev, dtype=dt).mul_(2.0).sub_(1.0)
        scale = t.flatten(1).abs().amax(1).clamp_min(1e-12).view(-1, *([1] * (images.ndim - 1)))
        return t.mul_(eps / scale)
    t = torch.randn(shape, generator=generator, device=dev, dtype=dt)
    return t.mul_(eps / _per_sample_norm(t).clamp_min(1e-12))


class APGD(Attack):
    """APGD on the network's output dict, the best iterate kept per sample over steps and restarts.

    Args:
        model: the network (DDP/DataParallel unwrapped); never modified.
        eps: budget on [0, 1] intensities (L-inf) or per-image L2 norm.
        steps: iterations per restart (N; each one forward+backward; one more forward scores the start).
        norm: "linf" | "l2".
        objective: "points" | "seg" | "both" | callable(outputs, targets) -> (B,).
        point_loss: "sse" | "mae", the point term of "points"/"both".
        targeted: minimise the objective towards `targets` instead of maximising it.
        restarts: independent random starts; the per-sample best wins.
        rho: the fraction of loss increases between checkpoints below which the step is halved (0.75).
        random_start: start on the budget's sphere (else at the clean image).
        clip: the valid intensity range.
        seed / generator: as in PGD.
        chunk_size: attack the batch in chunks of this many samples (None: all at once), as in PGD.
        progress: a tqdm bar over the iterations.

    `attack(images (B, 1, H, W), targets)` -> AttackResult: images, losses (B,) the objective at images,
    deltas. `last_step_sizes` (B,) holds each sample's final step size of the last restart (diagnostics).
    """

    def __init__(self, model: nn.Module, eps: float = 0.07, steps: int = 100, norm: str = "linf",
                 objective: str | Objective = "points", point_loss: str = "sse", targeted: bool = False,
                 restarts: int = 1, rho: float = 0.75, random_start: bool = True,
                 clip: tuple[float, float] = (0.0, 1.0), seed: int | None = None,
                 generator: torch.Generator | None = None, chunk_size: int | None = None, progress: bool = False):
        super().__init__(model, seed)
        if not (math.isfinite(eps) and eps >= 0):
            raise ValueError(f"eps must be a finite number >= 0, got {eps}")
        if int(steps) != steps or steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {steps}")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        if int(restarts) != restarts or restarts < 1:
            raise ValueError(f"restarts must be an integer >= 1, got {restarts}")
        if not 0 < rho < 1:
            raise ValueError(f"rho must be in (0, 1), got {rho}")
        if len(clip) != 2 or not clip[0] < clip[1]:
            raise ValueError(f"clip must be (low, high) with low < high, got {clip}")
        self.eps = float(eps)
        self.steps = int(steps)
        self.norm = norm
        self.objective = build_objective(objective, point_loss)
        self.heads = heads_of(self.objective)
        self.targeted = bool(targeted)
        self.restarts = int(restarts)
        self.rho = float(rho)
        self.random_start = bool(random_start)
        self.clip = (float(clip[0]), float(clip[1]))
        self.generator = generator
        self.chunk_size = check_chunk_size(chunk_size)
        self.progress = bool(progress)
        self.last_step_sizes: torch.Tensor | None = None

    def _loss_grad(self, x, delta, targets, sign, need_grad: bool = True):
        """(loss (B,), gradient of sign * loss w.r.t. delta or None) at x + delta (clamped: the image returned)."""
        delta = delta.detach().requires_grad_(need_grad)
        with torch.set_grad_enabled(need_grad):
            loss = self.objective(run_model(self.model, (x + delta).clamp(*self.clip), self.heads), targets)
        if not need_grad:
            return loss.detach(), None
        (grad,) = torch.autograd.grad(loss.sum() * sign, delta)
        return loss.detach(), grad

    def forward(self, images: torch.Tensor, targets: Mapping[str, torch.Tensor]) -> AttackResult:
        x = check_images(images, "APGD")
        targets = _targets_on(targets, x)
        gen = self.generator if self.generator is not None else make_generator(x.device, self.seed)
        self.last_step_sizes = torch.empty(x.shape[0], device=x.device, dtype=x.dtype)

        def start() -> torch.Tensor:
            delta = apgd_start(x, self.eps, self.norm, gen) if self.random_start else torch.zeros_like(x)
            project_(delta, x, self.eps, self.norm, self.clip)
            return delta

        return run_restarts(x, targets, restarts=self.restarts, steps=self.steps, chunk_size=self.chunk_size,
                            maximize=not self.targeted, clip=self.clip, name="APGD", progress=self.progress,
                            start=start, run=self._run)

    def _run(self, x, delta, targets, best: BestIterate, rows: slice, bar) -> None:
        sign = -1.0 if self.targeted else 1.0
        n = x.shape[0]
        view = (-1,) + (1,) * (x.ndim - 1)
        eta = torch.full((n,), 2.0 * self.eps, device=x.device, dtype=x.dtype)
        # this restart's own best (the restart point after a halving) next to the global tracker
        loss, grad = self._loss_grad(x, delta, targets, sign)
        best.update(loss, delta, rows)
        run_best_score, run_best_delta, run_best_grad = sign * loss, delta.clone(), grad.clone()
        score_at_check = run_best_score.clone()
        halved_at_check = torch.ones(n, dtype=torch.bool, device=x.device)  # "no halving before w_0" is skipped
        increases = torch.zeros(n, device=x.device, dtype=x.dtype)
        previous_score = run_best_score.clone()
        previous_delta = delta.clone()
        marks = set(checkpoints(self.steps))
        last_mark = 0
        for k in range(1, self.steps + 1):
            with torch.no_grad():
                alpha = 1.0 if k == 1 else MOMENTUM
                z = delta + eta.view(view) * ascent_direction(grad, self.norm)
                project_(z, x, self.eps, self.norm, self.clip)
                step = delta + alpha * (z - delta) + (1.0 - alpha) * (delta - previous_delta)
                project_(step, x, self.eps, self.norm, self.clip)
                previous_delta, delta = delta, step
            # the last iterate is only scored: its gradient would never be used
            loss, grad = self._loss_grad(x, delta, targets, sign, need_grad=k < self.steps)
            best.update(loss, delta, rows)
            if k == self.steps:
                bar.update(1)
                break
            score = sign * loss
            increases += (score > previous_score).to(x.dtype)
            previous_score = score
            better = score > run_best_score
            run_best_score = torch.where(better, score, run_best_score)
            run_best_delta = torch.where(better.view(view), delta, run_best_delta)
            run_best_grad = torch.where(better.view(view), grad, run_best_grad)
            bar.update(1)
            if k in marks:
                interval = k - last_mark
                oscillating = increases <= self.rho * interval
                stalled = ~halved_at_check & (score_at_check >= run_best_score)
                halve = oscillating | stalled
                eta = torch.where(halve, eta / 2.0, eta)
                # restart the halved samples from their best point, without momentum
                delta = torch.where(halve.view(view), run_best_delta, delta)
                grad = torch.where(halve.view(view), run_best_grad, grad)
                previous_delta = torch.where(halve.view(view), delta, previous_delta)
                halved_at_check = halve
                score_at_check = run_best_score.clone()
                increases.zero_()
                last_mark = k
        self.last_step_sizes[rows] = eta

"""Projected gradient descent (PGD) for the disk shape network's multi-output regression.

Untargeted: maximise the objective (point SSE, 1 - soft Dice, or both) against the true targets.
Targeted: minimise it against a given shape / mask. L-inf or L2 budget on [0, 1] intensities, one
for the whole batch or one per sample (a (B,) tensor: the adaptive-margin training arm).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from diskrobust.compute import autocast, check_precision, float_outputs

from ._base import (Attack, AttackResult, BestIterate, check_chunk_size, check_images, heads_of, make_generator,
                    run_model, run_restarts, score)
from .objectives import Objective, build_objective

NORMS = ("linf", "l2")
UPDATES = ("sign", "adamax")


def _per_sample_norm(t: torch.Tensor) -> torch.Tensor:
    """L2 norm of each sample, (B, ...) -> (B, 1, ..., 1) for broadcasting."""
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.ndim - 1)))


Budget = float | torch.Tensor  # one value, or per sample shaped (B, 1, ..., 1) to broadcast over a sample


def per_sample_budget(value, images: torch.Tensor, name: str) -> Budget:
    """`value` as used on `images` (B, ...): a float stays a float; a (B,) tensor becomes (B, 1, ..., 1)
    on the images' device and dtype (a batch-size mismatch is refused naming the setting)."""
    if not torch.is_tensor(value):
        return value
    if value.shape != (images.shape[0],):
        raise ValueError(f"per-sample {name} must have shape ({images.shape[0]},) for a batch of "
                         f"{images.shape[0]}, got {tuple(value.shape)}")
    return value.to(device=images.device, dtype=images.dtype).view(-1, *([1] * (images.ndim - 1)))


def _check_budget(value, name: str):
    """A finite number >= 0, or a 1-D tensor of them (detached float64 copy)."""
    if torch.is_tensor(value):
        if value.ndim != 1 or value.numel() == 0 or not bool(torch.isfinite(value).all()) or bool((value < 0).any()):
            raise ValueError(f"{name} as a tensor must be 1-D (one value per sample), finite and >= 0, "
                             f"got shape {tuple(value.shape)}")
        return value.detach().to(torch.float64).clone()
    value = float(value)
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return value


def project_(delta: torch.Tensor, images: torch.Tensor, eps: Budget, norm: str, clip: tuple[float, float]) -> torch.Tensor:
    """In place: delta onto the eps-ball of `norm`, then so that images + delta lies in `clip`.

    `eps` is a float or a per-sample (B, 1, ..., 1) tensor (`per_sample_budget`).

    The box step only shrinks each |delta_i| (images are inside the box), so the result stays in the
    ball: for L-inf this is the exact Euclidean projection onto ball ∩ box, for L2 a feasible point.
    """
    if norm == "linf":
        if torch.is_tensor(eps):
            torch.maximum(torch.minimum(delta, eps, out=delta), -eps, out=delta)
        else:
            delta.clamp_(-eps, eps)
    else:
        delta.mul_((eps / _per_sample_norm(delta).clamp_min(1e-12)).clamp(max=1.0))
    lo, hi = clip
    delta.copy_((images + delta).clamp_(lo, hi).sub_(images))
    return delta


def random_start(images: torch.Tensor, eps: Budget, norm: str, generator: torch.Generator | None) -> torch.Tensor:
    """A uniform draw from the eps-ball (L-inf: per pixel U[-eps, eps]; L2: uniform in the ball), (B, C, H, W).

    `eps` is a float or a per-sample (B, 1, ..., 1) tensor; the draws are the same either way, only scaled."""
    if norm == "linf":
        u = torch.rand(images.shape, generator=generator, device=images.device, dtype=images.dtype)
        return u.mul_(2.0).sub_(1.0).mul_(eps)
    direction = torch.randn(images.shape, generator=generator, device=images.device, dtype=images.dtype)
    direction.div_(_per_sample_norm(direction).clamp_min(1e-12))
    dim = images[0].numel()
    # radius ~ eps * U^(1/d) makes the draw uniform in the volume of the d-ball
    u = torch.rand((images.shape[0],), generator=generator, device=images.device, dtype=images.dtype)
    radius = (eps.reshape(-1) if torch.is_tensor(eps) else eps) * u.pow(1.0 / dim)
    return direction.mul_(radius.view(-1, *([1] * (images.ndim - 1))))


def ascent_direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """Steepest ascent direction of unit `norm`: sign(grad) for L-inf, grad / ||grad||_2 per sample for L2."""
    if norm == "linf":
        return grad.sign()
    return grad / _per_sample_norm(grad).clamp_min(1e-12)


class PGD(Attack):
    """PGD on the network's output dict, with the worst case kept per sample over steps and restarts.

    Args:
        model: the network (DDP/DataParallel wrappers are unwrapped); never modified.
        eps: budget on [0, 1] intensities (L-inf) or per-image L2 norm; a (B,) tensor gives each sample of
            the batch its own budget (every call must then pass a batch of B).
        steps: gradient steps per restart (K steps cost K forward+backward passes and one forward).
        step_size: step length; default eps / 5 (the paper's evaluation setting; training uses 0.01); a (B,)
            tensor gives each sample its own step ("sign" update only).
        norm: "linf" | "l2".
        random_start: start from a uniform draw in the ball (else from the clean image).
        update: "sign": delta += step * direction, direction = sign(grad) (L-inf) or grad / ||grad||_2 (L2);
            "adamax": the paper's variant, torch.optim.Adamax(lr=step_size) over delta fed that direction.
            Either way delta is projected after every step.
        objective: "points" | "seg" | "both" | callable(outputs, targets) -> (B,).
        point_loss: "sse" (paper) | "mae", the point term of "points"/"both".
        targeted: minimise the objective towards `targets` instead of maximising it away from them.
        restarts: independent random starts; the best per sample is returned.
        clip: the valid intensity range of the images.
        keep_best: return the best iterate seen per sample (else the last iterate of the best restart).
        seed: seeds a fresh generator on the images' device for each call's random starts (None: global RNG).
        generator: draw the random starts from this generator instead (it advances across calls); overrides seed.
        progress: show a tqdm bar over the steps.
        chunk_size: attack the batch in consecutive chunks of this many samples (None: all at once).
            Every per-sample operation is independent of the others (GroupNorm, no batch statistics;
            starts drawn for the whole batch first), so this changes speed only - smaller working sets
            stay in cache (benchmarks/attack_chunking.py measures the best size for a machine).
        precision: "fp32" | "bf16": the gradient passes run under torch.autocast (bfloat16; faster only
            where the hardware has bf16 arithmetic). The last iterate's scoring pass and the returned
            `losses` are fp32 (the returned images are rescored); the keep-best choice among the earlier
            iterates uses their bf16 losses. benchmarks/precision_effect.py compares its strength with fp32.

    Only the network outputs the objective reads are computed (`objective.heads`, through the
    network's `forward_heads` when it has one): "points" skips DiskShapeNet's U-Net decoder.

    `forward(images (B, 1, H, W), targets {"points": (B, 176, 2), "mask": (B, 1, H, W)})` -> AttackResult
    with images, losses (B,) = objective at the returned images, deltas.
    """

    def __init__(self, model: nn.Module, eps: float = 0.07, steps: int = 20, step_size: float | None = None,
                 norm: str = "linf", random_start: bool = True, update: str = "sign",
                 objective: str | Objective = "points", point_loss: str = "sse", targeted: bool = False,
                 restarts: int = 1, clip: tuple[float, float] = (0.0, 1.0), keep_best: bool = True,
                 seed: int | None = None, generator: torch.Generator | None = None, progress: bool = False,
                 chunk_size: int | None = None, precision: str = "fp32"):
        super().__init__(model, seed)
        self.chunk_size = check_chunk_size(chunk_size)
        self.precision = check_precision(precision)
        self.generator = generator
        if int(steps) != steps or steps < 0:
            raise ValueError(f"steps must be an integer >= 0, got {steps}")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        if update not in UPDATES:
            raise ValueError(f"update must be one of {UPDATES}, got {update!r}")
        if int(restarts) != restarts or restarts < 1:
            raise ValueError(f"restarts must be an integer >= 1, got {restarts}")
        if len(clip) != 2 or not clip[0] < clip[1]:
            raise ValueError(f"clip must be (low, high) with low < high, got {clip}")
        self.eps = _check_budget(eps, "eps")
        self.steps = int(steps)
        self.step_size = self.eps / 5.0 if step_size is None else _check_budget(step_size, "step_size")
        if torch.is_tensor(self.step_size) and update != "sign":
            raise ValueError("a per-sample step_size needs update='sign' (Adamax takes one learning rate)")
        self.norm = norm
        self.random_start = bool(random_start)
        self.update = update
        self.objective = build_objective(objective, point_loss)
        self.heads = heads_of(self.objective)
        self.targeted = bool(targeted)
        self.restarts = int(restarts)
        self.clip = (float(clip[0]), float(clip[1]))
        self.keep_best = bool(keep_best)
        self.progress = bool(progress)

    def _loss(self, images: torch.Tensor, delta: torch.Tensor, targets: Mapping[str, torch.Tensor],
              precision: str = "fp32") -> torch.Tensor:
        # The clamp makes the evaluated image exactly the returned one (x + delta may be off by an ulp).
        with autocast(images.device, precision):
            outputs = run_model(self.model, (images + delta).clamp(*self.clip), self.heads)
        return self.objective(float_outputs(outputs), targets)

    def forward(self, images: torch.Tensor, targets: Mapping[str, torch.Tensor]) -> AttackResult:
        x = check_images(images, "PGD")
        targets = _targets_on(targets, x)
        gen = self.generator if self.generator is not None else make_generator(x.device, self.seed)
        eps = per_sample_budget(self.eps, x, "eps")
        step = per_sample_budget(self.step_size, x, "step_size")

        def start() -> torch.Tensor:
            delta = random_start(x, eps, self.norm, gen) if self.random_start else torch.zeros_like(x)
            project_(delta, x, eps, self.norm, self.clip)
            return delta

        def run(xs, delta, ts, best, rows, bar):
            self._run(xs, delta, ts, best, rows, bar, _rows_of(eps, rows), _rows_of(step, rows))

        result = run_restarts(x, targets, restarts=self.restarts, steps=self.steps, chunk_size=self.chunk_size,
                              maximize=not self.targeted, clip=self.clip, name="PGD", progress=self.progress,
                              start=start, run=run)
        if self.precision != "fp32":  # the reported losses are always the fp32 network's
            result.losses = score(self.model, self.objective, self.heads, result.images, targets, self.chunk_size)
        return result

    def _run(self, x: torch.Tensor, delta: torch.Tensor, targets: Mapping[str, torch.Tensor], best: BestIterate,
             rows: slice, bar, eps: Budget, step: Budget) -> None:
        """One restart on the samples `rows`: `steps` updates from `delta`, every iterate scored into `best`."""
        sign = -1.0 if self.targeted else 1.0
        optimizer = torch.optim.Adamax([delta], lr=step) if self.update == "adamax" else None
        for k in range(self.steps + 1):
            last = k == self.steps
            if last:
                with torch.no_grad():
                    loss = self._loss(x, delta, targets)
            else:
                delta.requires_grad_(True)
                loss = self._loss(x, delta, targets, self.precision)
                (grad,) = torch.autograd.grad(loss.sum() * sign, delta)
                delta.requires_grad_(False)
            if self.keep_best or last:
                best.update(loss, delta, rows)
            if last:
                break
            with torch.no_grad():
                direction = ascent_direction(grad, self.norm)
                if optimizer is None:
                    if torch.is_tensor(step):
                        delta.addcmul_(direction, step)
                    else:
                        delta.add_(direction, alpha=step)
                else:
                    delta.grad = direction.neg_()  # Adamax minimises
                    optimizer.step()
                    delta.grad = None
                project_(delta, x, eps, self.norm, self.clip)
            bar.update(1)


def _rows_of(budget: Budget, rows: slice) -> Budget:
    return budget[rows] if torch.is_tensor(budget) else budget


def _targets_on(targets: Mapping[str, torch.Tensor], images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Detached copies of the tensor targets on the images' device, batch size checked."""
    if not isinstance(targets, Mapping):
        raise TypeError(f"targets must be a dict like {{'points': (B, 176, 2), 'mask': (B, 1, H, W)}}, "
                        f"got {type(targets).__name__}")
    out = {}
    for key, value in targets.items():
        if not torch.is_tensor(value):
            continue
        if value.shape[0] != images.shape[0]:
            raise ValueError(f"targets[{key!r}] has batch size {value.shape[0]}, images have {images.shape[0]}")
        value = value.as_tensor() if hasattr(value, "as_tensor") else value
        out[key] = value.detach().to(device=images.device)
    return out

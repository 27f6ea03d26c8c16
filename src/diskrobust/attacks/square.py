"""Square attack (Andriushchenko et al. 2020) adapted to regression: a query-based random search.

No gradient is used, so a network that masks its gradients (quantised input, shattered or obfuscated
gradients) cannot look robust to it. L-inf: starting from vertical stripes of +-eps (or from a given
perturbation, e.g. the worst case of a gradient attack), each query redraws one random square window
of every sample to +-eps (a vertex of the budget, one sign per channel) and keeps the change when the
objective grows (untargeted) or falls (targeted). L2 (a simplified variant of the paper's): each query
replaces one random window by a centred bump of random sign that holds the window's energy plus the
budget's slack, so the perturbation keeps its norm at the budget. The window's area starts at
`p_init` of the image and halves on the paper's schedule (at 10, 50, 200, 500, 1000, 2000, 4000, 6000 and
8000 of 10,000 queries, scaled to `queries`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn
from tqdm.auto import tqdm

from ._base import Attack, AttackResult, check_images, heads_of, make_generator, run_model
from .objectives import Objective, build_objective
from .pgd import NORMS, _per_sample_norm, _targets_on, project_

_SCHEDULE = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def window_fraction(p_init: float, query: int, queries: int) -> float:
    """The fraction of the image a window covers at `query` of `queries` (the paper's halving schedule)."""
    at = int(query / queries * 10000)
    halvings = sum(at > mark for mark in _SCHEDULE)
    return p_init / 2**halvings


def _windows(shape, side: int, generator, device) -> torch.Tensor:
    """(B, 1, H, W) bool: one random side x side square per sample."""
    b, _, h, w = shape
    top = torch.randint(0, h - side + 1, (b,), generator=generator, device=device)
    left = torch.randint(0, w - side + 1, (b,), generator=generator, device=device)
    rows = torch.arange(h, device=device).view(1, h, 1)
    cols = torch.arange(w, device=device).view(1, 1, w)
    inside = ((rows >= top.view(-1, 1, 1)) & (rows < (top + side).view(-1, 1, 1))
              & (cols >= left.view(-1, 1, 1)) & (cols < (left + side).view(-1, 1, 1)))
    return inside[:, None]


def _bump(side: int, device, dtype) -> torch.Tensor:
    """The L2 window shape, unit norm: nested squares around the centre with weights 1 / (k + 1)^2, so the
    value falls off from the centre (the paper's pseudo-Gaussian, one bump per window)."""
    r = torch.arange(side, device=device, dtype=dtype)
    centre = (side - 1) / 2
    ring = torch.maximum((r.view(-1, 1) - centre).abs(), (r.view(1, -1) - centre).abs()).floor()
    weights = 1.0 / (torch.arange(side, device=device, dtype=dtype) + 1) ** 2
    tail = weights.flip(0).cumsum(0).flip(0)  # tail[j] = sum_{k >= j} weights[k]
    out = tail[ring.long()]
    return out / out.norm().clamp_min(1e-12)


class SquareAttack(Attack):
    """Score-based random search on the network's output dict, for any objective; per-sample accept.

    Args:
        model: the network (wrappers unwrapped); never modified.
        eps: budget (L-inf per pixel or L2 per image) on [0, 1] intensities.
        queries: forward passes per sample (the first one scores the start).
        norm: "linf" | "l2".
        objective / point_loss / targeted: as in PGD ("points" runs only the point head).
        p_init: the first window's area as a fraction of the image (paper: 0.8 L-inf, 0.1 L2 on ImageNet; we
            use 0.3 for both on small patches).
        seed / generator: the search's randomness.
        progress: a tqdm bar over the queries.

    `attack(images, targets, start=None)`: `start` (B, C, H, W) optional adversarial images to start from
    (e.g. another attack's result), projected onto the budget; default L-inf stripes / L2 a random
    point on the sphere. Returns AttackResult (images, losses (B,) at images, deltas).
    """

    def __init__(self, model: nn.Module, eps: float = 0.07, queries: int = 1000, norm: str = "linf",
                 objective: str | Objective = "points", point_loss: str = "sse", targeted: bool = False,
                 p_init: float = 0.3, clip: tuple[float, float] = (0.0, 1.0), seed: int | None = None,
                 generator: torch.Generator | None = None, progress: bool = False):
        super().__init__(model, seed)
        if not (math.isfinite(eps) and eps >= 0):
            raise ValueError(f"eps must be a finite number >= 0, got {eps}")
        if int(queries) != queries or queries < 1:
            raise ValueError(f"queries must be an integer >= 1, got {queries}")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        if not 0 < p_init <= 1:
            raise ValueError(f"p_init must be in (0, 1], got {p_init}")
        self.eps = float(eps)
        self.queries = int(queries)
        self.norm = norm
        self.objective = build_objective(objective, point_loss)
        self.heads = heads_of(self.objective)
        self.targeted = bool(targeted)
        self.p_init = float(p_init)
        self.clip = (float(clip[0]), float(clip[1]))
        self.generator = generator
        self.progress = bool(progress)

    def _score(self, x, delta, targets, sign):
        with torch.no_grad():
            loss = self.objective(run_model(self.model, (x + delta).clamp(*self.clip), self.heads), targets)
        return loss, sign * loss

    def forward(self, images: torch.Tensor, targets: Mapping[str, torch.Tensor],
                start: torch.Tensor | None = None) -> AttackResult:
        x = check_images(images, "SquareAttack")
        targets = _targets_on(targets, x)
        gen = self.generator if self.generator is not None else make_generator(x.device, self.seed)
        sign = -1.0 if self.targeted else 1.0
        b, c, h, w = x.shape
        view = (-1,) + (1,) * (x.ndim - 1)
        if start is not None:
            start = check_images(start, "SquareAttack start").to(x.device)
            if start.shape != x.shape:
                raise ValueError(f"SquareAttack: start has shape {tuple(start.shape)}, images {tuple(x.shape)}")
            delta = start - x
        elif self.norm == "linf":
            stripes = torch.randint(0, 2, (b, c, 1, w), generator=gen, device=x.device).to(x.dtype)
            delta = (stripes * 2 - 1).mul_(self.eps).expand(b, c, h, w).contiguous()
        else:
            delta = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
            delta.mul_(self.eps / _per_sample_norm(delta).clamp_min(1e-12))
        project_(delta, x, self.eps, self.norm, self.clip)
        loss, score = self._score(x, delta, targets, sign)
        for q in tqdm(range(1, self.queries), desc="Square", disable=not self.progress, leave=False):
            p = window_fraction(self.p_init, q, self.queries)
            side = int(min(max(round(math.sqrt(p * h * w)), 1), h - 1 if h > 1 else 1, w - 1 if w > 1 else 1))
            window = _windows(x.shape, side, gen, x.device)
            if self.norm == "linf":
                vertex = torch.randint(0, 2, (b, c, 1, 1), generator=gen, device=x.device).to(x.dtype) * 2 - 1
                candidate = torch.where(window, vertex * self.eps, delta)
            else:
                candidate = self._l2_candidate(delta, window, side, gen)
            project_(candidate, x, self.eps, self.norm, self.clip)
            cand_loss, cand_score = self._score(x, candidate, targets, sign)
            better = cand_score > score
            delta = torch.where(better.view(view), candidate, delta)
            loss = torch.where(better, cand_loss, loss)
            score = torch.where(better, cand_score, score)
        adv = (x + delta).clamp(*self.clip)
        return AttackResult(images=adv, losses=loss, deltas=adv - x)

    def _l2_candidate(self, delta, window, side, gen):
        """Move the energy of a random window (plus the budget's slack) into a fresh bump of random sign there."""
        bump = _bump(side, delta.device, delta.dtype)
        b = delta.shape[0]
        energy_in = (delta * window).flatten(1).norm(dim=1)
        slack = (self.eps**2 - delta.flatten(1).norm(dim=1).pow(2)).clamp_min(0.0)
        budget = (energy_in.pow(2) + slack).sqrt()
        signs = torch.randint(0, 2, (b,), generator=gen, device=delta.device).to(delta.dtype) * 2 - 1
        patch = torch.zeros_like(delta)
        # place the bump in each sample's window (windows differ per sample)
        idx = window.flatten(1).float().argmax(1)
        h, w = delta.shape[-2:]
        for i in range(b):
            top, left = divmod(int(idx[i]), w)
            patch[i, :, top:top + side, left:left + side] = bump * signs[i] * budget[i]
        return torch.where(window, patch, delta)

"""The certificate checked by attack: PGD on the smoothed model's Monte-Carlo estimate.

`SmoothedSurrogate` is a differentiable stand-in for the median-smoothed model: the mean (or the
median, through `torch.quantile`, which has gradients) of the base network's points over `samples`
fresh noisy copies per forward pass (expectation over transformation). `attack_smoothed` runs the
project's L2 PGD (`diskrobust.attacks.PGD`: eval mode, parameters frozen, input gradients only,
seeded) on it at the certified radius, pushing the points away from the clean smoothed prediction.
`check_certificate` recomputes the smoothed prediction at the attacked images with fresh noise and
counts the coordinates that left their certified interval: with a sound certificate that share stays
within the stated confidence (plus the Monte-Carlo error of the recomputed median).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from diskrobust.attacks import PGD
from diskrobust.attacks._base import run_model, unwrap_model

from .smoothing import Certificate, MedianSmoothing, _check_int, _check_sigma, _points_of

__all__ = ["SmoothedSurrogate", "attack_smoothed", "check_certificate"]

SURROGATES = ("mean", "median")


class SmoothedSurrogate(nn.Module):
    """{"pred": (B, *out)}: mean or median of base(x + N(0, sigma^2)) over `samples` copies, fresh each call.

    The base network is a submodule, so an attack's `attack_context` on this module guards it too.
    """

    def __init__(self, model: nn.Module, sigma: float, samples: int = 16, reduce: str = "mean",
                 generator: torch.Generator | None = None):
        super().__init__()
        if reduce not in SURROGATES:
            raise ValueError(f"reduce must be one of {SURROGATES}, got {reduce!r}")
        self.base = unwrap_model(model)
        self.sigma = _check_sigma(sigma)
        self.num_samples = _check_int(samples, "samples", 1)
        self.reduce = reduce
        self.generator = generator

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        b, m = x.shape[0], self.num_samples
        noise = torch.randn((b * m,) + tuple(x.shape[1:]), generator=self.generator, device=x.device, dtype=x.dtype)
        noisy = x.repeat_interleave(m, dim=0) + noise * self.sigma
        points = _points_of(run_model(self.base, noisy, ("pred",)))
        points = points.view(b, m, *points.shape[1:])
        return {"pred": points.mean(dim=1) if self.reduce == "mean" else points.quantile(0.5, dim=1)}


def attack_smoothed(model: nn.Module, images: torch.Tensor, sigma: float, radius: float, targets: torch.Tensor,
                    steps: int = 10, samples: int = 16, reduce: str = "mean", restarts: int = 1,
                    step_size: float | None = None, seed: int = 0, coordinate: int | None = None,
                    direction: float = 1.0) -> torch.Tensor:
    """(B, C, H, W) images within L2 `radius` of `images` that push the smoothed points away from `targets`
    (B, *out) (the clean smoothed prediction): L2 PGD, point SSE, random start, `restarts` restarts.

    With `coordinate` (an index into the flattened output) the attack instead drives that one coordinate
    up (`direction` +1) or down (-1): the direction in which the percentile bound is attained for a
    linear model, so the strongest test of one coordinate's interval."""
    gen = torch.Generator(device=images.device)
    gen.manual_seed(int(np.random.SeedSequence([int(seed), 1]).generate_state(1)[0]))
    surrogate = SmoothedSurrogate(model, sigma, samples, reduce, generator=gen)
    step = radius / 4.0 if step_size is None else float(step_size)
    objective = "points"
    if coordinate is not None:
        j, sign = int(coordinate), float(direction)

        def objective(outputs, _targets):
            return sign * outputs["pred"].flatten(1)[:, j]
    attack = PGD(surrogate, eps=float(radius), steps=steps, step_size=step, norm="l2", random_start=True,
                 objective=objective, point_loss="sse", restarts=restarts, seed=seed)
    return attack(images, {"points": targets}).images


def check_certificate(model: nn.Module, certificate: Certificate, attacked: torch.Tensor, radius_index: int,
                      n: int | None = None, seed: int = 12345, chunk_size: int = 64, first_index: int = 0) -> dict:
    """Recompute the smoothed prediction at `attacked` with fresh noise (`seed`, `n` samples, default 4x the
    certificate's) and compare it with the certified interval of radius `radius_index`.

    Returns {"escaped": (B, *out) bool, "escape_rate": share of coordinates outside, "any_escaped_rate":
    share of images with any coordinate outside, "displacement_px": (B,) largest point distance from the
    clean smoothed prediction (point outputs), "certified_px": (B,) the certified worst case}.
    """
    n = 4 * certificate.n if n is None else int(n)
    smoothed = MedianSmoothing(model, certificate.sigma, n, chunk_size, seed)(attacked, first_index)
    inside = certificate.contains(smoothed, radius_index)
    escaped = ~inside
    out = {"escaped": escaped, "escape_rate": float(escaped.float().mean()),
           "any_escaped_rate": float(escaped.flatten(1).any(dim=1).float().mean()), "smoothed": smoothed}
    if certificate.displacement is not None:
        out["displacement_px"] = (smoothed - certificate.median).norm(dim=-1).amax(dim=-1)
        out["certified_px"] = certificate.displacement[radius_index]
    return out

"""Median smoothing for the point regression and its certified per-point bounds.

The smoothed model (Chiang et al., NeurIPS 2020, "Detection as regression: certified object detection
by median smoothing") outputs, for every coordinate of every contour point, the median of the base
network's output over Gaussian-noised copies of the input, x + N(0, sigma^2 I). Their percentile
result: write h_p(x) for the p-th percentile of a coordinate of f(x + eps); for every perturbation
||delta||_2 <= r,

    h_{p_lower}(x) <= h_p(x + delta) <= h_{p_upper}(x),
    p_lower = Phi(Phi^-1(p) - r / sigma),  p_upper = Phi(Phi^-1(p) + r / sigma).

The percentiles at x are not known, only n samples. The bounds are order statistics of those samples
chosen with the binomial law of how many samples fall below a percentile: the k-th smallest sample
y_(k) lies above h_{p_upper}(x) with probability >= Binom.cdf(k - 1; n, p_upper), and below
h_{p_lower}(x) with probability >= 1 - Binom.cdf(k - 1; n, p_lower) (exact for any output
distribution, atoms included). Each side takes alpha / 2 (per coordinate, or alpha / (2 K) over the
K coordinates of a disk with `joint=True`, Bonferroni), so with probability >= 1 - alpha over the
noise draws the certified interval holds the smoothed model's median at every x + delta, ||delta|| <= r.
A radius whose order statistic does not exist for this n (r / sigma too large) is refused with the n
it needs.

The certified worst-case point displacement of a disk is the largest distance, over its points, from
the reported smoothed point (the empirical median) to the farthest corner of that point's certified
box: no L2 perturbation of size <= r moves any smoothed point further (at the stated confidence).

Inputs are not clipped to [0, 1] after the noise is added; train the base model with the same sigma
(`diskrobust.defenses.GaussianNoiseTraining`, the bundle's `train_noise.json`) or it smooths poorly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.stats import binom, norm
from torch import nn

from diskrobust.attacks._base import attack_context, run_model, unwrap_model

__all__ = ["MedianSmoothing", "Certificate", "certify", "order_statistics", "samples_needed",
           "shifted_percentiles", "worst_case_displacement"]


def _check_sigma(sigma) -> float:
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma <= 0:
        raise ValueError(f"sigma must be a finite number > 0 (the noise standard deviation on [0, 1] "
                         f"intensities), got {sigma!r}")
    return float(sigma)


def _check_int(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or int(value) != value or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_alpha(alpha) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1) (the certificate holds with probability 1 - alpha), got {alpha!r}")
    return float(alpha)


def _check_radii(radii) -> tuple[float, ...]:
    if isinstance(radii, (int, float)):
        radii = (radii,)
    radii = tuple(radii)
    if not radii:
        raise ValueError("radii must hold at least one L2 radius")
    for r in radii:
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not math.isfinite(r) or r < 0:
            raise ValueError(f"radii must be finite numbers >= 0 (L2 norms on [0, 1] intensities), got {r!r}")
    return tuple(float(r) for r in radii)


def shifted_percentiles(p: float, radius: float, sigma: float) -> tuple[float, float]:
    """(p_lower, p_upper) = Phi(Phi^-1(p) -/+ radius / sigma): the percentiles that bound h_p under the radius."""
    z = norm.ppf(p)
    return float(norm.cdf(z - radius / sigma)), float(norm.cdf(z + radius / sigma))


def samples_needed(radius: float, sigma: float, alpha_side: float, p: float = 0.5) -> int:
    """The smallest n for which both order statistics of `order_statistics` exist.

    The top sample y_(n) bounds h_{p_upper} with confidence 1 - p_upper^n, the bottom one h_{p_lower}
    with 1 - (1 - p_lower)^n: n >= log(alpha_side) / log(max(p_upper, 1 - p_lower)).
    """
    lo, hi = shifted_percentiles(p, radius, sigma)
    worst = max(hi, 1.0 - lo)
    if worst >= 1.0:
        return math.inf  # r / sigma so large that no finite n certifies it in float64
    return int(math.ceil(math.log(alpha_side) / math.log(worst) - 1e-12))


def order_statistics(n: int, radius: float, sigma: float, alpha_side: float, p: float = 0.5) -> tuple[int, int]:
    """1-based (k_lower, k_upper): y_(k_lower) <= h_{p_lower}(x) and y_(k_upper) >= h_{p_upper}(x), each
    with probability >= 1 - alpha_side over the n noise draws.

    k_lower is the largest k with Binom.cdf(k - 1; n, p_lower) <= alpha_side, k_upper the smallest k with
    Binom.cdf(k - 1; n, p_upper) >= 1 - alpha_side. Raises ValueError naming n (and the n needed) when
    either does not exist.
    """
    lo, hi = shifted_percentiles(p, radius, sigma)
    j = np.arange(n + 1)
    cdf_lo = binom.cdf(j[:-1], n, lo)  # cdf(k - 1) for k = 1..n
    cdf_hi = binom.cdf(j[:-1], n, hi)
    ok_lo = np.nonzero(cdf_lo <= alpha_side)[0]
    ok_hi = np.nonzero(cdf_hi >= 1.0 - alpha_side)[0]
    if ok_lo.size == 0 or ok_hi.size == 0:
        need = samples_needed(radius, sigma, alpha_side, p)
        raise ValueError(f"n = {n} noise samples is too small to certify radius {radius:g} at sigma {sigma:g} "
                         f"(r / sigma = {radius / sigma:.3g}, alpha {alpha_side:.3g} per side): the needed order "
                         f"statistic does not exist; n >= {need} is needed (or a smaller radius, a larger sigma, "
                         f"a larger alpha)")
    return int(ok_lo[-1]) + 1, int(ok_hi[0]) + 1


def _points_of(outputs) -> torch.Tensor:
    if isinstance(outputs, dict):
        if "pred" not in outputs:
            raise ValueError(f"the base model's output dict has no 'pred' (points) entry: {sorted(outputs)}")
        return outputs["pred"]
    if not torch.is_tensor(outputs):
        raise ValueError(f"the base model must return a tensor or a dict with 'pred', got {type(outputs).__name__}")
    return outputs


def _check_images(images) -> torch.Tensor:
    if not torch.is_tensor(images) or images.ndim != 4 or not images.is_floating_point():
        got = f"{tuple(images.shape)} {images.dtype}" if torch.is_tensor(images) else type(images).__name__
        raise ValueError(f"images must be a floating point (B, C, H, W) tensor, got {got}")
    if images.shape[0] == 0:
        raise ValueError("images must hold at least one image (B >= 1)")
    images = images.as_tensor() if hasattr(images, "as_tensor") else images
    if not torch.isfinite(images).all():
        raise ValueError("images contain NaN or Inf")
    return images.detach()


# Noisy copies drawn per generator: large enough that seeding costs nothing next to the draws, fixed so
# that the chunk size of the forward passes never changes a copy's noise.
NOISE_BLOCK = 16


def noise_generator(seed: int, index: int, block: int, device: torch.device) -> torch.Generator:
    """The generator of copies [block * NOISE_BLOCK, (block + 1) * NOISE_BLOCK) of image `index` (its position
    in the data set) under `seed`: an image's noise does not depend on which other images share its batch."""
    state = np.random.SeedSequence([int(seed), int(index), int(block)]).generate_state(2, dtype=np.uint32)
    gen = torch.Generator(device=device)
    gen.manual_seed(int(state[0]) << 32 | int(state[1]))
    return gen


def draw_noise(shape, seed: int, index: int, start: int, stop: int, device, dtype) -> torch.Tensor:
    """(stop - start, *shape) standard normal noise of copies start..stop-1 of image `index`."""
    first, last = start // NOISE_BLOCK, (stop - 1) // NOISE_BLOCK
    blocks = [torch.randn((NOISE_BLOCK,) + tuple(shape), generator=noise_generator(seed, index, blk, device),
                          device=device, dtype=dtype) for blk in range(first, last + 1)]
    return torch.cat(blocks)[start - first * NOISE_BLOCK:stop - first * NOISE_BLOCK]


class MedianSmoothing:
    """The median-smoothed model: `smoothed(images)` -> (B, *out) empirical medians over `n` noisy copies.

    Args:
        model: the base network (a tensor output, or a dict whose "pred" is used); run in eval mode
            under no_grad with its parameters frozen (`attack_context`), every flag restored after.
        sigma: noise standard deviation on the input scale ([0, 1] intensities).
        n: noisy copies per image.
        chunk_size: copies per forward pass (memory).
        seed: seeds the noise streams of each image (`noise_generator(seed, first_index + b, block)`).

    `samples(images)` gives the raw noisy outputs (B, n, *out), the input of `certify`.
    """

    def __init__(self, model: nn.Module, sigma: float, n: int = 100, chunk_size: int = 64, seed: int = 0):
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = unwrap_model(model)
        self.sigma = _check_sigma(sigma)
        self.n = _check_int(n, "n", 1)
        self.chunk_size = _check_int(chunk_size, "chunk_size", 1)
        self.seed = int(seed)

    def samples(self, images: torch.Tensor, first_index: int = 0, n: int | None = None,
                seed: int | None = None) -> torch.Tensor:
        """(B, n, *out) base outputs at images + N(0, sigma^2); image b is image `first_index + b` of the seed's streams."""
        x = _check_images(images)
        n = self.n if n is None else _check_int(n, "n", 1)
        seed = self.seed if seed is None else int(seed)
        out = []
        with attack_context(self.model), torch.no_grad():
            for b in range(x.shape[0]):
                rows = []
                for start in range(0, n, self.chunk_size):
                    stop = min(n, start + self.chunk_size)
                    noise = draw_noise(x.shape[1:], seed, first_index + b, start, stop, x.device, x.dtype)
                    noisy = noise.mul_(self.sigma).add_(x[b])
                    rows.append(_points_of(run_model(self.model, noisy, ("pred",))).float())
                out.append(torch.cat(rows, dim=0))
        return torch.stack(out)

    def __call__(self, images: torch.Tensor, first_index: int = 0, seed: int | None = None) -> torch.Tensor:
        return self.samples(images, first_index, seed=seed).quantile(0.5, dim=1)


def worst_case_displacement(median: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """(..., P, 2) median points and certified boxes -> (...,) max over points of the distance to the farthest corner."""
    reach = torch.maximum((median - lower).abs(), (upper - median).abs())
    return reach.norm(dim=-1).amax(dim=-1)


@dataclass
class Certificate:
    """What `certify` returns (CPU tensors; R radii, B images, out = (176, 2) for DiskShapeNet).

    median: (B, *out) the smoothed prediction (empirical median); lower, upper: (R, B, *out) certified
    bounds per radius; displacement: (R, B) certified worst-case point displacement (px) when the
    output is (P, 2) points, else None; order_statistics: per radius (k_lower, k_upper), 1-based.
    """

    sigma: float
    n: int
    alpha: float
    joint: bool
    radii: tuple[float, ...]
    median: torch.Tensor
    lower: torch.Tensor
    upper: torch.Tensor
    order_statistics: list[tuple[int, int]]
    displacement: torch.Tensor | None = None
    alpha_side: float = field(default=0.0)

    def contains(self, values: torch.Tensor, radius_index: int) -> torch.Tensor:
        """Boolean (B, *out): `values` (B, *out) inside the certified interval of radius `radius_index`."""
        return (values >= self.lower[radius_index]) & (values <= self.upper[radius_index])

    def summary(self) -> list[dict]:
        """Per radius: radius, r / sigma, order statistics and, for point outputs, the displacement's
        median, mean and max over the images (px)."""
        rows = []
        for i, r in enumerate(self.radii):
            row = {"radius": r, "radius_over_sigma": r / self.sigma, "k_lower": self.order_statistics[i][0],
                   "k_upper": self.order_statistics[i][1]}
            if self.displacement is not None:
                d = self.displacement[i]
                row.update(displacement_median_px=float(d.quantile(0.5)), displacement_mean_px=float(d.mean()),
                           displacement_max_px=float(d.max()))
            rows.append(row)
        return rows

    def confidence_statement(self) -> str:
        what = "all coordinates of a disk together (Bonferroni)" if self.joint else "each coordinate"
        return (f"with probability >= {1 - self.alpha:g} over the noise draws, for {what}: the smoothed median "
                f"at any input within L2 distance r lies in [lower, upper]")


def certify(model: nn.Module, images: torch.Tensor, sigma: float, radii: Sequence[float] | float, n: int = 100,
            alpha: float = 0.001, joint: bool = False, seed: int = 0, chunk_size: int = 64, first_index: int = 0,
            samples: torch.Tensor | None = None) -> Certificate:
    """Certified per-coordinate bounds of the median-smoothed `model` at each image and L2 radius.

    Args:
        model: the base network (tensor output or dict with "pred").
        images: (B, C, H, W) float.
        sigma: noise standard deviation (> 0).
        radii: L2 radii (>= 0) on the input scale; one certificate per radius from the same samples.
        n: noise samples per image. Refused (ValueError naming n and the n needed) when the largest
            radius cannot be certified with it.
        alpha: the bounds hold with probability >= 1 - alpha (alpha / 2 per side).
        joint: spread alpha over the K coordinates of each image (Bonferroni), so the whole box (and the
            worst-case displacement) holds with 1 - alpha, not only each coordinate.
        seed, chunk_size, first_index: as in `MedianSmoothing`.
        samples: precomputed (B, n, *out) samples (`MedianSmoothing.samples`) instead of running the model.
    """
    sigma = _check_sigma(sigma)
    radii = _check_radii(radii)
    n = _check_int(n, "n", 1)
    alpha = _check_alpha(alpha)
    smoother = MedianSmoothing(model, sigma, n, chunk_size, seed)
    if samples is None:
        x = _check_images(images)
        # the refusal comes before any forward pass; K needs one cheap pass at n = 1 when joint
        num_coords = smoother.samples(x[:1], first_index, n=1)[0, 0].numel() if joint else 1
        alpha_side = alpha / (2 * num_coords)
        orders = [order_statistics(n, r, sigma, alpha_side) for r in radii]
        samples = smoother.samples(x, first_index)
    else:
        if not torch.is_tensor(samples) or samples.ndim < 3 or samples.shape[1] != n:
            raise ValueError(f"samples must be a (B, n={n}, ...) tensor, got "
                             f"{tuple(samples.shape) if torch.is_tensor(samples) else type(samples).__name__}")
        alpha_side = alpha / (2 * (samples[0, 0].numel() if joint else 1))
        orders = [order_statistics(n, r, sigma, alpha_side) for r in radii]
    samples = samples.detach().float().cpu()
    ordered = samples.sort(dim=1).values
    median = samples.quantile(0.5, dim=1)
    lower = torch.stack([ordered[:, k_lo - 1] for k_lo, _ in orders])
    upper = torch.stack([ordered[:, k_hi - 1] for _, k_hi in orders])
    displacement = None
    if median.ndim == 3 and median.shape[-1] == 2:
        displacement = worst_case_displacement(median.unsqueeze(0), lower, upper)
    return Certificate(sigma=sigma, n=n, alpha=alpha, joint=bool(joint), radii=radii, median=median, lower=lower,
                       upper=upper, order_statistics=orders, displacement=displacement, alpha_side=alpha_side)

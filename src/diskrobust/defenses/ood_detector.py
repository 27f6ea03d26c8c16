"""OOD detectors on DiskShapeNet: a feature-space Mahalanobis detector and a head-agreement detector.

Both are callables `detector(images (B, 1, S, S), outputs=None) -> (B,)` score, higher = more OOD, and
differentiable w.r.t. the images, so `diskrobust.attacks.OODAttack(detector=..., detector_weight=...)`
can run an adaptive attack that also drives the score down.

MahalanobisDetector: global-average-pooled features of chosen encoder stages, one class-free Gaussian
(mean + Ledoit-Wolf shrinkage covariance) fitted on in-distribution training patches; the score is the
Mahalanobis distance to it. The detector keeps a reference to the network but never changes it: every
feature pass runs under `attack_context` (eval mode, parameters frozen, their flags restored after).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from diskrobust.attacks import attack_context, unwrap_model
from diskrobust.data.contours import polygon_fill_torch
from diskrobust.data.errors import DataError

__all__ = ["MahalanobisDetector", "HeadAgreementDetector", "ledoit_wolf_covariance", "threshold_at_tpr",
           "encoder_features"]

_FORMAT = "diskrobust-mahalanobis/1"
# Added under the square root so the distance stays differentiable at the mean.
_SQRT_EPS = 1e-8


def read_npz(path: str | Path) -> dict:
    """The arrays of a detector's .npz file; DataError(path, problem) if missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise DataError(str(path), "detector file not found")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise DataError(str(path), f"not a readable .npz file ({e})") from e


def write_npz(path: str | Path, state: Mapping) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:  # a file object keeps numpy from appending ".npz" to other suffixes
        np.savez(f, **state)
    return path


def check_state(state: Mapping, keys: set[str], fmt: str, source: str) -> None:
    """DataError(source, ...) unless `state` has all `keys` and its "format" is `fmt`."""
    missing = keys - set(state)
    if missing:
        raise DataError(source, f"missing keys {sorted(missing)}")
    if str(np.asarray(state["format"])) != fmt:
        raise DataError(source, f"format {str(np.asarray(state['format']))!r}, expected {fmt!r}")


def threshold_at_tpr(ind_scores, tpr: float = 0.95) -> float:
    """Score threshold that keeps a fraction `tpr` of in-distribution scores (B,) at or below it.

    An input is flagged OOD when its score is strictly above the threshold, so `tpr` is the fraction
    of IND inputs accepted (the usual "95 % TPR" operating point with IND as the positive class).
    """
    scores = torch.as_tensor(ind_scores).detach().flatten().double().cpu()
    if scores.numel() == 0:
        raise ValueError("threshold_at_tpr: no in-distribution scores")
    if not 0.0 < tpr <= 1.0:
        raise ValueError(f"threshold_at_tpr: tpr must be in (0, 1], got {tpr}")
    if not torch.isfinite(scores).all():
        raise ValueError("threshold_at_tpr: scores contain NaN or Inf")
    # the smallest IND score with at least a fraction tpr of IND scores at or below it
    k = max(math.ceil(tpr * scores.numel() - 1e-9), 1)
    return float(scores.sort().values[k - 1])


def ledoit_wolf_covariance(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(N, D) samples -> (mean (D,), shrunk covariance (D, D), shrinkage in [0, 1]).

    Ledoit & Wolf (2004): (1 - a) * S + a * mu * I with S the (biased) sample covariance, mu = tr(S) / D
    and a the estimated optimal intensity. Works for N < D, where S alone is singular.
    """
    x = x.double()
    n, d = x.shape
    if n < 2:
        raise ValueError(f"ledoit_wolf_covariance needs at least 2 samples, got {n}")
    mean = x.mean(0)
    xc = x - mean
    s = xc.T @ xc / n
    mu = torch.trace(s) / d
    # delta^2: distance of S from the scaled identity; beta^2: variance of the per-sample outer products
    delta2 = ((s - mu * torch.eye(d, dtype=s.dtype, device=s.device)) ** 2).sum() / d
    outer_sq = (xc**2).sum(1) ** 2  # ||x_i x_i^T||_F^2 = ||x_i||^4
    beta2 = (outer_sq.sum() / n - 2 * (xc @ s * xc).sum() / n + (s**2).sum()) / (n * d)
    beta2 = torch.minimum(beta2.clamp_min(0), delta2)
    shrink = float(beta2 / delta2) if delta2 > 0 else 1.0
    cov = (1 - shrink) * s + shrink * mu * torch.eye(d, dtype=s.dtype, device=s.device)
    return mean, cov, shrink


def encoder_features(model: nn.Module, images: torch.Tensor, stages: Sequence[int]) -> torch.Tensor:
    """Global-average-pooled DiskShapeNet encoder features, (B, 1, S, S) -> (B, sum of stage widths).

    Runs the network's own `stem` and `encoder` stages (no decoder, no heads); `stages` index
    `model.encoder` (negative from the end). The caller chooses eval mode and gradient tracking.
    """
    model = unwrap_model(model)
    if not hasattr(model, "encoder") or not hasattr(model, "stem"):
        raise TypeError(f"encoder_features needs a DiskShapeNet-like model with stem and encoder, got "
                        f"{type(model).__name__}")
    if hasattr(model, "_check_input"):
        model._check_input(images)
    n = len(model.encoder)
    wanted = sorted({s % n for s in stages})
    x = model.stem(images)
    pooled = []
    for i, stage in enumerate(model.encoder):
        x = stage(x)
        if i in wanted:
            pooled.append(x.mean(dim=(-2, -1)))
        if i >= wanted[-1]:
            break
    return torch.cat(pooled, dim=1)


class MahalanobisDetector:
    """Class-free Gaussian on pooled encoder features; score = Mahalanobis distance (higher = more OOD).

    Args:
        model: the DiskShapeNet whose features are used (held by reference, never modified).
        stages: encoder stages whose global-average-pooled features are concatenated (default: the last).

    `fit(images)` (or `fit(model, images)`) estimates the Gaussian; `score(images)` / `detector(images,
    outputs)` -> (B,); `save(path)` / `MahalanobisDetector.load(path, model)` keep the statistics in an
    .npz. Attributes after fitting: mean (D,), precision (D, D), shrinkage, num_samples.
    """

    # OODAttack(detector=...) reads this: the score recomputes its features and reads no network output
    heads: tuple[str, ...] = ()

    def __init__(self, model: nn.Module, stages: Sequence[int] = (-1,)):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if len(stages) == 0:
            raise ValueError("stages must name at least one encoder stage")
        self.model = unwrap_model(model)
        n = len(self.model.encoder)
        for s in stages:
            if not -n <= int(s) < n:
                raise ValueError(f"stage {s} out of range for an encoder with {n} stages")
        self.stages = tuple(int(s) % n for s in stages)
        self.mean: torch.Tensor | None = None
        self.precision: torch.Tensor | None = None
        self.shrinkage: float | None = None
        self.num_samples = 0

    @property
    def fitted(self) -> bool:
        return self.mean is not None

    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 1, S, S) -> (B, D) pooled features, eval mode, gradient w.r.t. images only (if enabled)."""
        grad = torch.is_grad_enabled()
        with attack_context(self.model), torch.set_grad_enabled(grad):
            return encoder_features(self.model, images.to(self._device()), self.stages)

    @torch.no_grad()
    def fit(self, model_or_images, images: torch.Tensor | None = None, batch_size: int = 64) -> MahalanobisDetector:
        """Fit on in-distribution patches (N, 1, S, S); `fit(model, images)` also accepted (same model)."""
        if images is None:
            images = model_or_images
        elif unwrap_model(model_or_images) is not self.model:
            raise ValueError("fit(model, images): model is not the network this detector was built on")
        if not torch.is_tensor(images) or images.ndim != 4 or images.shape[0] < 2:
            raise ValueError(f"fit needs a (N >= 2, 1, S, S) tensor of in-distribution patches, got "
                             f"{tuple(images.shape) if torch.is_tensor(images) else type(images).__name__}")
        feats = torch.cat([self.features(images[i:i + batch_size]) for i in range(0, images.shape[0], batch_size)])
        mean, cov, shrink = ledoit_wolf_covariance(feats.cpu())
        self._set(mean, torch.linalg.inv(cov), shrink, feats.shape[0])
        return self

    def _set(self, mean: torch.Tensor, precision: torch.Tensor, shrinkage: float, num_samples: int) -> None:
        device = self._device()
        # float32 for the attack's graph; the precision is symmetrised against inversion round-off
        self.mean = mean.to(device=device, dtype=torch.float32)
        self.precision = ((precision + precision.T) / 2).to(device=device, dtype=torch.float32)
        self.shrinkage = float(shrinkage)
        self.num_samples = int(num_samples)

    def score(self, images: torch.Tensor) -> torch.Tensor:
        """Mahalanobis distance of each image's features, (B, 1, S, S) -> (B,), differentiable w.r.t. images."""
        if not self.fitted:
            raise RuntimeError("MahalanobisDetector.score called before fit (or load)")
        diff = self.features(images) - self.mean
        quad = ((diff @ self.precision) * diff).sum(dim=1)
        return (quad.clamp_min(0) + _SQRT_EPS).sqrt()

    def __call__(self, images: torch.Tensor, outputs: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """The `OODAttack(detector=...)` signature; `outputs` is not needed (features are recomputed)."""
        return self.score(images)

    def state_dict(self) -> dict:
        if not self.fitted:
            raise RuntimeError("MahalanobisDetector: nothing to save before fit")
        return {"format": _FORMAT, "stages": np.asarray(self.stages, dtype=np.int64),
                "mean": self.mean.cpu().double().numpy(), "precision": self.precision.cpu().double().numpy(),
                "shrinkage": np.float64(self.shrinkage), "num_samples": np.int64(self.num_samples)}

    def load_state_dict(self, state: Mapping, source: str = "state_dict") -> None:
        check_state(state, {"format", "stages", "mean", "precision", "shrinkage", "num_samples"}, _FORMAT, source)
        stages = tuple(int(s) for s in np.asarray(state["stages"]).ravel())
        n = len(self.model.encoder)
        if any(not 0 <= s < n for s in stages):
            raise DataError(source, f"stages {stages} do not fit an encoder with {n} stages")
        width = sum(self.model.width * 2**s for s in stages)
        mean = torch.as_tensor(np.asarray(state["mean"], dtype=np.float64))
        precision = torch.as_tensor(np.asarray(state["precision"], dtype=np.float64))
        if mean.shape != (width,) or precision.shape != (width, width):
            raise DataError(source, f"mean {tuple(mean.shape)} / precision {tuple(precision.shape)} do not match "
                                    f"{width} features of stages {stages}")
        if not (torch.isfinite(mean).all() and torch.isfinite(precision).all()):
            raise DataError(source, "mean or precision contains NaN or Inf")
        self.stages = stages
        self._set(mean, precision, float(state["shrinkage"]), int(state["num_samples"]))

    def save(self, path: str | Path) -> Path:
        return write_npz(path, self.state_dict())

    @classmethod
    def load(cls, path: str | Path, model: nn.Module) -> MahalanobisDetector:
        state = read_npz(path)
        det = cls(model, stages=tuple(int(s) for s in np.asarray(state.get("stages", [-1])).ravel()) or (-1,))
        det.load_state_dict(state, source=str(path))
        return det


class HeadAgreementDetector:
    """Disagreement of the two heads: 1 - soft Dice(sigmoid(seg), filled polygon of the predicted points).

    On IND patches both heads describe the same disk; an attacked OOD image optimised only for one
    head, or noise, tends to make them disagree. Needs both heads. The filled polygon is not
    differentiable w.r.t. the points (a hard fill), so the gradient flows through the seg head only.
    `detector(images, outputs=None) -> (B,)`, in [0, 1], higher = more OOD.
    """

    def __init__(self, model: nn.Module):
        self.model = unwrap_model(model)
        if not (getattr(self.model, "has_point_head", False) and getattr(self.model, "has_seg_head", False)):
            raise ValueError("HeadAgreementDetector needs a network with both the point and the seg head")

    def score(self, images: torch.Tensor, outputs: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        if outputs is None:
            grad = torch.is_grad_enabled()
            with attack_context(self.model), torch.set_grad_enabled(grad):
                outputs = self.model(images)
        prob = torch.sigmoid(outputs["seg"]).flatten(1)
        filled = polygon_fill_torch(outputs["pred"].detach(), outputs["seg"].shape[-2:]).flatten(1).to(prob)
        inter = (prob * filled).sum(1)
        return 1.0 - 2.0 * inter / (prob.sum(1) + filled.sum(1)).clamp_min(1e-6)

    def __call__(self, images: torch.Tensor, outputs: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        return self.score(images, outputs)

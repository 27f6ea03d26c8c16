"""OOD detector candidates meant to survive an adaptive OOD attack (issue 18, item 3).

All share the interface of `ood_detector`: `detector(images (B, 1, S, S), outputs=None) -> (B,)` score,
higher = more OOD, differentiable w.r.t. the images, fitted on in-distribution (IND) patches, with
save / load. The network is never trained or changed; only the detectors learn.

* `InputStatsDetector`: Mahalanobis distance of simple, differentiable image statistics (intensity mean
  and spread, Laplacian (high-pass) energy at two scales, soft histograms of intensity and of the local
  gradient magnitude). It looks at the pixels, not at the network's features, so an attack must change
  the image's texture itself to pass; noise-like starts carry a lot of high-frequency energy to remove.
* `OutlierExposureDetector`: a small CNN trained (`train_outlier_exposure`) to tell IND patches from OOD
  starts *and* from OOD-attacked images generated in its own training loop by `OODAttack` with the
  detector itself in the objective (outlier exposure with attacks, in the spirit of ATOM / ALOE).
* `EnsembleDetector`: max over members of (score - member threshold) / member IND spread, each member
  thresholded at its share (fpr / k) of the false-positive rate, so flagged by any member = flagged.
* `DetectorHinge`: not a detector but the attack's detector term for a joint "fooled and undetected"
  goal: relu((score - threshold) / scale + margin), so the attack stops paying for the detector once
  the score is safely below the threshold and spends the budget on the target instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from diskrobust.attacks import OODAttack, attack_context, box_noise, uniform_noise
from diskrobust.attacks._base import heads_of
from diskrobust.data.errors import DataError

from .ood_detector import _SQRT_EPS, check_state, ledoit_wolf_covariance, read_npz, threshold_at_tpr, write_npz

__all__ = ["input_statistics", "InputStatsDetector", "OutlierExposureDetector", "train_outlier_exposure",
           "EnsembleDetector", "DetectorHinge", "detector_scores", "training_outliers"]

_STATS_FORMAT = "diskrobust-inputstats/1"
_OE_FORMAT = "diskrobust-oe-detector/1"
_ENSEMBLE_FORMAT = "diskrobust-ensemble/1"
_LAPLACE = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)


def _soft_histogram(values: torch.Tensor, lo: float, hi: float, bins: int) -> torch.Tensor:
    """(B, N) -> (B, bins) fractions with Gaussian (not hard) bin membership, so gradients reach the values."""
    centres = torch.linspace(lo, hi, bins, device=values.device, dtype=values.dtype)
    width = (hi - lo) / max(bins - 1, 1)
    w = torch.exp(-0.5 * ((values.unsqueeze(-1) - centres) / width) ** 2)
    w = w / w.sum(-1, keepdim=True).clamp_min(1e-12)
    return w.mean(1)


def input_statistics(images: torch.Tensor, bins: int = 8) -> torch.Tensor:
    """(B, 1, S, S) in [0, 1] -> (B, 4 + 2 * bins) differentiable image statistics (module doc)."""
    if not torch.is_tensor(images) or images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"input_statistics needs (B, 1, S, S) images, got "
                         f"{tuple(images.shape) if torch.is_tensor(images) else type(images).__name__}")
    x = images.float()
    flat = x.flatten(1)
    kernel = _LAPLACE.to(x)
    # logs: energies span decades between a smooth MR patch and uniform noise; a Gaussian fits logs better
    hp1 = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel).pow(2).mean((1, 2, 3))
    x2 = F.avg_pool2d(x, 2)
    hp2 = F.conv2d(F.pad(x2, (1, 1, 1, 1), mode="replicate"), kernel).pow(2).mean((1, 2, 3))
    gx = x[..., :-1, 1:] - x[..., :-1, :-1]
    gy = x[..., 1:, :-1] - x[..., :-1, :-1]
    grad = (gx.pow(2) + gy.pow(2) + 1e-6).sqrt().flatten(1)
    return torch.cat([flat.mean(1, keepdim=True), (flat.var(1, keepdim=True) + 1e-6).log(),
                      (hp1 + 1e-6).log()[:, None], (hp2 + 1e-6).log()[:, None],
                      _soft_histogram(flat, 0.0, 1.0, bins), _soft_histogram(grad, 0.0, 0.5, bins)], dim=1)


class InputStatsDetector:
    """Mahalanobis distance of `input_statistics` to their IND Gaussian (Ledoit-Wolf covariance).

    Reads no network output (`heads = ()`), so as an attack's detector it costs one cheap pass per step.
    """

    heads: tuple[str, ...] = ()

    def __init__(self, bins: int = 8):
        if int(bins) != bins or bins < 2:
            raise ValueError(f"bins must be an integer >= 2, got {bins}")
        self.bins = int(bins)
        self.mean: torch.Tensor | None = None
        self.precision: torch.Tensor | None = None
        self.shrinkage: float | None = None
        self.num_samples = 0

    @torch.no_grad()
    def fit(self, images: torch.Tensor) -> InputStatsDetector:
        """Fit on IND patches (N >= 2, 1, S, S)."""
        if not torch.is_tensor(images) or images.ndim != 4 or images.shape[0] < 2:
            raise ValueError("fit needs a (N >= 2, 1, S, S) tensor of in-distribution patches")
        mean, cov, shrink = ledoit_wolf_covariance(input_statistics(images.cpu(), self.bins))
        self.mean, self.precision = mean.float(), torch.linalg.inv(cov).float()
        self.precision = (self.precision + self.precision.T) / 2
        self.shrinkage, self.num_samples = float(shrink), int(images.shape[0])
        return self

    def score(self, images: torch.Tensor) -> torch.Tensor:
        if self.mean is None:
            raise RuntimeError("InputStatsDetector.score called before fit (or load)")
        diff = input_statistics(images, self.bins) - self.mean.to(images.device)
        quad = ((diff @ self.precision.to(images.device)) * diff).sum(1)
        return (quad.clamp_min(0) + _SQRT_EPS).sqrt()

    def __call__(self, images: torch.Tensor, outputs: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        return self.score(images)

    def save(self, path: str | Path) -> Path:
        if self.mean is None:
            raise RuntimeError("InputStatsDetector: nothing to save before fit")
        return write_npz(path, {"format": _STATS_FORMAT, "bins": np.int64(self.bins),
                                 "mean": self.mean.double().numpy(), "precision": self.precision.double().numpy(),
                                 "shrinkage": np.float64(self.shrinkage), "num_samples": np.int64(self.num_samples)})

    @classmethod
    def load(cls, path: str | Path) -> InputStatsDetector:
        state = read_npz(path)
        check_state(state, {"format", "bins", "mean", "precision", "shrinkage", "num_samples"}, _STATS_FORMAT,
                     str(path))
        det = cls(int(state["bins"]))
        d = 4 + 2 * det.bins
        mean, precision = np.asarray(state["mean"], np.float64), np.asarray(state["precision"], np.float64)
        if mean.shape != (d,) or precision.shape != (d, d) or not (np.isfinite(mean).all() and
                                                                   np.isfinite(precision).all()):
            raise DataError(str(path), f"mean {mean.shape} / precision {precision.shape} are not finite "
                                       f"statistics of {d} features")
        det.mean, det.precision = torch.from_numpy(mean).float(), torch.from_numpy(precision).float()
        det.shrinkage, det.num_samples = float(state["shrinkage"]), int(state["num_samples"])
        return det


class OutlierExposureDetector(nn.Module):
    """A small CNN, image -> OOD logit (B,); trained by `train_outlier_exposure`. Reads no network output."""

    heads: tuple[str, ...] = ()

    def __init__(self, width: int = 8):
        super().__init__()
        if int(width) != width or width < 1:
            raise ValueError(f"width must be an integer >= 1, got {width}")
        self.width = int(width)
        w = self.width
        self.body = nn.Sequential(
            nn.Conv2d(1, w, 3, padding=1), nn.ReLU(), nn.Conv2d(w, w, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Linear(4 * w, 1)

    def forward(self, images: torch.Tensor, outputs: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        return self.head(self.body(images).mean((-2, -1))).squeeze(-1)

    def score(self, images: torch.Tensor) -> torch.Tensor:
        with attack_context(self), torch.set_grad_enabled(torch.is_grad_enabled()):
            return self(images)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"format": _OE_FORMAT, "width": self.width, "state_dict": self.state_dict()}, path)
        return path

    @classmethod
    def load(cls, path: str | Path, map_location="cpu") -> OutlierExposureDetector:
        path = Path(path)
        if not path.is_file():
            raise DataError(str(path), "detector file not found")
        try:
            state = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as e:  # torch raises several types for a corrupt file
            raise DataError(str(path), f"not a readable torch file ({e})") from e
        if not isinstance(state, dict):
            raise DataError(str(path), "expected a dict with format, width and state_dict")
        check_state(state, {"format", "width", "state_dict"}, _OE_FORMAT, str(path))
        det = cls(int(state["width"]))
        try:
            det.load_state_dict(state["state_dict"])
        except RuntimeError as e:
            raise DataError(str(path), f"state_dict does not fit width {det.width} ({e})") from e
        return det.eval()


def training_outliers(n: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """OOD starts the detector may train on: uniform noise and box noise of random cell counts.

    Natural images are left out on purpose, so the evaluation's natural-image starts are an OOD kind
    the detector never saw.
    """
    half = n // 2
    cells = int(2 ** torch.randint(2, 6, (1,), generator=generator))
    return torch.cat([uniform_noise(half, size, generator=generator),
                      box_noise(n - half, size, cells=cells, generator=generator)])


def train_outlier_exposure(detector: OutlierExposureDetector, model: nn.Module, ind_images: torch.Tensor,
                           targets: Mapping[str, torch.Tensor], iterations: int = 200, batch: int = 16,
                           lr: float = 1e-3, rms_range: tuple[float, float] = (0.02, 0.4), attack_steps: int = 5,
                           attack_lr: float = 0.02, attack_weights: Sequence[float] = (1.0, 10.0),
                           attacked_fraction: float = 0.5, seed: int = 0,
                           outliers: Callable[[int, int, torch.Generator], torch.Tensor] = training_outliers,
                           log: Callable[[str], None] | None = None) -> list[float]:
    """Train `detector` (BCE: IND 0, OOD 1) on IND patches, OOD starts, and OOD starts attacked *against
    the current detector and the frozen model* (`OODAttack` with the detector term) inside the loop.

    Each iteration: `batch` IND patches, `batch` OOD images of which `attacked_fraction` are attacked
    with a budget drawn uniformly (per-pixel RMS in `rms_range`), `attack_steps` Adamax steps and a
    weight from `attack_weights`, towards the network's output on random IND patches (`targets`, from
    `targets_from_model`). The model stays in eval mode and is never updated. Returns the losses.
    """
    if ind_images.ndim != 4 or ind_images.shape[0] < 2:
        raise ValueError(f"ind_images must be (N >= 2, 1, S, S), got {tuple(ind_images.shape)}")
    if not 0.0 <= attacked_fraction <= 1.0:
        raise ValueError(f"attacked_fraction must lie in [0, 1], got {attacked_fraction}")
    gen = torch.Generator().manual_seed(seed)
    size = ind_images.shape[-1]
    device = next(detector.parameters()).device
    opt = torch.optim.Adam(detector.parameters(), lr=lr)
    n_attacked = int(round(attacked_fraction * batch))
    n_targets = next(iter(targets.values())).shape[0]
    losses = []
    for it in range(int(iterations)):
        ind = ind_images[torch.randint(ind_images.shape[0], (batch,), generator=gen)].to(device)
        ood = outliers(batch, size, gen).to(device)
        if n_attacked:
            rms = float(torch.empty(()).uniform_(*rms_range, generator=gen))
            w = float(attack_weights[int(torch.randint(len(attack_weights), (1,), generator=gen))])
            pick = torch.randint(n_targets, (n_attacked,), generator=gen)
            attack = OODAttack(model, eps=rms * size, steps=attack_steps, lr=attack_lr, detector=detector,
                               detector_weight=w, seed=seed * 100003 + it, progress=False)
            ood[:n_attacked] = attack(ood[:n_attacked], {k: v[pick].to(device) for k, v in targets.items()}).images
        detector.train()
        logits = detector(torch.cat([ind, ood]))
        labels = torch.cat([torch.zeros(batch), torch.ones(batch)]).to(logits)
        loss = F.binary_cross_entropy_with_logits(logits, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if log is not None and (it + 1) % 25 == 0:
            log(f"outlier exposure {it + 1}/{iterations}: loss {np.mean(losses[-25:]):.4f} (last rms {rms:.3f})"
                if n_attacked else f"outlier exposure {it + 1}/{iterations}: loss {np.mean(losses[-25:]):.4f}")
    detector.eval()
    opt.zero_grad(set_to_none=True)
    return losses


def detector_scores(detector: Callable, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """(N,) scores without gradients, in batches, on the CPU."""
    with torch.no_grad():
        return torch.cat([detector(images[i:i + batch_size]).detach().float().cpu()
                          for i in range(0, images.shape[0], batch_size)])


class EnsembleDetector(nn.Module):
    """max_i (s_i - t_i) / scale_i over the members; t_i accepts 1 - fpr / k of IND (union bound: the
    ensemble's false-positive rate is at most fpr), scale_i the IND spread of member i.

    `calibrate(ind_images, fpr)` on held-out IND patches; a score > 0 is flagged at that rate. An
    nn.Module so that `OODAttack` guards its module members (eval mode, frozen) like the network.
    """

    def __init__(self, members: Mapping[str, Callable]):
        super().__init__()
        if not members:
            raise ValueError("EnsembleDetector needs at least one member")
        self.names = list(members)
        self._members = dict(members)
        self.module_members = nn.ModuleList([m for m in members.values() if isinstance(m, nn.Module)])
        self.thresholds: list[float] | None = None
        self.scales: list[float] | None = None
        self.fpr: float | None = None
        member_heads = [heads_of(m) for m in members.values()]
        self.heads = None if any(h is None for h in member_heads) else tuple(sorted({h for hs in member_heads
                                                                                     for h in hs}))

    def calibrate(self, ind_images: torch.Tensor, fpr: float = 0.05) -> EnsembleDetector:
        if not 0.0 < fpr < 1.0:
            raise ValueError(f"fpr must lie in (0, 1), got {fpr}")
        share = 1.0 - fpr / len(self.names)
        self.thresholds, self.scales = [], []
        for name in self.names:
            s = detector_scores(self._members[name], ind_images)
            t = threshold_at_tpr(s, share)
            self.thresholds.append(t)
            # robust spread: threshold minus median, so one outlying IND patch does not set the scale
            self.scales.append(max(t - float(s.median()), 1e-6))
        self.fpr = float(fpr)
        return self

    def forward(self, images: torch.Tensor, outputs: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        if self.thresholds is None:
            raise RuntimeError("EnsembleDetector called before calibrate (or load_calibration)")
        parts = [(self._members[n](images, outputs) - t) / s for n, t, s in zip(self.names, self.thresholds,
                                                                                   self.scales)]
        return torch.stack(parts, 0).max(0).values

    def score(self, images: torch.Tensor, outputs: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        return self(images, outputs)

    def save_calibration(self, path: str | Path) -> Path:
        if self.thresholds is None:
            raise RuntimeError("EnsembleDetector: nothing to save before calibrate")
        return write_npz(path, {"format": _ENSEMBLE_FORMAT, "names": np.asarray(self.names),
                                 "thresholds": np.asarray(self.thresholds), "scales": np.asarray(self.scales),
                                 "fpr": np.float64(self.fpr)})

    def load_calibration(self, path: str | Path) -> EnsembleDetector:
        state = read_npz(path)
        check_state(state, {"format", "names", "thresholds", "scales", "fpr"}, _ENSEMBLE_FORMAT, str(path))
        names = [str(n) for n in np.asarray(state["names"]).ravel()]
        if names != self.names:
            raise DataError(str(path), f"calibrated for members {names}, this ensemble has {self.names}")
        self.thresholds = [float(v) for v in np.asarray(state["thresholds"]).ravel()]
        self.scales = [float(v) for v in np.asarray(state["scales"]).ravel()]
        self.fpr = float(state["fpr"])
        return self


class DetectorHinge(nn.Module):
    """The attack's detector term for "fooled and undetected": relu((score - threshold) / scale + margin).

    Zero once the score is `margin` scales below the threshold, so a large weight does not drag the
    image further from the target than passing the detector needs. An nn.Module holding a module
    detector as a submodule, so `OODAttack` guards it.
    """

    def __init__(self, detector: Callable, threshold: float, scale: float = 1.0, margin: float = 0.1):
        super().__init__()
        if not (math.isfinite(threshold) and scale > 0 and margin >= 0):
            raise ValueError(f"DetectorHinge needs a finite threshold, scale > 0 and margin >= 0, got "
                             f"{threshold}, {scale}, {margin}")
        self.detector = detector
        self.threshold, self.scale, self.margin = float(threshold), float(scale), float(margin)
        self.heads = heads_of(detector)

    def forward(self, images: torch.Tensor, outputs: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        return F.relu((self.detector(images, outputs) - self.threshold) / self.scale + self.margin)

"""Baselines that every robustness table needs next to PGD, as per-sample rows of the sweep's format.

- The constant mean-shape predictor: always answers the mean training shape (patch px), whatever
  the image. An attacked network whose error exceeds this one's is worse than not looking at the
  image at all.
- Uniform noise of the same budget: the test images plus a random draw from the attack's ball
  (L-inf: U[-eps, eps] per pixel, as the `rand` training method draws it; L2: uniform in the ball,
  which in thousands of dimensions lies at radius ~eps), clipped to [0, 1]. PGD must beat this by
  far to call its result an attack rather than noise.

Rows carry the columns of `ROW_COLUMNS` (`diskrobust.robustness.results`) with sweep "baseline",
attack "mean_shape" / "uniform_linf" / "uniform_l2", head "none" (nothing is attacked) and
reference "truth", so `results.aggregate` turns them into curves like any other sweep. The test set
is any object with `images` (N, 1, H, W), `points` (N, P, 2), `mask` (N, 1, H, W), `subjects`,
`levels` and `spacing_mm` (the sweep's `TestSet`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from diskrobust import metrics

__all__ = ["BASELINE_SWEEP", "NOISE_NORMS", "mean_shape", "mean_shape_rows", "uniform_noise_rows",
           "noise_delta", "baseline_markdown", "mean_shape_baseline"]

BASELINE_SWEEP = "baseline"
NOISE_NORMS = ("linf", "l2")


def _check_test(test) -> None:
    for name in ("images", "points", "mask", "subjects", "levels", "spacing_mm"):
        if not hasattr(test, name):
            raise TypeError(f"the test set needs attribute {name!r} (a robustness TestSet), got {type(test).__name__}")
    n = test.images.shape[0]
    if n == 0:
        raise ValueError("the test set is empty")
    if test.points.shape[0] != n or test.mask.shape[0] != n:
        raise ValueError(f"test set: {n} images but {test.points.shape[0]} contours and {test.mask.shape[0]} masks")


def mean_shape(training_points) -> np.ndarray:
    """The mean training shape (P, 2) from training contours (N, P, 2) in patch px (or `ShapePCA.mean`)."""
    pts = np.asarray(training_points, dtype=np.float64)
    if pts.ndim == 2 and pts.shape[1] == 2:
        return pts
    if pts.ndim != 3 or pts.shape[-1] != 2 or pts.shape[0] == 0:
        raise ValueError(f"training contours must be (N, P, 2) or a mean shape (P, 2), got {pts.shape}")
    return pts.mean(0)


def _row(test, i: int, attack: str, norm: str, eps: float, err_px: float, err_mm: float, poly: float, seg: float,
         linf: float, l2: float) -> dict:
    return {"sample_id": int(i), "subject": test.subjects[i], "level": test.levels[i], "sweep": BASELINE_SWEEP,
            "attack": attack, "norm": norm, "head": "none", "eps": float(eps),
            # eps_rms: an L2 budget per pixel, as the sweep's rows give it (ROW_COLUMNS)
            "eps_rms": float(eps) / math.sqrt(test.images.shape[-2] * test.images.shape[-1]) if norm == "l2"
            else float("nan"), "steps": 0, "reference": "truth",
            "point_error_px": float(err_px), "point_error_mm": float(err_mm), "polygon_dice": float(poly),
            "seg_dice": float(seg), "attack_loss": float("nan"), "delta_linf": float(linf), "delta_l2": float(l2),
            "member": ""}


def mean_shape_rows(test, mean_points) -> list[dict]:
    """One row per test sample: the constant prediction `mean_points` (P, 2) against the true contour.

    Its filled polygon is also its segmentation, so polygon_dice and seg_dice are the same Dice.
    """
    _check_test(test)
    mean_points = mean_shape(mean_points)
    truth = torch.as_tensor(test.points, dtype=torch.float32)
    if tuple(mean_points.shape) != tuple(truth.shape[1:]):
        raise ValueError(f"the mean shape has {mean_points.shape} points but the test contours {tuple(truth.shape[1:])}: "
                         "was it fitted in this patch geometry?")
    pred = torch.as_tensor(mean_points, dtype=torch.float32)[None].expand_as(truth).contiguous()
    err_px = metrics.mean_point_distance(pred, truth).numpy()
    s = float(test.spacing_mm)
    err_mm = metrics.mean_point_distance(pred, truth, spacing_mm=(s, s)).numpy()
    dice = metrics.polygon_dice(pred, torch.as_tensor(test.mask, dtype=torch.float32)).numpy()
    return [_row(test, i, "mean_shape", "none", 0.0, err_px[i], err_mm[i], dice[i], dice[i], 0.0, 0.0)
            for i in range(len(err_px))]


def noise_delta(shape: Sequence[int], eps: float, norm: str, generator: torch.Generator) -> torch.Tensor:
    """A uniform draw from the eps-ball of `norm` (the PGD random start's distribution), shape (B, C, H, W)."""
    from diskrobust.attacks.pgd import random_start

    if norm not in NOISE_NORMS:
        raise ValueError(f"norm must be one of {NOISE_NORMS}, got {norm!r}")
    if not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a finite number > 0, got {eps}")
    return random_start(torch.zeros(tuple(shape)), float(eps), norm, generator)


def _seed(seed: int, norm: str, eps: float, batch: int) -> int:
    ss = np.random.SeedSequence([int(seed), NOISE_NORMS.index(norm), int(round(eps * 1e6)), int(batch)])
    return int(ss.generate_state(1, dtype=np.uint32)[0])


@torch.no_grad()
def uniform_noise_rows(model: nn.Module, test, eps_values: Sequence[float], norm: str = "linf", seed: int = 0,
                       batch_size: int = 16) -> list[dict]:
    """Rows of the network on test images + uniform noise in the eps-ball, per eps, against the truth.

    Seeded per (seed, norm, eps, batch): the same call gives the same rows. The network runs in
    eval mode and is left in the mode it came in; delta_linf / delta_l2 are the noise actually
    added after clipping to [0, 1].
    """
    _check_test(test)
    if norm not in NOISE_NORMS:
        raise ValueError(f"norm must be one of {NOISE_NORMS}, got {norm!r}")
    eps_values = [float(e) for e in eps_values]
    if not eps_values or any(not (math.isfinite(e) and e > 0) for e in eps_values):
        raise ValueError(f"eps_values must be a non-empty list of numbers > 0, got {eps_values}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    s = float(test.spacing_mm)
    rows: list[dict] = []
    try:
        for eps in eps_values:
            for b, start in enumerate(range(0, test.images.shape[0], batch_size)):
                ids = list(range(start, min(start + batch_size, test.images.shape[0])))
                x = torch.as_tensor(test.images[ids], dtype=torch.float32)
                gen = torch.Generator().manual_seed(_seed(seed, norm, eps, b))
                noisy = (x + noise_delta(x.shape, eps, norm, gen)).clamp_(0.0, 1.0)
                out = model(noisy.to(device))
                truth = torch.as_tensor(test.points[ids], dtype=torch.float32).to(device)
                mask = torch.as_tensor(test.mask[ids], dtype=torch.float32).to(device)
                nan = np.full(len(ids), np.nan)
                err_px = err_mm = poly = seg = nan
                if "pred" in out:
                    err_px = metrics.mean_point_distance(out["pred"], truth).cpu().numpy()
                    err_mm = metrics.mean_point_distance(out["pred"], truth, spacing_mm=(s, s)).cpu().numpy()
                    poly = metrics.polygon_dice(out["pred"], mask).cpu().numpy()
                if "seg" in out:
                    seg = metrics.seg_dice(out["seg"], mask).cpu().numpy()
                flat = (noisy - x).flatten(1)
                linf, l2 = flat.abs().amax(1).numpy(), flat.norm(dim=1).numpy()
                for j, i in enumerate(ids):
                    rows.append(_row(test, i, f"uniform_{norm}", norm, eps, err_px[j], err_mm[j], poly[j], seg[j],
                                     linf[j], l2[j]))
    finally:
        model.train(was_training)
    return rows


def baseline_markdown(ind_rows: Sequence[Mapping], baseline_rows: Sequence[Mapping], metric: str = "point_error_px",
                      attack: str = "linf", head: str = "points", digits: int = 2) -> list[str]:
    """A table of `metric` means over eps: PGD (attack, head), uniform noise of the same norm, the mean shape.

    ind_rows: the sweep's clean and IND rows (eps 0 = clean); baseline_rows: rows from this module.
    The mean-shape row is the same in every column (it never looks at the image).
    """
    def mean(rows, pred) -> float:
        vals = [float(r[metric]) for r in rows if pred(r)]
        vals = [v for v in vals if math.isfinite(v)]
        return float(np.mean(vals)) if vals else float("nan")

    norm = "linf" if attack == "linf" else "l2"
    pgd_eps = sorted({float(r["eps"]) for r in ind_rows
                      if r["sweep"] == "ind" and r["attack"] == attack and r["head"] == head})
    eps_all = [0.0] + [e for e in pgd_eps if e > 0]
    fmt = (lambda v: "n/a" if not math.isfinite(v) else f"{v:.{digits}f}")
    lines = ["| predictor | " + " | ".join(f"eps {e:g}" for e in eps_all) + " |", "|---|" + "---|" * len(eps_all)]
    clean = mean(ind_rows, lambda r: r["sweep"] == "clean")
    cells = [fmt(clean)] + [fmt(mean(ind_rows, lambda r, e=e: r["sweep"] == "ind" and r["attack"] == attack
                                     and r["head"] == head and float(r["eps"]) == e)) for e in eps_all[1:]]
    lines.append(f"| network under PGD ({attack}, {head} head) | " + " | ".join(cells) + " |")
    cells = [fmt(clean)] + [fmt(mean(baseline_rows, lambda r, e=e: r["attack"] == f"uniform_{norm}"
                                     and float(r["eps"]) == e)) for e in eps_all[1:]]
    lines.append(f"| network on uniform noise ({norm}, same eps) | " + " | ".join(cells) + " |")
    const = mean(baseline_rows, lambda r: r["attack"] == "mean_shape")
    lines.append("| constant mean training shape | " + " | ".join([fmt(const)] * len(eps_all)) + " |")
    return lines


def mean_shape_baseline(datalist, shape_pca_path, patch_size: int, patch_spacing_mm: float,
                        num_samples: int | None = None, split: str = "test") -> list[dict]:
    """`mean_shape_rows` of the mean of a trained arm's shape model (`models/shape_pca.npz`, fitted on its
    training split) on the first `num_samples` patches of `split`: the constant predictor next to that arm."""
    from diskrobust.datasets import DiskPatchDataset
    from diskrobust.robustness.testset import load_test_set
    from diskrobust.transforms.shape_augment import ShapePCA

    pca = ShapePCA.load(shape_pca_path)
    test = load_test_set(DiskPatchDataset(str(datalist), split, patch_size=patch_size,
                                          patch_spacing_mm=patch_spacing_mm), num_samples)
    return mean_shape_rows(test, pca.mean)

"""OOD robustness as a budget: the smallest L2 perturbation with which the OOD attack makes an
unrelated start image (noise, a photograph) produce a target disk shape.

A fixed large budget says little (an L2 of 40 on 64 x 64 patches is an RMS of 0.63 per pixel: the
"attacked" image is noise); the budget the attack needs says a lot. Per target, a bisection over the
budget finds where `diskrobust.attacks.OODAttack` starts to succeed, i.e. brings the network's
output within a stated tolerance of the target (`Tolerance`: mean point distance <= 1 px and, where
the network has a segmentation head and the target a mask, seg Dice >= 0.8).

Budgets are per pixel: an RMS r means an absolute L2 radius of r * sqrt(H * W) on H x W patches
(`rms_to_l2`), so a budget means the same perturbation strength at every patch size; the paper's
"L2 40 at 128 x 128" is `l2_to_rms(40, (128, 128))` = 0.3125. Rows report both.

The bisection assumes success is monotone in the budget (a larger ball holds the smaller one's
solution), which the optimiser does not always honour: from a random start far out in a large ball
it can fail where a smaller ball succeeds. Per target it checks the start image itself (budget 0:
already within tolerance?), then the largest budget `rms_max`; if that fails it halves the budget
until the attack succeeds (at most `iterations` times; a target that fails at every probed budget is
reported as needing an infinite budget, censored at rms_max), then halves [lo, hi] with the
iterations left: the needed budget lies in (rms_lo, rms_needed], a bracket of width
rms_max / 2**iterations (rms_lo: the largest budget at which the attack failed below rms_needed). Run it once from
the unperturbed start (`random_start=False`: the attack's first iterate is the start image) and
once with the attack's random start inside the ball, and compare.

Rows (`BUDGET_COLUMNS`), one per target: the needed budget, whether it was reached, the
start-image distance (the output on the unperturbed start vs the target, which says how far the
network's answer on a non-spine image already is from a real disk's), and the output's distance
and Dice at the needed budget. `success_curve` turns them into the fraction of targets reached
at each budget.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from diskrobust import metrics

__all__ = ["Tolerance", "BUDGET_COLUMNS", "JOINT_COLUMNS", "rms_to_l2", "l2_to_rms", "measure", "minimal_ood_budget",
           "success_curve", "budget_summary", "budget_ratio", "detector_budget_comparison", "budget_markdown",
           "finding_rows", "OodBudgetConfig", "START_KINDS", "start_images", "run_ood_budget", "straight_line_budget"]

START_KINDS = ("uniform_noise", "box_noise", "natural")

BUDGET_COLUMNS = (
    "sample_id", "start", "random_start", "reached", "rms_needed", "rms_lo", "l2_needed", "rms_max", "l2_max",
    "iterations", "steps", "start_point_distance_px", "start_seg_dice", "point_distance_px", "seg_dice",
    "delta_l2", "delta_rms",
)

# with a detector: its score on the start image and at the needed budget, the weight that got there
# (nan at budget 0 or when not reached: the last weight tried), and the threshold
JOINT_COLUMNS = ("start_detector_score", "detector_score", "detector_weight", "threshold")


@dataclass(frozen=True)
class Tolerance:
    """When the output counts as the target: mean point distance <= max_point_distance_px and, when
    both the network's seg head and a target mask exist, seg Dice >= min_seg_dice (None: not checked)."""

    max_point_distance_px: float | None = 1.0
    min_seg_dice: float | None = 0.8

    def __post_init__(self):
        if self.max_point_distance_px is None and self.min_seg_dice is None:
            raise ValueError("the tolerance needs a point distance, a seg Dice or both")
        if self.max_point_distance_px is not None and not self.max_point_distance_px >= 0:
            raise ValueError(f"max_point_distance_px must be >= 0, got {self.max_point_distance_px}")
        if self.min_seg_dice is not None and not 0 <= self.min_seg_dice <= 1:
            raise ValueError(f"min_seg_dice must lie in [0, 1], got {self.min_seg_dice}")

    def text(self) -> str:
        parts = []
        if self.max_point_distance_px is not None:
            parts.append(f"mean point distance <= {self.max_point_distance_px:g} px")
        if self.min_seg_dice is not None:
            parts.append(f"seg Dice >= {self.min_seg_dice:g}")
        return " and ".join(parts)


def _pixels(shape: Sequence[int]) -> int:
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise ValueError(f"give the image shape as (H, W) or (C, H, W), got {shape}")
    return int(np.prod(shape))


def rms_to_l2(rms: float, shape: Sequence[int]) -> float:
    """Absolute L2 radius of a per-pixel RMS budget on images of `shape` ((H, W) or (C, H, W)): rms * sqrt(pixels)."""
    if not (math.isfinite(rms) and rms >= 0):
        raise ValueError(f"an RMS budget must be a finite number >= 0, got {rms}")
    return float(rms * math.sqrt(_pixels(shape)))


def l2_to_rms(l2: float, shape: Sequence[int]) -> float:
    """Per-pixel RMS of an absolute L2 radius on images of `shape`: l2 / sqrt(pixels)."""
    if not (math.isfinite(l2) and l2 >= 0):
        raise ValueError(f"an L2 budget must be a finite number >= 0, got {l2}")
    return float(l2 / math.sqrt(_pixels(shape)))


@torch.no_grad()
def measure(model: nn.Module, images: torch.Tensor, targets: Mapping[str, torch.Tensor],
            tolerance: Tolerance) -> dict[str, np.ndarray]:
    """The network's output on `images` vs `targets`: point distance (px), seg Dice, and success (B,).

    Criteria whose output or target is missing are skipped; if none applies, ValueError.
    """
    out = model(images)
    b = images.shape[0]
    dist = np.full(b, np.nan)
    dice = np.full(b, np.nan)
    ok = np.ones(b, dtype=bool)
    used = False
    if "pred" in out and "points" in targets:
        dist = metrics.mean_point_distance(out["pred"], targets["points"].to(out["pred"])).cpu().numpy().astype(float)
        if tolerance.max_point_distance_px is not None:
            ok &= dist <= tolerance.max_point_distance_px
            used = True
    if "seg" in out and "mask" in targets:
        dice = metrics.seg_dice(out["seg"], targets["mask"].to(out["seg"])).cpu().numpy().astype(float)
        if tolerance.min_seg_dice is not None:
            ok &= dice >= tolerance.min_seg_dice
            used = True
    if not used:
        raise ValueError(f"tolerance ({tolerance.text()}) applies to none of the network outputs {sorted(out)} "
                         f"with targets {sorted(targets)}")
    return {"point_distance_px": dist, "seg_dice": dice, "success": ok}


def _seed(seed: int, sample: int, step: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(sample), int(step)]).generate_state(1, dtype=np.uint32)[0] >> 1)


def minimal_ood_budget(model: nn.Module, start_images: torch.Tensor, targets: Mapping[str, torch.Tensor],
                       tolerance: Tolerance = Tolerance(), rms_max: float = 0.5, iterations: int = 7,
                       steps: int = 200, lr: float = 0.01, optimizer: str = "adamax", random_start: bool = False,
                       seed: int = 0, start: str = "", sample_ids: Sequence[int] | None = None,
                       attack_targets: Sequence[str] | None = None, detector=None, threshold: float | None = None,
                       detector_weights: Sequence[float] = (0.0, 1.0, 10.0), detector_scale: float = 1.0,
                       detector_margin: float = 0.1,
                       on_target: Callable[[int, int], None] | None = None) -> list[dict]:
    """Per target, the smallest per-pixel RMS budget at which the OOD attack succeeds (module doc).

    Args:
        model: the network (eval mode during the search; its mode is restored).
        start_images: (B, 1, H, W) in [0, 1]; targets: {"points": (B, P, 2), "mask": (B, 1, H, W)} (either).
        tolerance: when the output counts as the target.
        rms_max: the largest budget tried (per-pixel RMS); iterations: bisection halvings.
        steps, lr, optimizer: the OOD attack's settings at every budget.
        random_start: the attack's random start in the ball (False: from the unperturbed start image).
        seed: seeds each attack (per target and bisection step).
        start: the start kind, recorded in the rows; sample_ids: recorded ids (default 0..B-1).
        attack_targets: the target keys the attack optimises (default: all given).
        on_target: called as on_target(targets done, targets) after each target (a CPU run spends
            minutes per setting: the study's progress view shows this count).
        detector, threshold: with a detector (callable(images, outputs) -> (B,), higher = more OOD),
            success is joint: within tolerance AND score <= threshold ("fooled and undetected"). At each
            budget the attack is tried with every weight of `detector_weights` (0: the non-adaptive
            attack) on the detector term `DetectorHinge(detector, threshold, detector_scale,
            detector_margin)`, and the budget counts as reached if any weight succeeds: the weight is
            the attacker's choice, not the defence's.
    Returns one row per target with the columns of `BUDGET_COLUMNS` (with a detector also
    `JOINT_COLUMNS`: the score at the needed budget and the weight that reached it).
    """
    from diskrobust.attacks import OODAttack

    x_all = torch.as_tensor(start_images)
    if x_all.ndim != 4:
        raise ValueError(f"start_images must be (B, C, H, W), got {tuple(x_all.shape)}")
    if not (math.isfinite(rms_max) and rms_max > 0):
        raise ValueError(f"rms_max must be a finite number > 0, got {rms_max}")
    if int(iterations) != iterations or iterations < 1:
        raise ValueError(f"iterations must be an integer >= 1, got {iterations}")
    keys = list(targets) if attack_targets is None else list(attack_targets)
    missing = [k for k in keys if k not in targets]
    if missing:
        raise ValueError(f"attack_targets {missing} are not among the targets {sorted(targets)}")
    b = x_all.shape[0]
    ids = list(range(b)) if sample_ids is None else [int(i) for i in sample_ids]
    if len(ids) != b:
        raise ValueError(f"{len(ids)} sample ids for {b} start images")
    if detector is not None:
        from diskrobust.defenses.ood_robust import DetectorHinge

        if threshold is None or not math.isfinite(threshold):
            raise ValueError("a detector needs a finite threshold (e.g. threshold_at_tpr on held-out IND scores)")
        if not detector_weights or any(not (math.isfinite(w) and w >= 0) for w in detector_weights):
            raise ValueError(f"detector_weights must be finite numbers >= 0, got {list(detector_weights)}")
        hinge = DetectorHinge(detector, threshold, detector_scale, detector_margin)
        weights = [float(w) for w in detector_weights]
    else:
        hinge, weights = None, [0.0]
    columns = BUDGET_COLUMNS + (JOINT_COLUMNS if detector is not None else ())
    device = next(model.parameters()).device
    shape = tuple(x_all.shape[1:])
    was_training = model.training
    model.eval()
    rows = []
    try:
        for i in range(b):
            x = x_all[i:i + 1].to(device)
            tgt = {k: torch.as_tensor(v[i:i + 1]).to(device) for k, v in targets.items()}
            calls = 0

            def judge(images: torch.Tensor, weight: float) -> dict:
                m = measure(model, images, tgt, tolerance)
                if detector is not None:
                    with torch.no_grad():
                        score = float(detector(images).reshape(-1)[0])
                    m["success"] = m["success"] & (score <= threshold)
                    m["detector_score"], m["detector_weight"] = score, weight
                return m

            def attempt(rms: float):
                nonlocal calls
                calls += 1
                for w in weights:  # the same seed for every weight: the tries differ only in the loss
                    attack = OODAttack(model, eps=rms_to_l2(rms, shape), steps=steps, lr=lr, optimizer=optimizer,
                                       random_start=random_start, seed=_seed(seed, ids[i], calls), progress=False,
                                       detector=hinge if w > 0 else None, detector_weight=w)
                    res = attack(x, {k: tgt[k] for k in keys})
                    m = judge(res.images, w)
                    if m["success"][0]:
                        break
                return res.images, m

            m0 = judge(x, math.nan)
            row = {"sample_id": ids[i], "start": start, "random_start": bool(random_start), "rms_max": float(rms_max),
                   "l2_max": rms_to_l2(rms_max, shape), "iterations": int(iterations), "steps": int(steps),
                   "start_point_distance_px": float(m0["point_distance_px"][0]),
                   "start_seg_dice": float(m0["seg_dice"][0])}
            if m0["success"][0]:
                best, lo, hi, m_hi = x, 0.0, 0.0, m0
            else:
                best, m_hi = at_max = attempt(rms_max)
                lo, hi, left = 0.0, float(rms_max), int(iterations)
                # A failure at rms_max may be the optimiser's, not the budget's (a random start far out in a
                # large ball is harder to bring back than a small ball's: seen on the phantom). Halve down
                # until the attack succeeds; only a target that fails at every probed budget is censored.
                while not m_hi["success"][0] and left > 0:
                    hi, left = 0.5 * hi, left - 1
                    best, m_hi = attempt(hi)
                if not m_hi["success"][0]:  # censored: the row shows how close the largest budget came
                    (best, m_hi), lo, hi = at_max, float(rms_max), math.inf
                else:
                    for _ in range(left):
                        mid = 0.5 * (lo + hi)
                        adv, m = attempt(mid)
                        if m["success"][0]:
                            best, hi, m_hi = adv, mid, m
                        else:
                            lo = mid
            delta = (best - x).flatten(1).norm(dim=1).item()
            row.update(reached=math.isfinite(hi), rms_needed=hi, rms_lo=lo,
                       l2_needed=rms_to_l2(hi, shape) if math.isfinite(hi) else math.inf,
                       point_distance_px=float(m_hi["point_distance_px"][0]), seg_dice=float(m_hi["seg_dice"][0]),
                       delta_l2=float(delta), delta_rms=l2_to_rms(delta, shape))
            if detector is not None:
                row.update(start_detector_score=m0["detector_score"], detector_score=m_hi["detector_score"],
                           detector_weight=m_hi["detector_weight"], threshold=float(threshold))
            rows.append({k: row[k] for k in columns})
            if on_target is not None:
                on_target(i + 1, b)
    finally:
        model.train(was_training)
    return rows


def success_curve(rows: Sequence[Mapping], budgets_rms: Sequence[float]) -> list[float]:
    """Fraction of targets whose needed budget is <= each budget (a target never reached counts as failed)."""
    if not rows:
        raise ValueError("no budget rows")
    needed = np.array([float(r["rms_needed"]) for r in rows])
    return [float(np.mean(needed <= float(b))) for b in budgets_rms]


def budget_summary(rows: Sequence[Mapping]) -> dict:
    """Median and quartiles of the needed RMS (inf where not reached), fraction reached, start distance."""
    if not rows:
        raise ValueError("no budget rows")
    needed = np.array([float(r["rms_needed"]) for r in rows])
    start = np.array([float(r["start_point_distance_px"]) for r in rows])
    # not reached sorts last: a median is finite iff more than half reached. (Interpolating with inf
    # itself gives nan, so quantiles run on a stand-in above rms_max, and anything above it is inf.)
    cap = float(rows[0]["rms_max"])
    q = np.quantile(np.where(np.isfinite(needed), needed, 2.0 * cap + 1.0), [0.25, 0.5, 0.75])
    q25, q50, q75 = np.where(q > cap, np.inf, q)
    return {"n": len(rows), "reached": float(np.mean(np.isfinite(needed))), "rms_median": float(q50),
            "rms_q25": float(q25), "rms_q75": float(q75), "rms_max": float(rows[0]["rms_max"]),
            "start_point_distance_px_mean": float(np.nanmean(start)) if np.isfinite(start).any() else float("nan")}


def budget_markdown(summaries: Mapping[str, Mapping], shape: Sequence[int], tolerance: Tolerance) -> list[str]:
    """A table of `budget_summary` results keyed by a label (e.g. "P10-std / natural / no random start")."""
    def fmt(v: float, d: int = 3) -> str:
        return "not reached" if v == math.inf else ("n/a" if not math.isfinite(v) else f"{v:.{d}f}")

    lines = [f"Needed OOD budget until the output is within tolerance ({tolerance.text()}) of the target; "
             f"per-pixel RMS (absolute L2 on {' x '.join(str(s) for s in shape[-2:])} patches in brackets).", "",
             "| setting | targets | reached | median RMS (L2) | quartiles RMS | start-image distance (px) |",
             "|---|---|---|---|---|---|"]
    for label, s in summaries.items():
        med = s["rms_median"]
        l2 = f" ({rms_to_l2(med, shape):.2f})" if math.isfinite(med) else ""
        lines.append(f"| {label} | {s['n']} | {s['reached']:.0%} | {fmt(med)}{l2} | {fmt(s['rms_q25'])} - "
                     f"{fmt(s['rms_q75'])} | {fmt(s['start_point_distance_px_mean'], 2)} |")
    return lines


def finding_rows(rows: Sequence[Mapping]) -> list[dict]:
    """Budget rows as rows `diskrobust.study.statistics` selects from: sweep "ood_budget", attack = the
    start kind, head "from_start" / "random_start", eps 0, metrics "rms_needed" and "reached".

    A target not reached within rms_max is censored at rms_max (its true budget is larger): a mean
    over such rows is a lower bound, and a difference between arms that both hit the cap shrinks
    towards 0, so read "equivalent" verdicts together with the fraction reached.
    """
    out = []
    for r in rows:
        needed = float(r["rms_needed"])
        out.append({"sample_id": int(r["sample_id"]), "sweep": "ood_budget", "attack": r["start"],
                    "head": "random_start" if r["random_start"] else "from_start", "eps": 0.0,
                    "rms_needed": min(needed, float(r["rms_max"])), "reached": float(math.isfinite(needed))})
    return out


@dataclass
class OodBudgetConfig:
    """The "ood_budget" section of a study profile (configs/study/findings.json).

    starts: start kinds; num_targets: the first N test patches whose network outputs are the targets;
    random_start: the settings to run ([False, True]: both); curve_rms: budgets of the success curve;
    arms: arm names to run it on, or "all" (read by the runner, not here).
    """

    starts: list[str] = field(default_factory=lambda: ["uniform_noise", "natural"])
    num_targets: int = 20
    tolerance: dict = field(default_factory=lambda: {"max_point_distance_px": 1.0, "min_seg_dice": 0.8})
    rms_max: float = 0.5
    iterations: int = 6
    steps: int = 200
    lr: float = 0.01
    optimizer: str = "adamax"
    random_start: list[bool] = field(default_factory=lambda: [False, True])
    curve_rms: list[float] = field(default_factory=lambda: [0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3125, 0.5])
    arms: list[str] | str = "all"

    @classmethod
    def from_dict(cls, d: Mapping, where: str = "ood_budget") -> OodBudgetConfig:
        if not isinstance(d, Mapping):
            raise ValueError(f"{where} must be an object, got {type(d).__name__}")
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; known: {sorted(cls.__dataclass_fields__)}")
        cfg = cls(**dict(d))
        bad = [k for k in cfg.starts if k not in START_KINDS]
        if not cfg.starts or bad:
            raise ValueError(f"{where}.starts must name start kinds from {START_KINDS}, got {cfg.starts}")
        for key, minimum in (("num_targets", 1), ("iterations", 1), ("steps", 1)):
            v = getattr(cfg, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
                raise ValueError(f"{where}.{key} must be an integer >= {minimum}, got {v!r}")
        if not (isinstance(cfg.rms_max, (int, float)) and 0 < cfg.rms_max < math.inf):
            raise ValueError(f"{where}.rms_max must be a per-pixel RMS > 0, got {cfg.rms_max!r}")
        if not cfg.random_start or any(not isinstance(v, bool) for v in cfg.random_start):
            raise ValueError(f"{where}.random_start must be a list of true/false, got {cfg.random_start!r}")
        tol = dict(cfg.tolerance)
        unknown = sorted(set(tol) - {"max_point_distance_px", "min_seg_dice"})
        if unknown:
            raise ValueError(f"{where}.tolerance: unknown key(s) {unknown}")
        Tolerance(**tol)  # validates
        return cfg

    @property
    def tol(self) -> Tolerance:
        return Tolerance(**self.tolerance)


def start_images(kind: str, n: int, size: tuple[int, int], seed: int) -> torch.Tensor:
    """(n, 1, H, W) start images of one kind; noise seeded by (seed, kind)."""
    from diskrobust.attacks import box_noise, natural_images, uniform_noise

    if kind not in START_KINDS:
        raise ValueError(f"unknown start kind {kind!r}; choose from {START_KINDS}")
    gen = torch.Generator().manual_seed(_seed(seed, START_KINDS.index(kind), -1 % (2**31)))
    if kind == "uniform_noise":
        return uniform_noise(n, size, generator=gen)
    if kind == "box_noise":
        return box_noise(n, size, generator=gen)
    return natural_images(n, size)[0]


def run_ood_budget(model: nn.Module, test_images: torch.Tensor, config: OodBudgetConfig | Mapping,
                   seed: int = 0, on_target: Callable[[int, int], None] | None = None) -> dict:
    """The whole budget search of one model: per start kind and random-start setting, the rows, the
    summary and the success curve. Targets are the network's own outputs on the first
    `num_targets` test images (`diskrobust.attacks.targets_from_model`), as in the OOD sweep.

    Returns {"rows": [...], "summaries": {label: summary}, "curves": {label: [fractions]},
    "curve_rms": [...], "tolerance": text, "shape": (H, W)} with label "<start> / <from start|random start>".
    """
    from diskrobust.attacks import targets_from_model

    cfg = config if isinstance(config, OodBudgetConfig) else OodBudgetConfig.from_dict(config)
    images = torch.as_tensor(test_images)[: cfg.num_targets]
    device = next(model.parameters()).device
    targets = {k: v.cpu() for k, v in targets_from_model(model, images.to(device)).items()}
    size = tuple(images.shape[-2:])
    rows, summaries, curves = [], {}, {}
    for kind in cfg.starts:
        starts = start_images(kind, images.shape[0], size, seed)
        for rs in cfg.random_start:
            got = minimal_ood_budget(model, starts, targets, cfg.tol, cfg.rms_max, cfg.iterations, cfg.steps, cfg.lr,
                                     cfg.optimizer, rs, seed, kind, on_target=on_target)
            label = f"{kind} / {'random start' if rs else 'from start'}"
            rows += got
            summaries[label] = budget_summary(got)
            curves[label] = success_curve(got, cfg.curve_rms)
    return {"rows": rows, "summaries": summaries, "curves": curves, "curve_rms": list(cfg.curve_rms),
            "tolerance": cfg.tol.text(), "shape": size}


def budget_ratio(defended: Mapping, undefended: Mapping) -> float:
    """Median needed budget with the defence over without (two `budget_summary` results).

    inf when the defended median was not reached within rms_max (then the true ratio is at least
    rms_max / undefended median: `ratio_lower_bound`), nan when the undefended median is 0 or not reached.
    """
    base, got = float(undefended["rms_median"]), float(defended["rms_median"])
    if not math.isfinite(base) or base <= 0:
        return math.nan
    return got / base


def detector_budget_comparison(model: nn.Module, detectors: Mapping[str, tuple], starts: Mapping[str, torch.Tensor],
                               targets: Mapping[str, torch.Tensor], tolerance: Tolerance = Tolerance(),
                               rms_max: float = 0.5, iterations: int = 6, steps: int = 200, lr: float = 0.01,
                               detector_weights: Sequence[float] = (0.0, 1.0, 10.0), seed: int = 0,
                               curve_rms: Sequence[float] = (0.0, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5),
                               log=None) -> dict:
    """The OOD budget the attack needs without a detector ("fooled") and against each detector ("fooled
    and undetected", adaptive: `minimal_ood_budget` with the detector, its threshold and its scale).

    Args:
        detectors: {name: (detector, threshold, scale)}: the score callable, the threshold at the wanted
            false-positive rate (from held-out IND scores) and the IND spread that normalises the
            attack's detector term (so one set of weights suits every detector).
        starts: {kind: (n, 1, H, W)} start images; targets: {"points": (n, P, 2), "mask": ...}, the i-th
            start of every kind aims at target i.
    Returns {"rows": [...] (each with "detector": name or "none"), "summaries": {name: {kind: summary}}
    (also "none (any attack)": per target the least budget at which any arm fooled the network),
    "ratios": {name: {kind: median ratio vs "none (any attack)"}}, "ratio_lower_bounds": {name: {kind}}, "curves":
    {name: {kind: [fraction reached at each curve_rms]}}, "curve_rms", "tolerance"}.
    """
    arms = {"none": None, **detectors}
    rows, summaries, curves = [], {}, {}
    for name, spec in arms.items():
        summaries[name], curves[name] = {}, {}
        for kind, x in starts.items():
            kw = {}
            if spec is not None:
                det, thr, scale = spec
                kw = dict(detector=det, threshold=float(thr), detector_scale=float(scale),
                          detector_weights=detector_weights)
            got = minimal_ood_budget(model, x, targets, tolerance, rms_max, iterations, steps, lr, seed=seed,
                                     start=kind, **kw)
            for r in got:
                r["detector"] = name
            rows += got
            summaries[name][kind] = budget_summary(got)
            curves[name][kind] = success_curve(got, curve_rms)
            if log is not None:
                s = summaries[name][kind]
                log(f"{name} / {kind}: median RMS {s['rms_median']:.4f}, reached {s['reached']:.0%}")
    # fooled and undetected implies fooled: where an attack with a detector term fooled the network
    # at a budget the plain attack missed (its success need not be monotone in the budget), that
    # budget is the undefended one too; the ratios divide by this tighter baseline
    base_rows = {}
    for r in rows:
        key = (r["start"], r["sample_id"])
        if key not in base_rows or float(r["rms_needed"]) < float(base_rows[key]["rms_needed"]):
            base_rows[key] = {**r, "detector": "none (any attack)"}
    summaries["none (any attack)"] = {kind: budget_summary([v for (k, _), v in base_rows.items() if k == kind])
                                      for kind in starts}
    ratios, bounds = {}, {}
    for name in detectors:
        ratios[name], bounds[name] = {}, {}
        for kind in starts:
            ratios[name][kind] = budget_ratio(summaries[name][kind], summaries["none (any attack)"][kind])
            base = summaries["none (any attack)"][kind]["rms_median"]
            bounds[name][kind] = rms_max / base if math.isfinite(base) and base > 0 else math.nan
    return {"rows": rows, "summaries": summaries, "ratios": ratios, "ratio_lower_bounds": bounds, "curves": curves,
            "curve_rms": [float(b) for b in curve_rms], "tolerance": tolerance.text()}


@torch.no_grad()
def straight_line_budget(model: nn.Module, start_images: torch.Tensor, source_images: torch.Tensor,
                         targets: Mapping[str, torch.Tensor], tolerance: Tolerance = Tolerance(), detector=None,
                         threshold: float | None = None, points: int = 64) -> np.ndarray:
    """Per start, the RMS budget of the cheapest point on the straight line from the start image to the
    IND patch the target came from that is within tolerance (and, with a detector, scores <= threshold).

    A gradient-free attack that knows the detector only through its threshold: x + t (p - x) for t on a
    grid of `points` steps in (0, 1]; at t = 1 the image *is* the source patch, so a target whose own
    patch the detector accepts is always reached, at most at RMS ||p - x||. It upper-bounds the
    needed budget where a gradient attack stalls (e.g. on a detector term that is hard to descend).
    Returns (B,) needed RMS, inf where no point on the line succeeds.
    """
    x = torch.as_tensor(start_images)
    p = torch.as_tensor(source_images).to(x)
    if x.shape != p.shape:
        raise ValueError(f"start images {tuple(x.shape)} and source images {tuple(p.shape)} differ in shape")
    if detector is not None and (threshold is None or not math.isfinite(threshold)):
        raise ValueError("a detector needs a finite threshold")
    device = next(model.parameters()).device
    ts = torch.linspace(0.0, 1.0, int(points) + 1)
    out = np.full(x.shape[0], math.inf)
    pixels = x[0].numel()
    for i in range(x.shape[0]):
        line = (x[i:i + 1] + ts.view(-1, 1, 1, 1) * (p[i:i + 1] - x[i:i + 1])).to(device)
        tgt = {k: torch.as_tensor(v[i:i + 1]).to(device).expand(len(ts), *v.shape[1:]) for k, v in targets.items()}
        ok = measure(model, line, tgt, tolerance)["success"]
        if detector is not None:
            ok &= detector(line).reshape(-1).cpu().numpy() <= threshold
        hits = np.flatnonzero(ok)
        if hits.size:
            out[i] = float(ts[hits[0]]) * float((p[i] - x[i]).norm()) / math.sqrt(pixels)
    return out

"""A sweep as units of work, each cached on disk with a fingerprint, and the sweep's event log.

One unit is one (sweep, attack, head, budget); its rows are saved as soon as it is done to
`<output_dir>/units/<sweep>/<attack>/<head>/eps<budget>.json` with a fingerprint of everything that
determines them: the model's weight digest, the test data's digest, the seed, the batch size and
every attack parameter of the unit (budget in both forms, steps, step size, update, restarts, ...).
A re-run reuses a unit only when its file and fingerprint match, so an interrupted sweep resumes
where it stopped, and changed data, weights or settings recompute what they affect.

Unit keys and seeds use the absolute budget (`eps`, the L2 radius for L2 attacks), so a unit gives
the same numbers whether it runs first, last or in a resumed run.
"""

from __future__ import annotations

import hashlib
import json
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diskrobust.robustness import results
from diskrobust.robustness.config import IND_ATTACKS, SweepConfig, absolute_l2
from diskrobust.robustness.tensorboard import eps_tag

__all__ = ["AUDIT_ROLES", "Unit", "audited_attack", "ind_unit", "plan_audit_units", "plan_units", "derive_seed",
           "unit_fingerprint", "load_unit", "unit_summary", "EventLog"]


def derive_seed(seed: int, name: str) -> int:
    """A seed for one unit from the run's seed and the unit's name (order-independent, resumable)."""
    return (int(seed) * 1_000_003 + zlib.crc32(name.encode())) % (2**31 - 1)


@dataclass
class Unit:
    """One unit of work. eps: the absolute budget in the attack's norm (L-inf radius, or L2 radius);
    eps_rms: the per-pixel RMS of an L2 budget (None for L-inf and the clean unit)."""

    sweep: str
    attack: str
    norm: str
    head: str
    eps: float
    steps: int
    params: dict
    eps_rms: float | None = None

    @property
    def key(self) -> str:
        if self.sweep == "clean":
            return "clean"
        return f"{self.sweep}/{self.attack}/{self.head}/{eps_tag(self.eps)}"

    @property
    def prefix(self) -> str:
        return f"{self.sweep}/{self.attack}/{self.head}"


def ind_unit(cfg: SweepConfig, attack: str, head: str, budget: float, image_size: Sequence[int],
             sweep: str = "ind", **changes) -> Unit:
    """One IND unit of `attack` on `head` at `budget` (per pixel; L2 as an RMS), its parameters changed by
    `changes` (the audit's more steps / restarts): the one place an IND attack's parameters are written."""
    norm = IND_ATTACKS[attack]
    rms = budget if norm == "l2" else None
    eps = absolute_l2(budget, image_size) if norm == "l2" else budget
    if attack.startswith("autoattack"):  # parameter-free: APGD picks its own step sizes
        params = {"steps": cfg.ind.steps, "restarts": cfg.ind.restarts, "queries": cfg.ind.queries,
                  "eps": eps, "eps_rms": rms, "norm": norm}
    else:
        params = {"steps": cfg.ind.steps, "step_size": eps * cfg.ind.step_ratio,
                  "update": cfg.ind.update, "random_start": cfg.ind.random_start,
                  "restarts": cfg.ind.restarts, "point_loss": cfg.ind.point_loss, "eps": eps,
                  "eps_rms": rms, "norm": norm}
        if cfg.ind.precision != "fp32":  # absent in fp32, so that earlier runs' units stay valid
            params["precision"] = cfg.ind.precision
    params.update(changes)
    return Unit(sweep, attack, norm, head, eps, params["steps"], params, rms)


def plan_units(cfg: SweepConfig, image_size: Sequence[int]) -> list[Unit]:
    """The units of a sweep in run order: clean, IND (attack, head, eps), OOD (start, head, eps incl. 0).

    image_size (H, W) turns the per-pixel L2 budgets into the absolute radii the attacks use.
    """
    units = [Unit("clean", "none", "none", "none", 0.0, 0, {})]
    if cfg.ind.enabled:
        for attack in cfg.ind.attacks:
            for head in cfg.ind.heads:
                if attack.startswith("autoattack") and head == "both":
                    continue  # the ensemble's "points" criterion already runs APGD on both heads as a member
                units += [ind_unit(cfg, attack, head, budget, image_size) for budget in cfg.ind.eps[attack]]
    if cfg.ood.enabled:
        for start in cfg.ood.starts:
            for head in cfg.ood.heads:
                for rms in [0.0] + cfg.ood.eps_rms:
                    eps = absolute_l2(rms, image_size)
                    steps = cfg.ood.steps if eps > 0 else 0
                    params = {"steps": steps, "lr": cfg.ood.lr, "optimizer": cfg.ood.optimizer,
                              "random_start": cfg.ood.random_start, "num_samples": cfg.ood.num_samples,
                              "eps": eps, "eps_rms": rms}
                    units.append(Unit("ood", start, "l2", head, eps, steps, params, rms))
    return units


# The audit's roles (a unit's `attack` in sweep "audit", the `audit_role` of its rows), in run order.
AUDIT_ROLES = ("noise", "query", "more_steps", "more_restarts", "unbounded", "trivial", "transfer")


def audited_attack(cfg: SweepConfig) -> str | None:
    """The IND attack the audit judges (the one `sweep_audit` takes as white-box), None when it has nothing
    to judge: no IND sweep, or no point head attacked (the audit's metric is the point error)."""
    from diskrobust.robustness.sweep_audit import white_box_attack

    if not (cfg.ind.enabled and "points" in cfg.ind.heads):
        return None
    return white_box_attack(cfg.ind.attacks)


def plan_audit_units(cfg: SweepConfig, image_size: Sequence[int], surrogate_digest: str | None = None) -> list[Unit]:
    """The gradient-masking audit's units (sweep "audit", attack = its role, see `AUDIT_ROLES`) for the
    white-box attack on the point head at its eps grid, on the first `audit#num_samples` test patches.

    surrogate_digest: the weights digest of the surrogate network (transfer units only with one); it is
    part of those units' fingerprint, so another surrogate recomputes them.
    """
    a = cfg.audit
    attack = audited_attack(cfg)
    if not a.enabled or attack is None:
        return []
    n = {"num_samples": a.num_samples, "audited": attack}
    norm = IND_ATTACKS[attack]
    units = []
    for budget in cfg.ind.eps[attack]:
        base = ind_unit(cfg, attack, "points", budget, image_size, sweep="audit", **n)
        eps, rms = base.eps, base.eps_rms
        units += [
            Unit("audit", "noise", norm, "none", eps, 0, {**n, "draws": a.noise_draws, "eps": eps, "norm": norm}, rms),
            Unit("audit", "query", norm, "points", eps, a.queries,
                 {**n, "queries": a.queries, "eps": eps, "norm": norm}, rms),
            ind_unit(cfg, attack, "points", budget, image_size, sweep="audit", **n,
                     steps=cfg.ind.steps * a.steps_factor),
            ind_unit(cfg, attack, "points", budget, image_size, sweep="audit", **n,
                     restarts=cfg.ind.restarts * a.restarts_factor),
        ]
        units[-2].attack, units[-1].attack = "more_steps", "more_restarts"
        if surrogate_digest is not None:
            units.append(ind_unit(cfg, attack, "points", budget, image_size, sweep="audit", **n,
                                  surrogate=surrogate_digest))
            units[-1].attack = "transfer"
    if a.unbounded and norm == "linf":
        units.append(ind_unit(cfg, attack, "points", 1.0, image_size, sweep="audit", **n))
        units[-1].attack = "unbounded"
        units.append(Unit("audit", "trivial", "linf", "none", 1.0, 0, {**n, "eps": 1.0, "norm": "linf"}))
    order = {role: i for i, role in enumerate(AUDIT_ROLES)}
    return sorted(units, key=lambda u: (order[u.attack], u.eps))


def unit_fingerprint(base: Mapping, unit: Unit) -> str:
    """The unit's cache key: `base` (model digest, data digest, seed, sizes) + its name and parameters."""
    return hashlib.sha256(json.dumps({**base, "unit": unit.key, "params": unit.params},
                                     sort_keys=True).encode()).hexdigest()[:16]


def unit_summary(rows: Sequence[Mapping], tolerance_px: float) -> dict[str, float]:
    """Scalars of one unit for TensorBoard and the log."""
    def col(k):
        return np.array([float(r[k]) for r in rows], dtype=float)

    err = col("point_error_px")
    ok = np.isfinite(err)
    out = {}
    if ok.any():
        out.update(point_error_px_mean=float(err[ok].mean()), point_error_px_median=float(np.median(err[ok])),
                   point_error_px_p95=float(np.percentile(err[ok], 95)),
                   point_error_mm_mean=float(np.nanmean(col("point_error_mm"))),
                   within_tolerance=float(np.mean(err <= tolerance_px)))
    for k in ("polygon_dice", "seg_dice"):
        v = col(k)
        if np.isfinite(v).any():
            out[f"{k}_mean"] = float(np.nanmean(v))
    return out


def load_unit(path: Path, fingerprint: str) -> list[dict] | None:
    """The rows of a finished unit, or None when the file is absent, unreadable or from other settings."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if data.get("fingerprint") != fingerprint:
        return None
    rows = data.get("rows")
    if not isinstance(rows, list):
        return None
    for r in rows:  # strict JSON stored NaN as null
        for k in (*results.METRICS, "attack_loss", "eps_rms"):
            if r.get(k) is None:
                r[k] = float("nan")
    return rows


class EventLog:
    """`sweep.log` in the output folder: one JSON line per unit computed or reused (what resume tests read)."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, **event) -> None:
        event = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), **event}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(event) + "\n")


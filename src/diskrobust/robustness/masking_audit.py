"""A gradient-masking audit computed from a sweep's own results (Carlini et al. 2019; Tramer et al. 2020).

A defence that only hides its gradients looks robust to a gradient attack and to nothing else. Each
check below compares numbers the sweep already has, and says pass / warn / fail with those numbers:

    monotone_in_eps    the white-box error does not fall as the budget grows
    white_vs_query     white-box >= the query-based attack (Square) at the same budget
    query_vs_noise     query-based >= random noise of the same budget
    white_vs_noise     white-box >= random noise of the same budget
    more_steps         more steps do not lower the white-box error (and, warn: raise it a lot = not converged)
    more_restarts      the same for more restarts
    unbounded_budget   at L-inf eps = 1 (any image is reachable) the white-box error is at least that of the
                       trivially reachable images (constant images, noise): the constant-output regime
    transfer           adversarials crafted on a weaker surrogate do less harm than white-box ones

Inputs are "curves": {eps: errors}, the errors either one float (a mean) or per-sample values in a fixed
sample order (then "beyond noise" uses the paired standard error). Larger = worse for the network (a
point error); pass `higher_is_worse=False` for a Dice. A check whose inputs are missing is "skipped".
Pure functions: nothing here runs a network.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

__all__ = ["AuditItem", "Tolerance", "audit", "curves_from_rows", "overall_status", "to_json", "to_markdown"]

Curve = Mapping[float, "float | Sequence[float] | np.ndarray"]
STATUS_ORDER = ("pass", "skipped", "warn", "fail")


@dataclass
class AuditItem:
    """One check: name, status ("pass" | "warn" | "fail" | "skipped"), a sentence, and its numbers."""

    name: str
    status: str
    message: str
    numbers: dict = field(default_factory=dict)


@dataclass
class Tolerance:
    """What "beyond noise" means: a difference counts when it exceeds max(atol, rtol * |reference mean|,
    z * paired standard error); fail beyond `fail_factor` times that, warn in between."""

    atol: float = 1e-6
    rtol: float = 0.01
    z: float = 2.0
    fail_factor: float = 3.0
    not_converged: float = 0.05  # more steps/restarts raising the error by more than this fraction: warn


def _values(v) -> np.ndarray:
    return np.atleast_1d(np.asarray(v, dtype=float))


def _compare(a, b, tol: Tolerance) -> tuple[float, float, float]:
    """(mean a, mean b, noise level) for "a should be >= b", paired when both are per-sample of one length."""
    a, b = _values(a), _values(b)
    se = 0.0
    if a.size == b.size and a.size > 1:
        d = a - b
        se = float(np.std(d, ddof=1) / math.sqrt(d.size))
    noise = max(tol.atol, tol.rtol * abs(float(b.mean())), tol.z * se)
    return float(a.mean()), float(b.mean()), noise


def _at_least(name: str, what: str, a_name: str, b_name: str, a: Curve | None, b: Curve | None,
              tol: Tolerance, sign: float) -> AuditItem:
    """Check curve a >= curve b (in the "worse" direction) at every common eps."""
    if not a or not b:
        return AuditItem(name, "skipped", f"{what}: no {a_name if not a else b_name} results in this sweep")
    common = sorted(set(a) & set(b))
    if not common:
        return AuditItem(name, "skipped", f"{what}: {a_name} and {b_name} share no eps")
    worst, status, per_eps = None, "pass", {}
    for eps in common:
        ma, mb, noise = _compare(sign * _values(a[eps]), sign * _values(b[eps]), tol)
        margin = ma - mb
        per_eps[float(eps)] = {a_name: sign * ma, b_name: sign * mb, "margin": margin, "noise": noise}
        s = "pass" if margin >= -noise else ("warn" if margin >= -tol.fail_factor * noise else "fail")
        if STATUS_ORDER.index(s) > STATUS_ORDER.index(status):
            status = s
        if worst is None or margin / noise < worst[1]:
            worst = (float(eps), margin / noise, margin)
    eps, _, margin = worst
    message = (f"{what}: {a_name} {'>=' if status == 'pass' else 'is below'} {b_name} "
               f"(closest at eps {eps:g}: {a_name} - {b_name} = {sign * margin:+.4g})")
    return AuditItem(name, status, message, {"per_eps": per_eps})


def _monotone(curve: Curve | None, tol: Tolerance, sign: float) -> AuditItem:
    name, what = "monotone_in_eps", "white-box error non-decreasing in eps"
    if not curve or len(curve) < 2:
        return AuditItem(name, "skipped", f"{what}: fewer than two eps")
    eps = sorted(curve)
    status, per_step = "pass", {}
    worst = (None, 0.0)
    for lo, hi in zip(eps, eps[1:]):
        m_hi, m_lo, noise = _compare(sign * _values(curve[hi]), sign * _values(curve[lo]), tol)
        margin = m_hi - m_lo
        per_step[f"{lo:g}->{hi:g}"] = {"from": sign * m_lo, "to": sign * m_hi, "margin": margin, "noise": noise}
        s = "pass" if margin >= -noise else ("warn" if margin >= -tol.fail_factor * noise else "fail")
        if STATUS_ORDER.index(s) > STATUS_ORDER.index(status):
            status = s
        if margin < worst[1]:
            worst = (f"{lo:g}->{hi:g}", margin)
    message = what + (": holds" if worst[0] is None else
                      f": largest drop {sign * worst[1]:+.4g} at eps {worst[0]}")
    return AuditItem(name, status, message, {"per_step": per_step})


def _more_effort(name: str, what: str, base: Curve | None, more: Curve | None, tol: Tolerance,
                 sign: float) -> AuditItem:
    item = _at_least(name, what, "more", "base", more, base, tol, sign)
    if item.status != "pass":
        return item
    gains = {eps: v["margin"] / max(abs(v["base"]), tol.atol) for eps, v in item.numbers["per_eps"].items()}
    eps, gain = max(gains.items(), key=lambda kv: kv[1])
    if gain > tol.not_converged:
        return AuditItem(name, "warn", f"{what}: holds, but the error still rises by {100 * gain:.1f} % at eps {eps:g}"
                         " (the base attack has not converged; its number is a loose bound)", item.numbers)
    return item


def _unbounded(white_at_one, trivial: Mapping[str, object] | None, tol: Tolerance, sign: float) -> AuditItem:
    name, what = "unbounded_budget", "at L-inf eps 1 the error reaches that of trivially reachable images"
    if white_at_one is None or not trivial:
        return AuditItem(name, "skipped", f"{what}: no eps = 1 result or no reference images")
    worst_name, worst_value = max(((k, float(sign * _values(v).mean())) for k, v in trivial.items()),
                                  key=lambda kv: kv[1])
    item = _at_least(name, what, "white_box", worst_name, {1.0: white_at_one}, {1.0: trivial[worst_name]}, tol, sign)
    item.numbers["trivial"] = {k: float(_values(v).mean()) for k, v in trivial.items()}
    return item


def audit(white_box: Curve | None, *, query: Curve | None = None, noise: Curve | None = None,
          more_steps: Curve | None = None, more_restarts: Curve | None = None,
          trivial_at_unbounded: Mapping[str, object] | None = None, transfer: Curve | None = None,
          higher_is_worse: bool = True, tolerance: Tolerance | None = None) -> list[AuditItem]:
    """The audit's items in a fixed order.

    white_box: the strongest gradient attack's curve {eps: errors} (eps 1 included for the unbounded check,
        L-inf); query: Square's; noise: uniform noise of the same budget; more_steps / more_restarts: the
        white-box attack with more effort (same eps); trivial_at_unbounded: {name: errors} of images any
        eps-1 attacker reaches (constant images, noise); transfer: adversarials from a weaker surrogate.
    """
    tol = tolerance or Tolerance()
    sign = 1.0 if higher_is_worse else -1.0
    bounded = None if white_box is None else {e: v for e, v in white_box.items() if float(e) < 1.0}
    items = [
        _monotone(white_box, tol, sign),
        _at_least("white_vs_query", "white-box >= query-based", "white_box", "query", bounded, query, tol, sign),
        _at_least("query_vs_noise", "query-based >= random noise", "query", "noise", query, noise, tol, sign),
        _at_least("white_vs_noise", "white-box >= random noise", "white_box", "noise", bounded, noise, tol, sign),
        _more_effort("more_steps", "more steps do not lower the error", white_box, more_steps, tol, sign),
        _more_effort("more_restarts", "more restarts do not lower the error", white_box, more_restarts, tol, sign),
        _unbounded(None if white_box is None else white_box.get(1.0), trivial_at_unbounded, tol, sign),
        _at_least("transfer", "white-box >= transfer from a surrogate", "white_box", "transfer", bounded, transfer,
                  tol, sign),
    ]
    return items


def overall_status(items: Iterable[AuditItem]) -> str:
    """The worst status of the items ("skipped" counts as pass-with-a-gap, below "warn")."""
    return max((i.status for i in items), key=STATUS_ORDER.index, default="skipped")


def to_json(items: Sequence[AuditItem]) -> dict:
    """For aggregate.json: {"status": overall, "items": [...]}."""
    return {"status": overall_status(items), "items": [asdict(i) for i in items]}


def to_markdown(items: Sequence[AuditItem]) -> str:
    """For the top of report.md: a one-line verdict and a table of the items."""
    status = overall_status(items).upper()
    skipped = [i.name for i in items if i.status == "skipped"]
    if status == "SKIPPED" and len(skipped) < len(items):
        # every item that ran passed: say so, and name the gaps, rather than a bare "SKIPPED" that reads as
        # "the audit did not run"
        status = f"PASS, {len(skipped)} of {len(items)} skipped ({', '.join(skipped)})"
    lines = [f"**Gradient-masking audit: {status}**", "", "| check | status | finding |",
             "|---|---|---|"]
    lines += [f"| {i.name} | {i.status} | {i.message} |" for i in items]
    return "\n".join(lines)


def curves_from_rows(rows: Iterable[Mapping], metric: str = "point_error_px",
                     key: Callable[[Mapping], str] | str = "attack") -> dict[str, dict[float, np.ndarray]]:
    """Sweep rows (dicts with "eps", "sample_id" and `metric`) -> {group: {eps: values ordered by sample_id}},
    the group being row[key] (or key(row)). Feed the groups to `audit` by role."""
    groups: dict[str, dict[float, dict]] = {}
    for row in rows:
        group = key(row) if callable(key) else str(row[key])
        value = float(row[metric])
        groups.setdefault(group, {}).setdefault(float(row["eps"]), {})[row["sample_id"]] = value
    return {g: {eps: np.array([v[s] for s in sorted(v)]) for eps, v in sorted(curve.items())}
            for g, curve in groups.items()}

"""The gradient-masking audit of one sweep, from its own rows (`diskrobust.robustness.masking_audit`).

Which rows play which role:
    white-box  the strongest IND gradient attack the sweep ran on the point head (`white_box_attack`:
               autoattack_linf, else linf PGD, else the L2 ones); its clean rows are the eps 0 point, the
               audit's "unbounded" rows (the same attack at L-inf eps 1) its eps 1 point. Without a point
               head: seg Dice (lower is worse), and no audit rows.
    the rest   the audit's own rows (sweep "audit", column `audit_role`, computed by the engine when
               `audit#enabled`; `units.plan_audit_units`): "noise" (uniform noise of the same budget, the
               per-sample worst of audit#noise_draws draws), "query" (an independent Square attack from the
               clean image), "more_steps" / "more_restarts" (the white-box attack with more effort),
               "unbounded" + "trivial" (eps 1, and the constant / noise images any attacker reaches there),
               "transfer" (adversarials crafted on audit#surrogate_ckpt, scored on the network).
When audit rows exist, every curve is restricted to their samples (the first audit#num_samples test
patches), so each comparison is paired sample by sample. An item no row feeds is "skipped" with the
reason (never "pass"). The ensemble's own Square member starts from the APGD worst case, so it is never
taken as the query-based result.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from diskrobust.robustness import masking_audit

__all__ = ["AUDIT_SWEEP", "audit_json", "audit_markdown", "sweep_audit", "white_box_attack"]

AUDIT_SWEEP = "audit"
_WHITE_BOX_ORDER = ("autoattack_linf", "linf", "autoattack_l2", "l2")

# item -> the audit roles that feed it (besides the white-box curve)
_ROLES = {"white_vs_query": ("query",), "query_vs_noise": ("query", "noise"), "white_vs_noise": ("noise",),
          "more_steps": ("more_steps",), "more_restarts": ("more_restarts",),
          "unbounded_budget": ("unbounded", "trivial"), "transfer": ("transfer",)}


def white_box_attack(attacks: Sequence[str]) -> str | None:
    """The attack the audit judges among those that ran: the ensemble over PGD, L-inf over L2."""
    return next((a for a in _WHITE_BOX_ORDER if a in attacks), None)


def _finite(rows: Sequence[Mapping], metric: str) -> bool:
    return any(math.isfinite(float(r.get(metric, float("nan")))) for r in rows)


def _skip_reason(item: str, audit_cfg, white: Mapping | None) -> str:
    """Why no audit row feeds `item`, from the settings that ran (audit_cfg: an AuditConfig or None)."""
    if audit_cfg is None:
        return "no audit rows (the sweep's settings were not given to the audit)"
    if not audit_cfg.enabled:
        return "audit#enabled is false (no noise, query, more-effort, eps-1 or transfer rows computed)"
    if white is None or white["head"] != "points":
        return "the audit's rows are computed for the point head only; this sweep attacked no point head"
    if item == "transfer" and not audit_cfg.surrogate_ckpt:
        return "no surrogate checkpoint given (audit#surrogate_ckpt)"
    if item == "unbounded_budget" and not audit_cfg.unbounded:
        return "audit#unbounded is false"
    if item == "unbounded_budget" and white["attack"].endswith("l2"):
        return f"the white-box attack {white['attack']} is L2; eps = 1 is an L-inf budget"
    return "no audit rows for it in this sweep"


def sweep_audit(rows: Sequence[Mapping], audit_cfg=None) -> tuple[list[masking_audit.AuditItem], dict]:
    """(audit items, {"white_box": what was audited, "audit_samples": n or None}) for a sweep's rows (clean,
    ind, ood, audit); `audit_cfg` (the sweep's AuditConfig) only words the reasons of skipped items."""
    ind = [r for r in rows if r["sweep"] == "ind"]
    audit_rows = [r for r in rows if r["sweep"] == AUDIT_SWEEP]
    source: dict = {"white_box": None, "audit_samples": None}
    chosen = clean = None
    for metric, head, higher_is_worse in (("point_error_px", "points", True), ("seg_dice", "seg", False)):
        for attack in _WHITE_BOX_ORDER:
            chosen = [r for r in ind if r["attack"] == attack and r["head"] == head]
            if chosen and _finite(chosen, metric):
                source["white_box"] = {"attack": attack, "head": head, "metric": metric,
                                       "higher_is_worse": higher_is_worse}
                break
        if source["white_box"] is not None:
            break
    wb = source["white_box"]
    if wb is None:
        items = masking_audit.audit(None)
        for item in items:
            item.message = "skipped: no IND attack rows in this sweep"
        return items, source

    clean = [r for r in rows if r["sweep"] == "clean"]
    roles: dict[str, list[Mapping]] = {}
    if wb["head"] == "points":
        for r in audit_rows:
            roles.setdefault(r["audit_role"], []).append(r)
    if roles:
        ids = {r["sample_id"] for r in audit_rows}
        source["audit_samples"] = len(ids)
        clean = [r for r in clean if r["sample_id"] in ids]
        chosen = [r for r in chosen if r["sample_id"] in ids]
    metric = wb["metric"]

    def curve(members: Sequence[Mapping]) -> dict | None:
        return masking_audit.curves_from_rows(members, metric=metric, key=lambda r: "x")["x"] if members else None

    trivial = None
    if roles.get("trivial"):
        trivial = {name: c[1.0] for name, c in masking_audit.curves_from_rows(roles["trivial"], metric=metric).items()}
    items = masking_audit.audit(curve(clean + chosen + roles.get("unbounded", [])),
                                query=curve(roles.get("query", [])), noise=curve(roles.get("noise", [])),
                                more_steps=curve(roles.get("more_steps", [])),
                                more_restarts=curve(roles.get("more_restarts", [])),
                                trivial_at_unbounded=trivial, transfer=curve(roles.get("transfer", [])),
                                higher_is_worse=wb["higher_is_worse"])
    for item in items:
        if item.status == "skipped" and item.name in _ROLES and not all(roles.get(r) for r in _ROLES[item.name]):
            item.message = f"skipped: {_skip_reason(item.name, audit_cfg, wb)}"
    return items, source


def audit_json(rows: Sequence[Mapping], audit_cfg=None) -> dict:
    """For aggregate.json: masking_audit.to_json plus what was audited."""
    items, source = sweep_audit(rows, audit_cfg)
    return {**masking_audit.to_json(items), **source}


def audit_markdown(rows: Sequence[Mapping], audit_cfg=None) -> list[str]:
    """The report's audit section (lines)."""
    items, source = sweep_audit(rows, audit_cfg)
    wb = source["white_box"]
    what = ("no IND attack ran" if wb is None else
            f"white-box = `{wb['attack']}` on head `{wb['head']}`, metric `{wb['metric']}`, eps 0 = clean")
    if source["audit_samples"]:
        what += f"; on the first {source['audit_samples']} test patches, the audit rows' samples"
    return ["## Gradient-masking audit", "", f"Computed from this sweep's rows ({what}); `skipped` = this sweep has "
            "no rows for the check, which is a gap, not a pass. The audit's own rows are in `audit.csv`.", "",
            masking_audit.to_markdown(items)]

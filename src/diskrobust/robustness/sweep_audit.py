"""The gradient-masking audit of one sweep, from its own rows (`diskrobust.robustness.masking_audit`).

Which rows play which role:
    white-box  the strongest IND gradient attack the sweep ran on the point head: autoattack_linf, else linf
               PGD, else the L2 ones; its clean rows are the eps 0 point. Without a point head: seg Dice
               (lower is worse).
    the rest   the effort checks need a second run of the same attack with more steps / restarts, the noise,
               unbounded and transfer checks rows the sweep does not compute (noise, constant images, a surrogate).
An item the rows cannot feed is "skipped" with the reason (never "pass"). In particular the ensemble's
Square member starts from the APGD worst case, so it is not an independent query-based result.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from diskrobust.robustness import masking_audit

__all__ = ["audit_json", "audit_markdown", "sweep_audit"]

_WHITE_BOX_ORDER = ("autoattack_linf", "linf", "autoattack_l2", "l2")

# item -> why one sweep's rows cannot feed it
_SKIP_REASONS = {
    "white_vs_query": "no independent query-based attack in the sweep (the ensemble's Square member starts from "
                      "the APGD worst case, so it cannot be compared with white-box)",
    "query_vs_noise": "no independent query-based attack and no random-noise rows in the sweep",
    "white_vs_noise": "no random-noise rows of the same budget in the sweep",
    "more_steps": "the sweep runs each attack with one number of steps (run it again with more ind#steps)",
    "more_restarts": "the sweep runs each attack with one number of restarts (run it again with more ind#restarts)",
    "unbounded_budget": "no L-inf eps = 1 rows with constant-image references in the sweep",
    "transfer": "no surrogate model in the sweep",
}


def _finite(rows: Sequence[Mapping], metric: str) -> bool:
    return any(math.isfinite(float(r.get(metric, float("nan")))) for r in rows)


def sweep_audit(rows: Sequence[Mapping]) -> tuple[list[masking_audit.AuditItem], dict]:
    """(audit items, {"white_box": what was audited}) for a sweep's rows (clean, ind, ood)."""
    ind = [r for r in rows if r["sweep"] == "ind"]
    clean = [r for r in rows if r["sweep"] == "clean"]
    source: dict = {"white_box": None}
    white = None
    for metric, head, higher_is_worse in (("point_error_px", "points", True), ("seg_dice", "seg", False)):
        for attack in _WHITE_BOX_ORDER:
            chosen = [r for r in ind if r["attack"] == attack and r["head"] == head]
            if chosen and _finite(chosen, metric):
                curves = masking_audit.curves_from_rows(
                    [{**r, "attack": "white"} for r in clean + chosen], metric=metric)
                white = curves["white"]
                source = {"white_box": {"attack": attack, "head": head, "metric": metric,
                                        "higher_is_worse": higher_is_worse}}
                break
        if white is not None:
            break
    items = masking_audit.audit(white, higher_is_worse=source["white_box"]["higher_is_worse"] if white else True)
    for item in items:
        if item.status == "skipped":
            if white is None:
                item.message = "skipped: no IND attack rows in this sweep"
            elif item.name in _SKIP_REASONS:
                item.message = f"skipped: {_SKIP_REASONS[item.name]}"
    return items, source


def audit_json(rows: Sequence[Mapping]) -> dict:
    """For aggregate.json: masking_audit.to_json plus what was audited."""
    items, source = sweep_audit(rows)
    return {**masking_audit.to_json(items), **source}


def audit_markdown(rows: Sequence[Mapping]) -> list[str]:
    """The report's audit section (lines)."""
    items, source = sweep_audit(rows)
    wb = source["white_box"]
    what = ("no IND attack ran" if wb is None else
            f"white-box = `{wb['attack']}` on head `{wb['head']}`, metric `{wb['metric']}`, eps 0 = clean")
    return ["## Gradient-masking audit", "", f"Computed from this sweep's rows ({what}); `skipped` = this sweep has "
            "no rows for the check, which is a gap, not a pass.", "", masking_audit.to_markdown(items)]

"""Statistics for the study's findings: bootstrap intervals over seeds and disks, paired differences
between arms, Holm-corrected decisions over the epsilons, and a verdict per finding.

Data layout. One arm's results for one setting (metric, sweep, attack, head, eps) are a matrix
`values[s, d]`: training seed `s` x test disk `d`. Every arm is evaluated on the same fixed test
disks, and arms trained with the same seed index are paired with each other, so the difference of
two arms is taken cell by cell (`a[s, d] - b[s, d]`) before anything is resampled: the disks'
difficulty, shared by both arms, cancels.

Bootstrap (`bootstrap_means`): each replicate resamples the seeds with replacement, then the disks
with replacement, and takes the mean of the resampled cells. Two schemes:

- "nested": disks are drawn anew for each resampled seed (disks nested within seeds: each seed saw
  its own sample of disks).
- "crossed" (default): one disk resample shared by every resampled seed. This is the design of the
  study: the same test disks are evaluated under every seed, so a hard disk is hard for every seed;
  the nested scheme would treat those shared disk effects as independent per seed and give too
  narrow an interval (`tests/test_statistics.py` shows both).

The interval is the percentile interval of the replicates. With few seeds the seed part of the
spread is underestimated (a bootstrap of S values has variance (S - 1) / S of theirs, and S = 3 has
only 10 distinct resamples): with 3 seeds read an interval as a lower bound on the uncertainty.

Decisions (`decide_finding`). A finding states a direction ("less": arm a's metric is lower than
arm b's, "greater", or "equivalent": they differ by less than the smallest effect that counts,
`smallest_effect`, in the metric's unit). Per epsilon, the bootstrap gives a one-sided p-value for
"the effect exceeds the smallest effect in the claimed direction" (the percentile interval
inverted: p = (1 + #replicates on the null side) / (B + 1)); Holm's step-down correction over the
epsilons controls the family-wise error at `alpha`. Verdicts:

- reproduced: the claimed effect is shown (Holm) at one epsilon or more and the opposite effect at
  none; for "equivalent": every epsilon's (1 - 2 alpha) interval lies within +- smallest_effect.
- not reproduced: the opposite effect is shown (Holm) and the claimed one nowhere, or every
  epsilon's (1 - 2 alpha) interval lies within +- smallest_effect (the effect, if any, is smaller
  than what counts; two one-sided tests per epsilon, an intersection-union test, so no correction);
  for "equivalent": a difference larger than smallest_effect is shown (Holm) at some epsilon.
- inconclusive: anything else (the data cannot tell), including both directions shown at
  different epsilons.

Censored budgets (finding 3, sweep "ood_budget"). A target the OOD attack does not reach within
`rms_max` has a needed budget above rms_max, counted as rms_max (`ood_budget.finding_rows`): its
difference between arms is unknown, and two arms that both hit the cap look equal. So an
equivalence is called reproduced only while at most `MAX_CENSORED` (20 %) of either arm's targets
are censored; above it the verdict is inconclusive (raise rms_max). Every budget verdict states the
censored shares (`censoring`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "SCHEMES", "DIRECTIONS", "VERDICTS",
    "Estimate", "as_matrix", "bootstrap_means", "bootstrap_estimate", "paired_difference", "holm",
    "bootstrap_pvalue", "FindingSpec", "EpsDecision", "FindingResult", "decide_finding", "values_matrix",
    "paired_matrices", "finding_markdown", "sampled_shape_variance", "variance_matched_c_max",
    "StatisticsConfig", "decide_findings", "load_arm_rows", "findings_summary_markdown",
    "variance_matched_c_max_for_training", "MAX_CENSORED", "censoring",
]

SCHEMES = ("crossed", "nested")
DIRECTIONS = ("less", "greater", "equivalent")
VERDICTS = ("reproduced", "not reproduced", "inconclusive")

# The largest share of either arm's targets censored at rms_max for which an OOD budget equivalence
# may be called reproduced (module doc).
MAX_CENSORED = 0.2

# Cells held in memory at once by the vectorised bootstrap (replicates x seeds x disks).
_CHUNK_CELLS = 4_000_000


@dataclass(frozen=True)
class Estimate:
    """A mean with its bootstrap percentile interval; `replicates` are the bootstrap means."""

    mean: float
    lo: float
    hi: float
    level: float
    n_seeds: int
    n_disks: int
    replicates: np.ndarray = field(repr=False, compare=False)

    def to_dict(self) -> dict:
        return {"mean": self.mean, "lo": self.lo, "hi": self.hi, "level": self.level,
                "n_seeds": self.n_seeds, "n_disks": self.n_disks}

    def text(self, digits: int = 2) -> str:
        return f"{self.mean:.{digits}f} [{self.lo:.{digits}f}, {self.hi:.{digits}f}]"


def as_matrix(values, what: str = "values") -> np.ndarray:
    """(seeds, disks) float array from a 2-D array-like (a 1-D one is one seed); finite and non-empty."""
    v = np.asarray(values, dtype=float)
    if v.ndim == 1:
        v = v[None, :]
    if v.ndim != 2 or v.shape[0] < 1 or v.shape[1] < 1:
        raise ValueError(f"{what} must be a non-empty (seeds, disks) matrix, got shape {v.shape}")
    if not np.all(np.isfinite(v)):
        bad = int((~np.isfinite(v)).sum())
        raise ValueError(f"{what} hold {bad} NaN/Inf value(s): a missing head or a failed unit; a finding needs "
                         "every (seed, disk) cell")
    return v


def bootstrap_means(values, n_boot: int = 2000, seed: int = 0, scheme: str = "crossed") -> np.ndarray:
    """(n_boot,) bootstrap means of a (seeds, disks) matrix: seeds resampled, then disks (module doc)."""
    v = as_matrix(values)
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    if int(n_boot) != n_boot or n_boot < 1:
        raise ValueError(f"n_boot must be an integer >= 1, got {n_boot}")
    n_seeds, n_disks = v.shape
    rng = np.random.default_rng(seed)
    out = np.empty(int(n_boot))
    chunk = max(1, _CHUNK_CELLS // (n_seeds * n_disks))
    for start in range(0, int(n_boot), chunk):
        b = min(chunk, int(n_boot) - start)
        si = rng.integers(0, n_seeds, size=(b, n_seeds))
        if scheme == "nested":
            di = rng.integers(0, n_disks, size=(b, n_seeds, n_disks))
            cells = v[si[:, :, None], di]
        else:
            di = rng.integers(0, n_disks, size=(b, n_disks))
            cells = v[si[:, :, None], di[:, None, :]]
        out[start:start + b] = cells.mean(axis=(1, 2))
    return out


def _check_level(level: float) -> float:
    if not (0.0 < level < 1.0):
        raise ValueError(f"the confidence level must lie in (0, 1), got {level}")
    return float(level)


def _estimate(v: np.ndarray, reps: np.ndarray, level: float) -> Estimate:
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(reps, [tail, 1.0 - tail])
    return Estimate(float(v.mean()), float(lo), float(hi), level, v.shape[0], v.shape[1], reps)


def bootstrap_estimate(values, level: float = 0.95, n_boot: int = 2000, seed: int = 0,
                       scheme: str = "crossed") -> Estimate:
    """Mean of a (seeds, disks) matrix with its `level` percentile interval."""
    v = as_matrix(values)
    return _estimate(v, bootstrap_means(v, n_boot, seed, scheme), _check_level(level))


def paired_difference(a, b, level: float = 0.95, n_boot: int = 2000, seed: int = 0,
                      scheme: str = "crossed") -> Estimate:
    """Mean of a - b over the same (seed, disk) cells with its interval; a and b must have one shape."""
    a = as_matrix(a, "arm a's values")
    b = as_matrix(b, "arm b's values")
    if a.shape != b.shape:
        raise ValueError(f"paired arms need the same seeds and disks: shapes {a.shape} and {b.shape}")
    return bootstrap_estimate(a - b, level, n_boot, seed, scheme)


def bootstrap_pvalue(replicates: np.ndarray, threshold: float, side: str) -> float:
    """One-sided p-value that the mean is below (side "below") or above ("above") `threshold`.

    p = (1 + #replicates on the null side) / (B + 1): the percentile interval inverted, so
    p <= alpha exactly when the one-sided (1 - alpha) bound excludes the threshold.
    """
    reps = np.asarray(replicates, dtype=float)
    if side == "below":
        null = np.count_nonzero(reps >= threshold)
    elif side == "above":
        null = np.count_nonzero(reps <= threshold)
    else:
        raise ValueError(f"side must be 'below' or 'above', got {side!r}")
    return float((1 + null) / (reps.size + 1))


def _check_keys(cls, d, where: str) -> None:
    """A config section is an object whose keys are the dataclass's fields (a misspelt key is refused)."""
    if not isinstance(d, Mapping):
        raise ValueError(f"{where} must be an object, got {type(d).__name__}")
    known = set(cls.__dataclass_fields__)
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")



def holm(pvalues: Sequence[float], alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Holm's step-down correction: (reject (m,) bool, adjusted p-values (m,)) in the input order.

    Sorted ascending, p_(j) is compared with alpha / (m - j + 1); every hypothesis is rejected up to
    the first that fails. Adjusted p_(j) = max over i <= j of min(1, (m - i + 1) p_(i)).
    """
    p = np.asarray(pvalues, dtype=float)
    if p.ndim != 1 or p.size == 0:
        raise ValueError(f"holm needs a non-empty list of p-values, got {pvalues!r}")
    if np.any(~np.isfinite(p)) or np.any(p < 0) or np.any(p > 1):
        raise ValueError(f"p-values must lie in [0, 1], got {p.tolist()}")
    if not (0.0 < alpha < 1.0):
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    m = p.size
    order = np.argsort(p, kind="stable")
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted_sorted = np.maximum.accumulate(scaled)
    adjusted = np.empty(m)
    adjusted[order] = adjusted_sorted
    return adjusted <= alpha, adjusted


# --------------------------------------------------------------------------------------- findings


@dataclass
class FindingSpec:
    """One finding as the config states it (configs/study/findings.json, "findings").

    a, b: arm names; the difference is a - b. metric: a per-sample column (e.g. "point_error_px").
    direction: the claim about a - b ("less", "greater", "equivalent"). smallest_effect: the
    smallest |a - b| that counts, in the metric's unit. sweep/attack/head/eps select the rows.
    """

    id: str
    claim: str
    a: str
    b: str
    metric: str
    direction: str
    smallest_effect: float
    sweep: str = "ind"
    attack: str = "linf"
    head: str = "points"
    eps: list[float] = field(default_factory=list)

    @classmethod
    def from_dict(cls, d: Mapping, where: str = "finding") -> FindingSpec:
        _check_keys(cls, d, where)
        missing = [k for k in ("id", "claim", "a", "b", "metric", "direction", "smallest_effect") if k not in d]
        if missing:
            raise ValueError(f"{where}: missing key(s) {missing}")
        spec = cls(**dict(d))
        if spec.direction not in DIRECTIONS:
            raise ValueError(f"{where} ({spec.id}): direction must be one of {DIRECTIONS}, got {spec.direction!r}")
        if not (isinstance(spec.smallest_effect, (int, float)) and math.isfinite(spec.smallest_effect)
                and spec.smallest_effect > 0):
            raise ValueError(f"{where} ({spec.id}): smallest_effect must be a number > 0 in the metric's unit, "
                             f"got {spec.smallest_effect!r}")
        if spec.a == spec.b:
            raise ValueError(f"{where} ({spec.id}): a and b are the same arm {spec.a!r}")
        spec.eps = [float(e) for e in spec.eps]
        return spec


@dataclass
class EpsDecision:
    eps: float
    a: Estimate
    b: Estimate
    diff: Estimate
    p_claim: float  # the claimed effect exceeds smallest_effect (for "equivalent": |diff| > it, two-sided)
    p_opposite: float
    p_equivalent: float  # TOST: |diff| < smallest_effect
    shown: bool = False  # claimed direction shown after Holm
    opposite_shown: bool = False
    equivalent: bool = False

    def to_dict(self) -> dict:
        return {"eps": self.eps, "a": self.a.to_dict(), "b": self.b.to_dict(), "diff": self.diff.to_dict(),
                "p_claim": self.p_claim, "p_opposite": self.p_opposite, "p_equivalent": self.p_equivalent,
                "shown": self.shown, "opposite_shown": self.opposite_shown, "equivalent": self.equivalent}


@dataclass
class FindingResult:
    spec: FindingSpec
    verdict: str
    reason: str
    alpha: float
    decisions: list[EpsDecision]
    censored: dict | None = None  # OOD budget: {"a": share, "b": share} of targets not reached within rms_max

    def to_dict(self) -> dict:
        return {"id": self.spec.id, "claim": self.spec.claim, "a": self.spec.a, "b": self.spec.b,
                "metric": self.spec.metric, "direction": self.spec.direction,
                "smallest_effect": self.spec.smallest_effect, "alpha": self.alpha, "verdict": self.verdict,
                "reason": self.reason, "per_eps": [d.to_dict() for d in self.decisions],
                **({"censored": self.censored} if self.censored is not None else {})}


def _fmt_eps(values: Sequence[float]) -> str:
    return ", ".join(f"{e:g}" for e in values)


def decide_finding(spec: FindingSpec, a_by_eps: Mapping[float, np.ndarray], b_by_eps: Mapping[float, np.ndarray],
                   alpha: float = 0.05, level: float = 0.95, n_boot: int = 2000, seed: int = 0,
                   scheme: str = "crossed", censored: Mapping[str, float] | None = None) -> FindingResult:
    """The verdict of one finding from arm a's and arm b's (seeds, disks) matrices per epsilon (module doc).

    censored: for budgets with a cap (OOD budget), {"a": share, "b": share} of cells censored at the cap
    (`censoring`); an equivalence with more than MAX_CENSORED in either arm is inconclusive.
    """
    if not (0.0 < alpha < 0.5):
        raise ValueError(f"alpha must lie in (0, 0.5), got {alpha}")
    eps_list = sorted(a_by_eps)
    if sorted(b_by_eps) != eps_list or not eps_list:
        raise ValueError(f"finding {spec.id}: arms {spec.a} and {spec.b} must have the same non-empty epsilons, "
                         f"got {sorted(a_by_eps)} and {sorted(b_by_eps)}")
    delta = float(spec.smallest_effect)
    decisions = []
    for k, eps in enumerate(eps_list):
        a = as_matrix(a_by_eps[eps], f"{spec.a} at eps {eps:g}")
        b = as_matrix(b_by_eps[eps], f"{spec.b} at eps {eps:g}")
        if a.shape != b.shape:
            raise ValueError(f"finding {spec.id} at eps {eps:g}: {spec.a} has (seeds, disks) {a.shape}, "
                             f"{spec.b} has {b.shape}; paired arms need the same seeds and test disks")
        # One seed for every epsilon: same resampled seeds and disks across the curve.
        est_a = bootstrap_estimate(a, level, n_boot, seed, scheme)
        est_b = bootstrap_estimate(b, level, n_boot, seed, scheme)
        diff = paired_difference(a, b, level, n_boot, seed, scheme)
        reps = diff.replicates
        p_below = bootstrap_pvalue(reps, -delta, "below")  # diff < -delta
        p_above = bootstrap_pvalue(reps, delta, "above")  # diff > +delta
        # TOST: diff < +delta and diff > -delta, both at alpha
        p_equiv = max(bootstrap_pvalue(reps, delta, "below"), bootstrap_pvalue(reps, -delta, "above"))
        if spec.direction == "less":
            p_claim, p_opp = p_below, p_above
        elif spec.direction == "greater":
            p_claim, p_opp = p_above, p_below
        else:
            p_claim, p_opp = min(1.0, 2.0 * min(p_below, p_above)), float("nan")
        decisions.append(EpsDecision(eps, est_a, est_b, diff, p_claim, p_opp, p_equiv))
        del k
    shown, _ = holm([d.p_claim for d in decisions], alpha)
    for d, s in zip(decisions, shown):
        d.equivalent = d.p_equivalent <= alpha
        if spec.direction == "equivalent":
            d.opposite_shown = bool(s)  # a difference that counts: against the claim
        else:
            d.shown = bool(s)
    if spec.direction != "equivalent":
        opposite, _ = holm([d.p_opposite for d in decisions], alpha)
        for d, s in zip(decisions, opposite):
            d.opposite_shown = bool(s)
    verdict, reason = _verdict(spec, decisions, alpha)
    if censored is not None:
        share = {k: float(censored[k]) for k in ("a", "b")}
        note = (f"{share['a']:.0%} of {spec.a}'s and {share['b']:.0%} of {spec.b}'s targets were not reached within "
                "the largest budget (counted at it)")
        if verdict == "reproduced" and spec.direction == "equivalent" and max(share.values()) > MAX_CENSORED:
            verdict, reason = "inconclusive", (f"{reason}, but {note}: more than {MAX_CENSORED:.0%} censored, so the "
                                               "equal budgets may be the cap's (raise rms_max)")
        else:
            reason = f"{reason}; {note}"
        censored = share
    return FindingResult(spec, verdict, reason, alpha, decisions, censored)


def _verdict(spec: FindingSpec, decisions: list[EpsDecision], alpha: float) -> tuple[str, str]:
    shown = [d.eps for d in decisions if d.shown]
    opposite = [d.eps for d in decisions if d.opposite_shown]
    equivalent = [d.eps for d in decisions if d.equivalent]
    delta = spec.smallest_effect
    band = f"+-{delta:g}"
    n = len(decisions)
    if spec.direction == "equivalent":
        if opposite:
            return "not reproduced", (f"a difference larger than {delta:g} is shown (Holm, alpha {alpha:g}) at eps "
                                      f"{_fmt_eps(opposite)}")
        if len(equivalent) == n:
            return "reproduced", (f"at every eps the {1 - 2 * alpha:.0%} interval of the difference lies within "
                                  f"{band}")
        return "inconclusive", (f"no difference larger than {delta:g} is shown, but the interval lies within {band} "
                                f"only at eps {_fmt_eps(equivalent) or 'none'} of {n}")
    word = "lower" if spec.direction == "less" else "higher"
    if shown and not opposite:
        return "reproduced", (f"{spec.a} is {word} than {spec.b} by more than {delta:g} at eps {_fmt_eps(shown)} "
                              f"(Holm over {n} eps, alpha {alpha:g}) and the opposite is shown at none")
    if opposite and not shown:
        return "not reproduced", (f"the opposite is shown: {spec.a} is {'higher' if word == 'lower' else 'lower'} "
                                  f"than {spec.b} by more than {delta:g} at eps {_fmt_eps(opposite)} (Holm, alpha "
                                  f"{alpha:g})")
    if shown and opposite:
        return "inconclusive", (f"{word} at eps {_fmt_eps(shown)} but the opposite at eps {_fmt_eps(opposite)} "
                                "(Holm): the effect depends on the budget")
    if len(equivalent) == n:
        return "not reproduced", (f"at every eps the {1 - 2 * alpha:.0%} interval of {spec.a} - {spec.b} lies within "
                                  f"{band}: any effect is smaller than the smallest that counts")
    return "inconclusive", (f"no effect larger than {delta:g} is shown at any eps, and it cannot be ruled out "
                            f"(interval within {band} only at eps {_fmt_eps(equivalent) or 'none'} of {n})")


def finding_markdown(result: FindingResult, digits: int = 2, unit: str = "") -> list[str]:
    """Markdown lines: the verdict in words, then a table per eps (a, b, a - b with intervals, Holm)."""
    spec = result.spec
    lvl = result.decisions[0].diff.level if result.decisions else 0.95
    d0 = result.decisions[0] if result.decisions else None
    lines = [f"**{spec.id}: {spec.claim}: {result.verdict}.** {result.reason}.",
             "",
             f"{spec.metric}{f' ({unit})' if unit else ''}, {spec.sweep}/{spec.attack}/{spec.head}; "
             f"means with {lvl:.0%} bootstrap intervals over {d0.diff.n_seeds if d0 else 0} seed(s) x "
             f"{d0.diff.n_disks if d0 else 0} test disks; smallest effect that counts: {spec.smallest_effect:g}.",
             "",
             f"| eps | {spec.a} | {spec.b} | {spec.a} - {spec.b} | claimed effect shown (Holm) | opposite shown "
             f"| within +-{spec.smallest_effect:g} |",
             "|---|---|---|---|---|---|---|"]
    for d in result.decisions:
        lines.append(f"| {d.eps:g} | {d.a.text(digits)} | {d.b.text(digits)} | {d.diff.text(digits)} | "
                     f"{'yes' if d.shown else 'no'} | {'yes' if d.opposite_shown else 'no'} | "
                     f"{'yes' if d.equivalent else 'no'} |")
    if result.censored is not None:
        lines += ["", f"Targets not reached within the largest budget (counted at it): {spec.a} "
                      f"{result.censored['a']:.0%}, {spec.b} {result.censored['b']:.0%}."]
    return lines


@dataclass
class StatisticsConfig:
    """The "statistics" section of a study profile: test settings and the findings to decide."""

    alpha: float = 0.05
    level: float = 0.95
    n_boot: int = 2000
    scheme: str = "crossed"
    seed: int = 0
    findings: list[FindingSpec] = field(default_factory=list)

    @classmethod
    def from_dict(cls, d: Mapping, where: str = "statistics") -> StatisticsConfig:
        _check_keys(cls, d, where)
        cfg = cls(**{k: v for k, v in d.items() if k != "findings"})
        if not (0.0 < cfg.alpha < 0.5):
            raise ValueError(f"{where}.alpha must lie in (0, 0.5), got {cfg.alpha!r}")
        _check_level(cfg.level)
        if isinstance(cfg.n_boot, bool) or not isinstance(cfg.n_boot, int) or cfg.n_boot < 100:
            raise ValueError(f"{where}.n_boot must be an integer >= 100, got {cfg.n_boot!r}")
        if cfg.scheme not in SCHEMES:
            raise ValueError(f"{where}.scheme must be one of {SCHEMES}, got {cfg.scheme!r}")
        raw = d.get("findings", [])
        if not isinstance(raw, list):
            raise ValueError(f"{where}.findings must be a list of findings")
        cfg.findings = [FindingSpec.from_dict(f, f"{where}.findings[{i}]") for i, f in enumerate(raw)]
        ids = [f.id for f in cfg.findings]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(f"{where}.findings: ids {dup} appear more than once")
        return cfg


def decide_findings(cfg: StatisticsConfig, rows: Mapping[str, Mapping[int, Sequence[Mapping]]]) -> list[FindingResult]:
    """Every finding of `cfg` decided from per-sample rows {arm name: {seed: rows}}."""
    out = []
    for spec in cfg.findings:
        a_by, b_by = paired_matrices(rows, spec)
        out.append(decide_finding(spec, a_by, b_by, cfg.alpha, cfg.level, cfg.n_boot, cfg.seed, cfg.scheme,
                                  censoring(rows, spec)))
    return out


def censoring(rows: Mapping[str, Mapping[int, Sequence[Mapping]]], spec: FindingSpec) -> dict | None:
    """{"a": share, "b": share} of the finding's cells whose budget was not reached (column "reached" of
    `ood_budget.finding_rows`, over every seed, target and eps), or None for findings without that column."""
    if spec.sweep != "ood_budget":
        return None
    reached = FindingSpec(**{**spec.__dict__, "metric": "reached"})
    a_by, b_by = paired_matrices(rows, reached)
    return {"a": float(1.0 - np.mean([m.mean() for m in a_by.values()])),
            "b": float(1.0 - np.mean([m.mean() for m in b_by.values()]))}


def findings_summary_markdown(results: Sequence[FindingResult], digits: int = 2) -> list[str]:
    """One table over all findings: claim, verdict, and the difference at the eps with the largest |effect|."""
    lines = ["| finding | claim | verdict | largest difference a - b (eps) | smallest effect that counts |",
             "|---|---|---|---|---|"]
    for r in results:
        d = max(r.decisions, key=lambda x: abs(x.diff.mean))
        where = "OOD budget, per-pixel RMS" if r.spec.sweep == "ood_budget" else f"eps {d.eps:g}"
        lines.append(f"| {r.spec.id} | {r.spec.claim} | **{r.verdict}** | "
                     f"{d.diff.text(max(digits, 3) if r.spec.sweep == 'ood_budget' else digits)} ({where}) | "
                     f"{r.spec.smallest_effect:g} |")
    return lines


def load_arm_rows(per_sample_csvs: Mapping[str, Mapping[int, str]]) -> dict[str, dict[int, list[dict]]]:
    """{arm: {seed: per_sample.csv path}} -> {arm: {seed: rows}} (the sweep's CSV, `results.read_rows_csv`)."""
    from diskrobust.robustness.results import read_rows_csv

    return {arm: {int(seed): read_rows_csv(path) for seed, path in by_seed.items()}
            for arm, by_seed in per_sample_csvs.items()}


# ------------------------------------------------------------------------------- rows -> matrices


def _select(rows: Sequence[Mapping], spec: FindingSpec, eps: float) -> dict[int, float]:
    out: dict[int, float] = {}
    for r in rows:
        if r.get("sweep") != spec.sweep or float(r.get("eps", math.nan)) != eps:
            continue
        if spec.sweep != "clean" and (r.get("attack") != spec.attack or r.get("head") != spec.head):
            continue
        sid = int(r["sample_id"])
        if sid in out:
            raise ValueError(f"sample {sid} appears twice for {spec.sweep}/{spec.attack}/{spec.head} eps {eps:g}")
        out[sid] = float(r[spec.metric])
    return out


def values_matrix(rows_by_seed: Mapping[int, Sequence[Mapping]], spec: FindingSpec, eps: float,
                  arm: str = "") -> tuple[np.ndarray, list[int], list[int]]:
    """One arm's (seeds, disks) matrix of `spec.metric` at `eps` from its per-sample rows per seed.

    Rows are the sweep's per-sample rows (`ROW_COLUMNS`). IND eps 0 is read from the clean rows.
    Returns (matrix, seeds in order, sample ids in order); raises ValueError when a seed lacks the
    setting or the seeds were evaluated on different disks.
    """
    seeds = sorted(rows_by_seed)
    if not seeds:
        raise ValueError(f"arm {arm}: no seeds with results")
    sel = spec
    if spec.sweep == "ind" and eps == 0.0:
        sel = FindingSpec(**{**spec.__dict__, "sweep": "clean"})
    per_seed = []
    for s in seeds:
        got = _select(rows_by_seed[s], sel, eps)
        if not got:
            raise ValueError(f"arm {arm} seed {s}: no rows for {sel.sweep}/{sel.attack}/{sel.head} at eps {eps:g}")
        per_seed.append(got)
    ids = sorted(per_seed[0])
    for s, got in zip(seeds, per_seed):
        if sorted(got) != ids:
            raise ValueError(f"arm {arm}: seed {s} was evaluated on other test disks than seed {seeds[0]} "
                             f"({len(got)} vs {len(ids)} samples); the design needs one fixed test set")
    return np.array([[got[i] for i in ids] for got in per_seed]), seeds, ids


def paired_matrices(rows: Mapping[str, Mapping[int, Sequence[Mapping]]], spec: FindingSpec
                    ) -> tuple[dict[float, np.ndarray], dict[float, np.ndarray]]:
    """{eps: matrix} for arm a and arm b of a finding, checked to share seeds and disks (paired)."""
    for arm in (spec.a, spec.b):
        if arm not in rows:
            raise ValueError(f"finding {spec.id}: arm {arm!r} has no results (arms with results: {sorted(rows)})")
    if not spec.eps:
        raise ValueError(f"finding {spec.id}: give the eps values to decide over")
    a_by, b_by = {}, {}
    for eps in spec.eps:
        ma, sa, ia = values_matrix(rows[spec.a], spec, eps, spec.a)
        mb, sb, ib = values_matrix(rows[spec.b], spec, eps, spec.b)
        if sa != sb or ia != ib:
            raise ValueError(f"finding {spec.id} at eps {eps:g}: {spec.a} (seeds {sa}, {len(ia)} disks) and {spec.b} "
                             f"(seeds {sb}, {len(ib)} disks) are not paired; both need the same seeds and test disks")
        a_by[eps], b_by[eps] = ma, mb
    return a_by, b_by


# ------------------------------------------------------------------- variance-matched augmentation


def sampled_shape_variance(eigenvalues, n_modes: int, c_max: float) -> float:
    """Total variance (px^2, summed over the 2P coordinates) that the augmentation adds around the mean.

    Shapes are mean + sum_k c_k sqrt(lambda_k) P_k with c_k ~ U[-c_max, c_max] (variance c_max^2 / 3)
    and orthonormal P_k, so the total is c_max^2 / 3 * sum_{k <= n_modes} lambda_k. (The placement
    rule's redraws of shapes that do not fit the patch shrink it a little; not counted here.)
    """
    lam = np.asarray(eigenvalues, dtype=float)
    if int(n_modes) != n_modes or not (1 <= n_modes <= lam.size):
        raise ValueError(f"n_modes must be an integer in [1, {lam.size}] (the model's modes), got {n_modes}")
    if not (c_max > 0 and math.isfinite(c_max)):
        raise ValueError(f"c_max must be a finite number > 0, got {c_max}")
    return float(c_max**2 / 3.0 * lam[: int(n_modes)].sum())


def variance_matched_c_max(eigenvalues, n_modes: int = 3, reference_modes: int = 10,
                           reference_c_max: float = 2.0) -> float:
    """The c_max at which `n_modes` modes add the same total shape variance as `reference_modes` modes at
    `reference_c_max`: reference_c_max * sqrt(sum_{k<=ref} lambda_k / sum_{k<=n} lambda_k).

    This separates "more modes" from "more variance": P3 at this c_max varies as much as P10 in total
    but only along the first three modes. `eigenvalues`: `ShapePCA.eigenvalues` of the training split.
    """
    target = sampled_shape_variance(eigenvalues, reference_modes, reference_c_max)
    own = sampled_shape_variance(eigenvalues, n_modes, 1.0)
    return float(math.sqrt(target / own))


def variance_matched_c_max_for_training(training_entries: Sequence[Mapping], patch_size: int, patch_spacing_mm: float,
                                        n_modes: int = 3, reference_modes: int = 10,
                                        reference_c_max: float = 2.0) -> dict:
    """`variance_matched_c_max` for the PCA the training bundle fits on these training entries.

    training_entries: the datalist's training entries the arm trains on (after any subset); the
    patch bank and `ShapePCA.fit` are the ones the bundle uses, so the value is the one the arm needs
    before it is trained. Returns {"c_max", "eigenvalues" (first reference_modes), "variance_px2",
    "patches"}.
    """
    from diskrobust.datasets import build_patch_bank
    from diskrobust.transforms.shape_augment import ShapePCA

    if not training_entries:
        raise ValueError("no training entries: the shape model needs training contours")
    bank = build_patch_bank(list(training_entries), patch_size=patch_size, patch_spacing_mm=patch_spacing_mm,
                            progress=False)
    pca = ShapePCA.fit(np.asarray(bank.points))
    c = variance_matched_c_max(pca.eigenvalues, n_modes, reference_modes, reference_c_max)
    return {"c_max": c, "eigenvalues": pca.eigenvalues[:reference_modes].tolist(),
            "variance_px2": sampled_shape_variance(pca.eigenvalues, reference_modes, reference_c_max),
            "patches": int(len(bank.points))}

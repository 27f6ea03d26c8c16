"""Result files of a robustness sweep: per-sample CSV, aggregate JSON, Markdown tables, plots.

Rows are plain dicts with the columns of `ROW_COLUMNS` (one row = one test sample under one attack
setting). The sweep writes one CSV per (sweep, attack, head, eps) "unit" so an interrupted run can
resume; `aggregate` turns all rows into per-epsilon statistics, `markdown_report` and `plot_curves`
render them. Every file is written atomically (a temporary file in the same folder, then
`os.replace`), so a killed run never leaves half a file that a resumed run would trust.

Metric columns (what "error" means depends on `reference`):
    reference "truth"  (clean and IND rows): prediction vs the sample's true contour / mask.
    reference "target" (OOD rows): prediction on the attacked start image vs the target, i.e. the
        network's own output on an in-distribution image; small errors = the network is fooled.
"""

from __future__ import annotations

import csv
import importlib.metadata
import io
import json
import math
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from diskrobust.data.dataset_io import atomic_write_bytes, atomic_write_json, atomic_write_text

import numpy as np

__all__ = [
    "ROW_COLUMNS",
    "METRICS",
    "write_rows_csv",
    "read_rows_csv",
    "aggregate",
    "trapezoid_auc",
    "markdown_report",
    "plot_curves",
    "environment_info",
]

ROW_COLUMNS = (
    "sample_id", "subject", "level", "sweep", "attack", "norm", "head", "eps", "eps_rms", "steps", "reference",
    "point_error_px", "point_error_mm", "polygon_dice", "seg_dice", "attack_loss", "delta_linf", "delta_l2",
    "member",
)
_INT_COLUMNS = {"sample_id", "steps"}
_FLOAT_COLUMNS = {"eps", "eps_rms", "point_error_px", "point_error_mm", "polygon_dice", "seg_dice", "attack_loss",
                  "delta_linf", "delta_l2"}

# metric column -> (table title, lower is better)
METRICS: dict[str, tuple[str, bool]] = {
    "point_error_px": ("Mean point distance (px)", True),
    "point_error_mm": ("Mean point distance (mm)", True),
    "polygon_dice": ("Dice of the predicted contour's polygon", False),
    "seg_dice": ("Dice of the segmentation head (logit > 0)", False),
}
# Metrics whose tables show the spread (mean, median, 95th percentile); the rest show the mean.
_SPREAD_METRICS = ("point_error_px", "point_error_mm")


def write_rows_csv(path: str | Path, rows: Iterable[Mapping], columns: Sequence[str] = ROW_COLUMNS) -> Path:
    """Rows (dicts) -> CSV with `columns` in that order (missing keys empty, floats full precision)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_value(row.get(k)) for k in columns})
    return atomic_write_text(path, buf.getvalue())


def _csv_value(v):
    if v is None:
        return ""
    if isinstance(v, float):
        return "nan" if math.isnan(v) else repr(v)
    return v


def read_rows_csv(path: str | Path) -> list[dict]:
    """Read a CSV written by `write_rows_csv`, converting the known numeric columns back."""
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        for k, v in row.items():
            if k in _INT_COLUMNS and v != "":
                row[k] = int(v)
            elif k in _FLOAT_COLUMNS:
                row[k] = float(v) if v != "" else float("nan")
    return rows


def trapezoid_auc(eps: Sequence[float], values: Sequence[float]) -> float:
    """Area under `values` over `eps` (trapezoid rule); NaN when fewer than two finite points."""
    e = np.asarray(eps, dtype=float)
    v = np.asarray(values, dtype=float)
    ok = np.isfinite(v)
    if ok.sum() < 2:
        return float("nan")
    # numpy >= 2 renamed trapz to trapezoid
    trapezoid = getattr(np, "trapezoid", None) or np.trapz
    return float(trapezoid(v[ok], e[ok]))


def _stats(values: np.ndarray) -> dict[str, float]:
    values = values[np.isfinite(values)]
    if values.size == 0:
        nan = float("nan")
        return {"mean": nan, "median": nan, "p95": nan, "std": nan}
    return {"mean": float(values.mean()), "median": float(np.median(values)),
            "p95": float(np.percentile(values, 95)), "std": float(values.std())}


def aggregate(rows: Sequence[Mapping], tolerance_px: float) -> dict:
    """Per-(sweep, attack, head) curves over epsilon.

    IND groups get the clean rows (sweep "clean") as their eps = 0 point, so every curve and its
    area under the curve starts at the unattacked model. OOD groups have their own eps = 0 rows (the
    start image before the attack). Returns
    {"tolerance_px", "groups": [{"sweep", "attack", "norm", "head", "reference", "eps": [...], "n": [...],
      "metrics": {metric: {"mean": [...], "median": [...], "p95": [...], "std": [...]}},
      "within_tolerance": [...], "auc": {metric: float, "within_tolerance": float}}]}.
    `within_tolerance` is the fraction of samples whose point error is <= tolerance_px.
    """
    if tolerance_px < 0:
        raise ValueError(f"tolerance_px must be >= 0, got {tolerance_px}")
    clean = [r for r in rows if r["sweep"] == "clean"]
    keys: list[tuple] = []
    for r in rows:
        if r["sweep"] == "clean":
            continue
        key = (r["sweep"], r["attack"], r["head"])
        if key not in keys:
            keys.append(key)
    groups = []
    for sweep, attack, head in keys:
        members = [r for r in rows if (r["sweep"], r["attack"], r["head"]) == (sweep, attack, head)]
        if sweep == "ind" and not any(float(r["eps"]) == 0.0 for r in members):
            members = clean + members
        eps_values = sorted({float(r["eps"]) for r in members})
        group = {"sweep": sweep, "attack": attack, "norm": members[-1].get("norm", ""), "head": head,
                 "reference": members[-1].get("reference", ""), "eps": eps_values, "n": [],
                 "metrics": {m: {"mean": [], "median": [], "p95": [], "std": []} for m in METRICS},
                 "within_tolerance": []}
        for eps in eps_values:
            at = [r for r in members if float(r["eps"]) == eps]
            group["n"].append(len(at))
            for m in METRICS:
                s = _stats(np.array([float(r[m]) for r in at], dtype=float))
                for k, v in s.items():
                    group["metrics"][m][k].append(v)
            err = np.array([float(r["point_error_px"]) for r in at], dtype=float)
            group["within_tolerance"].append(float(np.mean(err <= tolerance_px)) if np.isfinite(err).any()
                                             else float("nan"))
        group["auc"] = {m: trapezoid_auc(eps_values, group["metrics"][m]["mean"]) for m in METRICS}
        group["auc"]["within_tolerance"] = trapezoid_auc(eps_values, group["within_tolerance"])
        groups.append(group)
    return {"tolerance_px": float(tolerance_px), "groups": groups}


def _fmt(v: float, digits: int) -> str:
    # "-": no value by design (a head the network lacks, too few points for an area), see COLUMN_NOTES
    return "-" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


def _eps_label(eps: float) -> str:
    return f"{eps:g}"


def _table(groups: Sequence[Mapping], metric: str | None, digits: int, with_auc: bool = True) -> list[str]:
    """One Markdown table: rows = attack + head, columns = epsilon, last column = AUC (if with_auc)."""
    eps_all = sorted({e for g in groups for e in g["eps"]})
    header = ["attack", "head"] + [f"eps {_eps_label(e)}" for e in eps_all] + (["AUC"] if with_auc else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for g in groups:
        cells = [g["attack"], g["head"]]
        for e in eps_all:
            if e not in g["eps"]:
                cells.append("")
                continue
            i = g["eps"].index(e)
            if metric is None:
                cells.append(_fmt(g["within_tolerance"][i], 3))
            elif metric in _SPREAD_METRICS:
                m = g["metrics"][metric]
                cells.append(f"{_fmt(m['mean'][i], digits)} ({_fmt(m['median'][i], digits)} / "
                             f"{_fmt(m['p95'][i], digits)})")
            else:
                cells.append(_fmt(g["metrics"][metric]["mean"][i], 3))
        if with_auc:
            cells.append(_fmt(g["auc"]["within_tolerance" if metric is None else metric], 4))
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return lines


# What each per_sample.csv column means; the report ends with these notes.
COLUMN_NOTES: dict[str, str] = {
    "sample_id, subject, level": "the test patch (index in the test split, its subject and disk level)",
    "sweep": "clean (no attack), ind (attack on the test patch) or ood (attack on a start image that is not spine MR)",
    "attack, norm, head": "the IND attack (linf, l2: PGD; autoattack_linf, autoattack_l2: the RegressionAutoAttack "
                          "ensemble) or the OOD start kind, the norm of its budget, the attacked "
                          "network head (points, seg or both)",
    "eps": "the budget in the attack's norm as the attack used it: the L-inf radius, or the absolute L2 radius",
    "eps_rms": "an L2 budget per pixel (RMS = eps / sqrt(H x W)); empty for L-inf and clean rows",
    "steps": "attack iterations (0 for rows without an attack)",
    "reference": "truth: metrics against the true contour and mask (clean, IND); target: against the network's own "
                 "output on a test patch (OOD), so small distances / high Dice mean the attack fooled the network",
    "point_error_px, point_error_mm": "mean distance of the 176 predicted points to the reference points (px, mm)",
    "polygon_dice": "Dice of the predicted contour's filled polygon with the reference mask",
    "seg_dice": "Dice of the segmentation head (logit > 0) with the reference mask; empty (-) without that head",
    "attack_loss": "the attack objective at the returned image; empty (nan) by design for clean rows and for OOD "
                   "budget 0, where no attack ran",
    "delta_linf, delta_l2": "size of the perturbation actually applied (image minus start image)",
    "member": "autoattack_* rows: the ensemble member whose result was this sample's worst case (apgd-<objective>, "
              "square, or clean when no member beat the clean image); empty for other rows",
    "within_tolerance": "1 when point_error_px <= the tolerance, else 0",
}
START_DISTANCE_NOTE = ("OOD budget 0 is the start-image distance: the network's output on the unattacked start "
                       "image (noise, box noise or a photograph) compared with the target. It is the baseline the "
                       "attack improves on: an attack that does not get well below it did not fool the network.")


def markdown_report(agg: Mapping, header_lines: Sequence[str] = (), spacing_mm: float | None = None) -> str:
    """The Markdown report: a table per metric, IND and OOD separately (their columns differ), then notes
    on every column. With spacing_mm 1 the mm tables equal the px tables and are left out."""
    tol = agg["tolerance_px"]
    skip = {"point_error_mm"} if spacing_mm is not None and float(spacing_mm) == 1.0 else set()
    out = list(header_lines)
    sections = [("ind", "IND sweep (PGD or the autoattack ensemble on test images; error vs the true contour; eps 0 = clean)"),
                ("ood", "OOD sweep (start images attacked towards the network's outputs on test images; "
                        "error vs that target; eps 0 = the start image before the attack)")]
    for sweep, title in sections:
        groups = [g for g in agg["groups"] if g["sweep"] == sweep]
        if not groups:
            continue
        out += ["", f"## {title}", ""]
        for metric, (name, lower_better) in METRICS.items():
            if metric in skip:
                continue  # 1 mm per pixel: the same numbers as the px table
            if all(not any(math.isfinite(v) for v in g["metrics"][metric]["mean"]) for g in groups):
                continue  # a head the network does not have
            spread = " - mean (median / 95th percentile)" if metric in _SPREAD_METRICS else " - mean"
            out += ["", f"### {name}{spread}", ""] + _table(groups, metric, 2, with_auc=sweep == "ind")
        out += ["", f"### Fraction of samples with point error <= {tol:g} px", ""] + \
            _table(groups, None, 3, with_auc=sweep == "ind")
    # The OOD curve has only "before" and one or a few budgets: its area says little, so it is in
    # aggregate.json only.
    out += ["", "## Notes", "",
            "- AUC (IND tables): area under the mean-vs-epsilon curve (trapezoid rule over the epsilons shown, eps 0 "
            "included); it depends on the grid, so compare AUCs of the same grid only.",
            "- Table cells: mean (median / 95th percentile) over the samples; `-` = no value by design (a head the "
            "network does not have, a budget a row was not run at)."]
    if skip:
        out.append("- Patch spacing is 1 mm/px: distances in mm equal those in px, so only the px tables are shown.")
    if any(g["sweep"] == "ood" for g in agg["groups"]):
        out.append(f"- {START_DISTANCE_NOTE}")
    out += ["", "Columns of `per_sample.csv`:", ""] + [f"- `{k}`: {v}" for k, v in COLUMN_NOTES.items()] + [""]
    return "\n".join(out)


def plot_curves(agg: Mapping, out_dir: str | Path) -> list[Path]:
    """PNGs of point error (mean and 95th percentile), Dice and the within-tolerance fraction vs epsilon.

    IND: one figure per attack ("ind_<attack>.png"), a line per attacked head. OOD: one figure
    ("ood.png"), a line per start image kind (and head, when several were attacked). A figure whose
    curves have a single budget each is not drawn: one point on an axis says nothing a table does not.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display on servers; must precede pyplot
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    figures: dict[str, list] = {}
    for g in agg["groups"]:
        name = f"ind_{g['attack']}" if g["sweep"] == "ind" else g["sweep"]
        figures.setdefault(name, []).append(g)
    paths = []
    for name, groups in figures.items():
        if all(len(g["eps"]) < 2 for g in groups):
            continue
        sweep = groups[0]["sweep"]
        several_heads = len({g["head"] for g in groups}) > 1
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
        for g in groups:
            label = g["head"] if sweep == "ind" else (f"{g['attack']} ({g['head']})" if several_heads else g["attack"])
            eps = g["eps"]
            line = axes[0].plot(eps, g["metrics"]["point_error_px"]["mean"], marker="o", label=f"{label} mean")[0]
            axes[0].plot(eps, g["metrics"]["point_error_px"]["p95"], ls="--", alpha=0.6, color=line.get_color(),
                         label=f"{label} 95th pct")
            axes[1].plot(eps, g["metrics"]["polygon_dice"]["mean"], marker="o", color=line.get_color(),
                         label=f"{label} polygon")
            axes[1].plot(eps, g["metrics"]["seg_dice"]["mean"], marker="s", ls=":", color=line.get_color(),
                         label=f"{label} seg head")
            axes[2].plot(eps, g["within_tolerance"], marker="o", color=line.get_color(), label=label)
        ref = "target" if sweep == "ood" else "truth"
        axes[0].set_ylabel(f"mean point distance to {ref} (px)")
        axes[1].set_ylabel(f"Dice vs {ref}")
        axes[2].set_ylabel(f"fraction within {agg['tolerance_px']:g} px")
        axes[2].set_ylim(-0.05, 1.05)
        for ax in axes:
            ax.set_xlabel(f"epsilon ({groups[0]['norm']}{', 0 = before the attack' if sweep == 'ood' else ', 0 = clean'})")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        title = (f"IND PGD ({groups[0]['attack']}): line = attacked head" if sweep == "ind"
                 else "OOD attack: line = start image kind")
        fig.suptitle(title)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        plt.close(fig)
        paths.append(atomic_write_bytes(out_dir / f"{name}.png", buf.getvalue()))
    return paths


def _git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    commit = out.stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                           capture_output=True, text=True, timeout=10)
    return commit + ("-dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")


def environment_info() -> dict:
    """Versions of the packages that produced the results, and the git commit when run from a checkout."""
    import platform

    import torch

    info = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("torch", "monai", "diskrobust", "numpy", "pytorch-ignite", "scikit-image", "kornia"):
        try:
            info[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            info[pkg] = None
    info["cuda"] = torch.version.cuda if torch.cuda.is_available() else None
    info["git_commit"] = _git_commit()
    return info

"""The study's tables, figures and Markdown report, read from each arm's evaluation results.

Rows are arms ({P3, P5, P10} x {std, rand, adv_r, adv_s, adv_rs}), columns the IND epsilons,
one table per metric, as in the paper; plus the OOD results per arm.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from diskrobust.study.grid import Arm, StudyConfig
from diskrobust.study.outcomes import ArmOutcome
from diskrobust.data.dataset_io import atomic_write_json, atomic_write_text

# metric -> (title, the attacked head whose curve the table shows, digits, lower is better)
STUDY_METRICS: dict[str, tuple[str, str, int, bool]] = {
    "point_error_px": ("Mean point distance (px) under PGD on the point head", "points", 2, True),
    "polygon_dice": ("Dice of the predicted contour's polygon under PGD on the point head", "points", 3, False),
    "seg_dice": ("Dice of the segmentation head under PGD on the segmentation head", "seg", 3, False),
}
OOD_METRICS = {"point_error_px": "point distance to the target (px)", "polygon_dice": "polygon Dice vs the target",
               "seg_dice": "seg Dice vs the target"}


def load_arm_aggregate(arm_dir: Path) -> dict | None:
    path = arm_dir / "eval" / "aggregate.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _ind_group(agg: dict, head: str, norm: str = "linf") -> dict | None:
    for g in agg.get("groups", []):
        if g["sweep"] == "ind" and g["head"] == head and (g.get("norm") == norm or g["attack"] == norm):
            return g
    return None


def _fmt(v: Any, digits: int) -> str:
    return "n/a" if v is None or not math.isfinite(float(v)) else f"{float(v):.{digits}f}"


def ind_table(results: dict[Arm, dict], metric: str) -> tuple[list[str], list[float]]:
    """Markdown lines of one metric's table and its epsilon columns."""
    title, head, digits, _ = STUDY_METRICS[metric]
    eps_all = sorted({e for agg in results.values() if (g := _ind_group(agg, head)) for e in g["eps"]})
    header = ["arm"] + [f"eps {e:g}" for e in eps_all] + ["AUC"]
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for arm, agg in results.items():
        g = _ind_group(agg, head)
        if g is None:
            lines.append("| " + " | ".join([arm.name] + ["n/a"] * (len(header) - 1)) + " |")
            continue
        cells = [arm.name]
        for e in eps_all:
            cells.append(_fmt(g["metrics"][metric]["mean"][g["eps"].index(e)], digits) if e in g["eps"] else "")
        cells.append(_fmt(g["auc"][metric], 4))
        lines.append("| " + " | ".join(cells) + " |")
    return lines, eps_all


def ood_table(results: dict[Arm, dict]) -> list[str]:
    """Per arm and start kind: how closely the attacked output matches its IND target (at the largest budget)."""
    lines = ["### OOD attack: how closely the output on an attacked non-spine image matches the IND target", "",
             "Lower point distance and higher Dice mean the network was fooled more completely.", "",
             "| arm | start | L2 eps | " + " | ".join(OOD_METRICS.values()) + " | start-image distance (px) |",
             "|---|---|---|" + "---|" * (len(OOD_METRICS) + 1)]
    for arm, agg in results.items():
        for g in agg.get("groups", []):
            if g["sweep"] != "ood":
                continue
            i = len(g["eps"]) - 1
            before = g["metrics"]["point_error_px"]["mean"][0] if g["eps"][0] == 0 else float("nan")
            cells = [arm.name, g["attack"], f"{g['eps'][i]:g}"]
            cells += [_fmt(g["metrics"][m]["mean"][i], 2 if m == "point_error_px" else 3) for m in OOD_METRICS]
            cells.append(_fmt(before, 2))
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def plot_error_curves(results: dict[Arm, dict], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = sorted({a.shape_modes for a in results})
    fig, axes = plt.subplots(1, len(levels), figsize=(4.5 * len(levels), 3.8), sharey=True, squeeze=False)
    for ax, k in zip(axes[0], levels):
        for arm, agg in results.items():
            g = _ind_group(agg, "points")
            if arm.shape_modes != k or g is None:
                continue
            ax.plot(g["eps"], g["metrics"]["point_error_px"]["mean"], marker="o", label=arm.method)
        ax.set_title(f"P{k}")
        ax.set_xlabel("L-inf epsilon")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("mean point distance (px)")
    axes[0][-1].legend(fontsize=8)
    fig.suptitle("IND PGD on the point head: error vs budget")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_shape_variation(results: dict[Arm, dict], out: Path, eps: float = 0.07) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    methods = list(dict.fromkeys(a.method for a in results))
    for method in methods:
        xs, ys = [], []
        for arm, agg in sorted(results.items(), key=lambda kv: kv[0].shape_modes):
            g = _ind_group(agg, "points")
            if arm.method != method or g is None:
                continue
            # nearest evaluated epsilon to the paper's training budget
            i = int(np.argmin([abs(e - eps) for e in g["eps"]]))
            xs.append(arm.shape_modes)
            ys.append(g["metrics"]["point_error_px"]["mean"][i])
        if xs:
            ax.plot(xs, ys, marker="o", label=method)
    ax.set_xlabel("PCA modes in the shape augmentation")
    ax.set_ylabel(f"mean point distance (px) at eps {eps:g}")
    ax.set_title("Robustness vs shape variation")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def write_study_report(cfg: StudyConfig, outcomes: list[ArmOutcome]) -> Path:
    """Write tables (Markdown + JSON), figures and report.md under cfg.output_dir; return report.md."""
    out = cfg.output_dir
    results = {o.arm: agg for o in outcomes
               if o.status in ("done", "skipped") and (agg := load_arm_aggregate(cfg.arm_dir(o.arm))) is not None
               and (o.arm.method in cfg.methods)}
    lines = [f"# Study report: {cfg.name}", ""]
    if cfg.description:
        lines += [cfg.description, ""]
    if cfg.reduced:
        lines += ["**Reduced from the paper's protocol in this profile:**", ""] + [f"- {r}" for r in cfg.reduced] + [""]
    lines += ["## Arms", "", "| arm | status | train + evaluate (s) | tries (train, evaluate) |", "|---|---|---|---|"]
    for o in outcomes:
        status = o.status if o.status != "failed" else "FAILED: " + (o.error.splitlines() or [""])[0]
        tries = ", ".join(str(o.attempts.get(s, "-")) for s in ("train", "evaluate")) if o.attempts else ""
        lines.append(f"| {o.arm.name} | {status} | {_fmt(sum(o.stages.values()), 0) if o.stages else ''} | {tries} |")
    lines += ["", f"Each arm's logs, checkpoints and TensorBoard events lie under `{out / 'arms'}`; "
              f"compare them with `tensorboard --logdir {out / 'arms'}`.", ""]
    tables: dict[str, Any] = {}
    if results:
        lines += ["## IND robustness (PGD, L-inf)", ""]
        for metric in STUDY_METRICS:
            table, eps = ind_table(results, metric)
            lines += table + [""]
            tables[metric] = {arm.name: (g := _ind_group(agg, STUDY_METRICS[metric][1])) and
                              {"eps": g["eps"], "mean": g["metrics"][metric]["mean"], "auc": g["auc"][metric]}
                              for arm, agg in results.items()}
        lines += ["## OOD attack", ""] + ood_table(results) + [""]
        figs = [plot_error_curves(results, out / "error_vs_eps.png"), plot_shape_variation(results, out / "shape_variation.png")]
        lines += ["## Figures", ""] + [f"![{p.stem}]({p.name})" for p in figs] + [""]
    else:
        lines += ["No arm finished its evaluation: no tables."]
    if cfg.statistics:
        findings_lines, tables["findings"] = findings_section(cfg, outcomes)
        lines += findings_lines
    atomic_write_json(out / "study_tables.json", {"config": cfg.to_dict(), "tables": tables,
                                                  "arms": {o.arm.name: o.status for o in outcomes},
                                                  "attempts": {o.arm.name: o.attempts for o in outcomes}})
    report = out / "report.md"
    atomic_write_text(report, "\n".join(lines) + "\n")
    return report


def findings_section(cfg: StudyConfig, outcomes: list[ArmOutcome]) -> tuple[list[str], list[dict]]:
    """The findings of the profile's `statistics` section, decided from every seed's per-sample rows
    (`diskrobust.study.statistics`); a finding whose arms have no results says so instead."""
    from diskrobust.study.statistics import (StatisticsConfig, decide_finding, finding_markdown,
                                             findings_summary_markdown, load_arm_rows, paired_matrices)

    stats = StatisticsConfig.from_dict(cfg.statistics)
    csvs: dict[str, dict[int, Path]] = {}
    for o in outcomes:
        path = cfg.arm_dir(o.arm) / "eval" / "per_sample.csv"
        if o.status in ("done", "skipped") and path.is_file() and o.arm.seed is not None:
            csvs.setdefault(o.arm.design_name, {})[o.arm.seed] = path
    rows = load_arm_rows(csvs)
    for o in outcomes:  # OOD budget rows (robustness.ood_budget.finding_rows), where a run wrote them
        extra = cfg.arm_dir(o.arm) / "ood_budget" / "finding_rows.csv"
        if o.arm.seed is not None and extra.is_file() and o.arm.seed in rows.get(o.arm.design_name, {}):
            rows[o.arm.design_name][o.arm.seed] += load_arm_rows({"x": {0: extra}})["x"][0]
    lines = ["## Findings", "", f"Bootstrap ({stats.scheme}: seeds, then disks; {stats.n_boot} replicates), "
             f"{stats.level:.0%} intervals, Holm over the eps values at alpha {stats.alpha:g}.", ""]
    decided, detail, out = [], [], []
    for spec in stats.findings:
        try:
            a_by, b_by = paired_matrices(rows, spec)
        except ValueError as err:
            detail += [f"**{spec.id}: {spec.claim}: not decided** ({err}).", ""]
            out.append({"id": spec.id, "verdict": "not decided", "reason": str(err)})
            continue
        res = decide_finding(spec, a_by, b_by, stats.alpha, stats.level, stats.n_boot, stats.seed, stats.scheme)
        decided.append(res)
        detail += finding_markdown(res) + [""]
        out.append(res.to_dict())
    if decided:
        lines += findings_summary_markdown(decided) + [""]
    if cfg.baselines.get("mean_shape"):
        lines += _mean_shape_lines(cfg, outcomes)
    return lines + detail, out


def _mean_shape_lines(cfg: StudyConfig, outcomes: list[ArmOutcome]) -> list[str]:
    """The constant mean-shape predictor per training-set size, on the test patches the arms were evaluated on."""
    from diskrobust.robustness.baselines import mean_shape_baseline
    from diskrobust.study.statistics import bootstrap_estimate

    lines = ["### Baseline: the constant mean training shape", "",
             "| training subjects | test disks | mean point distance (px), 95 % interval over disks | polygon Dice |",
             "|---|---|---|---|"]
    done: set[int] = set()
    for o in outcomes:
        arm_dir = cfg.arm_dir(o.arm)
        pca, info = arm_dir / "models" / "shape_pca.npz", arm_dir / "eval" / "config.json"
        if o.arm.train_subjects in done or o.status not in ("done", "skipped") or not pca.is_file() or \
                not info.is_file():
            continue
        done.add(o.arm.train_subjects)
        n = int(json.loads(info.read_text())["num_test_samples"])
        rows = mean_shape_baseline(cfg.dataset_dir / "datalist.json", pca, int(cfg.train.get("patch_size", 128)),
                                   float(cfg.train.get("patch_spacing_mm", 0.5)), n)
        est = bootstrap_estimate([r["point_error_px"] for r in rows], n_boot=1000)
        dice = float(np.mean([r["polygon_dice"] for r in rows]))
        lines.append(f"| {o.arm.train_subjects} | {len(rows)} | {est.text(2)} | {dice:.3f} |")
    return lines + [""] if done else []


def summary_lines(cfg: StudyConfig, outcomes: list[ArmOutcome]) -> list[str]:
    """What the console shows at the end: one row per arm, the path of every report, TensorBoard."""
    counts = {s: sum(o.status == s for o in outcomes) for s in ("done", "skipped", "failed")}
    width = max(len(o.arm.name) for o in outcomes)
    lines = [f"study {cfg.name}: {counts['done']} done, {counts['skipped']} finished earlier, {counts['failed']} failed",
             f"  {'arm':<{width}}  {'status':<8} {'train s':>8} {'eval s':>8}  tries"]
    for o in outcomes:
        tries = "/".join(str(o.attempts.get(s, "-")) for s in ("train", "evaluate")) if o.attempts else "-"
        secs = [f"{o.stages[s]:8.0f}" if s in o.stages else f"{'-':>8}" for s in ("train", "evaluate")]
        lines.append(f"  {o.arm.name:<{width}}  {o.status:<8} {secs[0]} {secs[1]}  {tries}")
        if o.status == "failed":
            lines.append(f"  {'':<{width}}  {(o.error.splitlines() or [''])[0]}")
    lines.append("reports:")
    lines.append(f"  {cfg.output_dir / 'report.md'}")
    lines += [f"  {p}" for o in outcomes if (p := cfg.arm_dir(o.arm) / "eval" / "report.md").is_file()]
    lines.append(f"TensorBoard: tensorboard --logdir {cfg.output_dir / 'arms'}")
    return lines

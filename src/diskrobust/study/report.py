"""The study's tables, figures and Markdown report, read from each arm's evaluation results.

Rows are arms ({P3, P5, P10} x {std, rand, adv_r, adv_s, adv_rs}), columns the IND epsilons,
one table per metric, as in the paper, each arm followed by the same network on uniform noise of
the same budget (`arms/<arm>/uniform_noise/linf/`, where the profile asks for it); plus the OOD
results per arm and the OOD budget each arm needs (`arms/<arm>/ood_budget/`: a table per arm,
start kind and random-start setting, and the success rate vs budget curves).
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


def load_noise_aggregate(arm_dir: Path, norm: str = "linf") -> dict | None:
    """The uniform-noise baseline's curves of one arm (`study/measure.py uniform-noise`), if measured."""
    path = arm_dir / "uniform_noise" / norm / "aggregate.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _noise_group(agg: dict | None, norm: str = "linf") -> dict | None:
    for g in (agg or {}).get("groups", []):
        if g["attack"] == f"uniform_{norm}":
            return g
    return None


def ind_table(results: dict[Arm, dict], metric: str, noise: dict[Arm, dict] | None = None
              ) -> tuple[list[str], list[float]]:
    """Markdown lines of one metric's table and its epsilon columns; `noise` (arm -> uniform-noise aggregate)
    adds a row under each arm: the same network on the test patches plus uniform L-inf noise of each eps."""
    title, head, digits, _ = STUDY_METRICS[metric]
    eps_all = sorted({e for agg in results.values() if (g := _ind_group(agg, head)) for e in g["eps"]})
    header = ["arm"] + [f"eps {e:g}" for e in eps_all] + ["AUC"]
    lines = [f"### {title}", ""]
    if noise:
        lines += ["Under each arm, *+ uniform noise*: the same network on the test patches plus uniform noise "
                  "U[-eps, eps] per pixel (the budget of the PGD column, no attack): PGD must beat it by far to be "
                  "called an attack.", ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
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
        n = _noise_group((noise or {}).get(arm))
        if n is not None:
            cells = [f"{arm.name} + uniform noise"] + [_fmt(n["metrics"][metric]["mean"][n["eps"].index(e)], digits)
                                                      if e in n["eps"] else "" for e in eps_all] + [""]
            lines.append("| " + " | ".join(cells) + " |")
    return lines, eps_all


def ood_table(results: dict[Arm, dict]) -> list[str]:
    """Per arm and start kind: how closely the attacked output matches its IND target (at the largest budget)."""
    title = ["### OOD attack: how closely the output on an attacked non-spine image matches the IND target", ""]
    rows = []
    for arm, agg in results.items():
        for g in agg.get("groups", []):
            if g["sweep"] != "ood":
                continue
            i = len(g["eps"]) - 1
            before = g["metrics"]["point_error_px"]["mean"][0] if g["eps"][0] == 0 else float("nan")
            cells = [arm.name, g["attack"], f"{g['eps'][i]:g}"]
            cells += [_fmt(g["metrics"][m]["mean"][i], 2 if m == "point_error_px" else 3) for m in OOD_METRICS]
            cells.append(_fmt(before, 2))
            rows.append("| " + " | ".join(cells) + " |")
    if not rows:
        # an empty table reads as "the OOD attack ran and found nothing"; the findings profiles switch
        # the fixed-budget sweep off on purpose and measure the OOD attack by the budget it needs
        return title + ["No arm ran the OOD attack at a fixed budget (the profile's evaluation has `ood.enabled` "
                        "false); where the profile lists an `ood_budget`, the OOD attack is measured by the budget it "
                        "needs: see the next section."]
    return title + ["Lower point distance and higher Dice mean the network was fooled more completely.", "",
                    "| arm | start | L2 eps | " + " | ".join(OOD_METRICS.values()) + " | start-image distance (px) |",
                    "|---|---|---|" + "---|" * (len(OOD_METRICS) + 1)] + rows


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


START_DISTANCE_TEXT = (
    "The *start-image distance* is the mean point distance between the network's output on the unperturbed "
    "start image (the noise or photograph before any attack) and the target (the network's own output on a real "
    "test patch): how far the network's answer on a non-spine image already is from a real disk's. A target whose "
    "start is already within tolerance needs budget 0; the larger this distance, the more the attack has to move "
    "the output, so compare budgets between arms together with it.")


def _budget_rows(arm_dir: Path) -> tuple[list[dict], dict] | None:
    """(rows, summary) of one arm's OOD budget search (`study/measure.py ood-budget`), if it ran."""
    from diskrobust.robustness.results import read_rows_csv

    rows_csv, summary = arm_dir / "ood_budget" / "rows.csv", arm_dir / "ood_budget" / "summary.json"
    if not (rows_csv.is_file() and summary.is_file()):
        return None
    rows = read_rows_csv(rows_csv)
    for r in rows:
        r["random_start"] = str(r["random_start"]) == "True"
        r["sample_id"] = int(r["sample_id"])
        for k in ("rms_needed", "rms_max", "start_point_distance_px"):
            r[k] = float(r[k])
    return rows, json.loads(summary.read_text())


def ood_budget_section(cfg: StudyConfig, outcomes: list[ArmOutcome]) -> tuple[list[str], dict, Path | None]:
    """The OOD budget per arm (over its seeds), start kind and random-start setting: Markdown lines, the
    numbers for study_tables.json, and the success-rate vs budget plot (None when no arm ran the search)."""
    from diskrobust.robustness.ood_budget import budget_summary, rms_to_l2, success_curve
    from diskrobust.study.statistics import bootstrap_estimate

    groups: dict[tuple[str, str, bool], dict[int, list[dict]]] = {}
    info: dict = {}
    for o in outcomes:
        got = _budget_rows(cfg.arm_dir(o.arm)) if o.status in ("done", "skipped") else None
        if got is None:
            continue
        rows, info = got
        for r in rows:
            groups.setdefault((o.arm.design_name, r["start"], r["random_start"]), {}).setdefault(
                o.arm.seed or 0, []).append(r)
    if not groups:
        return [], {}, None
    shape = tuple(info["shape"])
    curve_rms = [float(b) for b in info["curve_rms"]]
    stats = cfg.statistics or {}
    n_boot, level = int(stats.get("n_boot", 2000)), float(stats.get("level", 0.95))
    lines = ["## OOD budget: the per-pixel RMS the attack needs", "",
             f"Per target, the smallest per-pixel RMS budget at which the OOD attack brings the output within "
             f"tolerance ({info['tolerance']}) of the target, by bisection up to rms_max "
             f"{float(info['settings']['rms_max']):g} ({info['settings']['iterations']} halvings, "
             f"{info['settings']['steps']} attack steps per try); *from start*: the attack starts at the start image, "
             f"*random start*: at a random point of the ball. Absolute L2 = RMS x {math.sqrt(shape[0] * shape[1]):g} "
             f"on these {shape[0]} x {shape[1]} patches. The mean counts a target not reached at rms_max (a lower "
             f"bound); its interval is a {level:.0%} bootstrap over seeds, then targets (targets only with one seed).",
             "", START_DISTANCE_TEXT, "",
             "| arm | start | attack start | seeds x targets | reached | mean RMS needed [interval] | median RMS (L2) | "
             "start-image distance (px) |", "|---|---|---|---|---|---|---|---|"]
    table, curves = {}, {}
    for (arm, start, rs), by_seed in sorted(groups.items()):
        seeds = sorted(by_seed)
        pooled = [r for s in seeds for r in by_seed[s]]
        summary = budget_summary(pooled)
        cap = float(pooled[0]["rms_max"])
        sizes = {len(by_seed[s]) for s in seeds}
        est = None
        if len(sizes) == 1:
            matrix = [[min(float(r["rms_needed"]), cap) for r in sorted(by_seed[s], key=lambda r: r["sample_id"])]
                      for s in seeds]
            est = bootstrap_estimate(matrix, level, n_boot, seed=0)
        curve = [float(v) for v in np.mean([success_curve(by_seed[s], curve_rms) for s in seeds], axis=0)]
        label = f"{arm} / {start} / {'random start' if rs else 'from start'}"
        curves[label] = curve
        med = summary["rms_median"]
        med_text = "not reached" if med == math.inf else f"{med:.4f} ({rms_to_l2(med, shape):.2f})"
        lines.append(f"| {arm} | {start} | {'random' if rs else 'from start'} | {len(seeds)} x {sizes.pop() if len(sizes) == 1 else '?'} "
                     f"| {summary['reached']:.0%} | {est.text(4) if est else 'n/a (seeds with different targets)'} | "
                     f"{med_text} | {_fmt(summary['start_point_distance_px_mean'], 2)} |")
        table[label] = {"arm": arm, "start": start, "random_start": rs, "seeds": seeds, "summary": summary,
                        "mean_rms_needed": est.to_dict() if est else None, "curve": curve}
    png = plot_budget_curves(curves, curve_rms, shape, cfg.output_dir / "ood_budget_curves.png")
    lines += ["", f"![ood_budget_curves]({png.name})", ""]
    return lines, {"curve_rms": curve_rms, "shape": list(shape), "tolerance": info["tolerance"], "rows": table}, png


def plot_budget_curves(curves: dict[str, list[float]], curve_rms: list[float], shape, out: Path) -> Path:
    """Success rate (targets within tolerance) vs per-pixel RMS budget, one line per arm x start x random start."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for label, curve in curves.items():
        ax.plot(curve_rms, curve, marker="o", linestyle="--" if label.endswith("random start") else "-", label=label)
    ax.set_xlabel(f"per-pixel RMS budget (absolute L2 = RMS x {math.sqrt(shape[0] * shape[1]):g} at "
                  f"{shape[0]} x {shape[1]})")
    ax.set_ylabel("targets reached (fraction)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("OOD attack: success rate vs budget")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
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
        noise = {arm: agg for arm in results if (agg := load_noise_aggregate(cfg.arm_dir(arm))) is not None}
        lines += ["## IND robustness (PGD, L-inf)", ""]
        for metric in STUDY_METRICS:
            table, eps = ind_table(results, metric, noise)
            lines += table + [""]
            tables[metric] = {arm.name: (g := _ind_group(agg, STUDY_METRICS[metric][1])) and
                              {"eps": g["eps"], "mean": g["metrics"][metric]["mean"], "auc": g["auc"][metric]}
                              for arm, agg in results.items()}
        if noise:
            tables["uniform_noise"] = {arm.name: {"eps": g["eps"], **{m: g["metrics"][m]["mean"] for m in STUDY_METRICS}}
                                       for arm, agg in noise.items() if (g := _noise_group(agg)) is not None}
        lines += ["## OOD attack", ""] + ood_table(results) + [""]
        figs = [plot_error_curves(results, out / "error_vs_eps.png"), plot_shape_variation(results, out / "shape_variation.png")]
        budget_lines, tables["ood_budget"], curve_png = ood_budget_section(cfg, outcomes)
        if budget_lines:
            lines += budget_lines
            figs.append(curve_png)
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
    from diskrobust.study.statistics import (StatisticsConfig, censoring, decide_finding, finding_markdown,
                                             findings_summary_markdown, load_arm_rows, paired_matrices)

    stats = StatisticsConfig.from_dict(cfg.statistics)
    csvs: dict[str, dict[int, Path]] = {}
    for o in outcomes:
        path = cfg.arm_dir(o.arm) / "eval" / "per_sample.csv"
        if o.status in ("done", "skipped") and path.is_file() and o.arm.seed is not None:
            csvs.setdefault(o.arm.design_name, {})[o.arm.seed] = path
    rows = load_arm_rows(csvs)
    noise_norms = list((cfg.baselines.get("uniform_noise") or {}))
    for o in outcomes:  # OOD budget rows (robustness.ood_budget.finding_rows) and uniform-noise rows, where written
        extras = [cfg.arm_dir(o.arm) / "ood_budget" / "finding_rows.csv"]
        extras += [cfg.arm_dir(o.arm) / "uniform_noise" / norm / "per_sample.csv" for norm in noise_norms]
        for extra in extras:
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
        res = decide_finding(spec, a_by, b_by, stats.alpha, stats.level, stats.n_boot, stats.seed, stats.scheme,
                             censoring(rows, spec))
        decided.append(res)
        detail += finding_markdown(res, digits=4 if spec.sweep == "ood_budget" else 2) + [""]
        out.append(res.to_dict())
    if decided:
        lines += findings_summary_markdown(decided) + [""]
    if cfg.baselines.get("mean_shape"):
        lines += _mean_shape_lines(cfg, outcomes)
    if "linf" in noise_norms:
        lines += _noise_vs_pgd_lines(stats, rows, [float(e) for e in cfg.baselines["uniform_noise"]["linf"]])
    return lines + detail, out


def _noise_vs_pgd_lines(stats, rows: dict, eps_values: list[float]) -> list[str]:
    """Per design arm and eps: the point error under PGD (points head) and under uniform noise of the same
    L-inf budget, each the mean over seeds and test disks with its bootstrap interval."""
    from diskrobust.study.statistics import FindingSpec, bootstrap_estimate, values_matrix

    def estimate(by_seed, sweep, attack, head, eps):
        spec = FindingSpec("", "", "a", "b", "point_error_px", "less", 1.0, sweep, attack, head, [eps])
        try:
            matrix, _, _ = values_matrix(by_seed, spec, eps)
            return bootstrap_estimate(matrix, stats.level, stats.n_boot, stats.seed, stats.scheme).text(2)
        except ValueError:  # this arm lacks the rows (e.g. a seed without its baseline)
            return "n/a"

    body = []
    for arm, by_seed in rows.items():
        noise = [estimate(by_seed, "baseline", "uniform_linf", "none", e) for e in eps_values]
        if all(c == "n/a" for c in noise):
            continue
        body.append(f"| {arm} | PGD (points head) | " + " | ".join(estimate(by_seed, "ind", "linf", "points", e)
                                                               for e in eps_values) + " |")
        body.append(f"| {arm} | uniform noise | " + " | ".join(noise) + " |")
    if not body:
        return []
    return ["### Baseline: uniform noise of the same budget next to PGD", "",
            f"Mean point distance (px) over seeds and test disks, {stats.level:.0%} bootstrap intervals; uniform "
            "noise: U[-eps, eps] per pixel added to the test patch (clipped to [0, 1]), nothing attacked.", "",
            "| arm | perturbation | " + " | ".join(f"eps {e:g}" for e in eps_values) + " |",
            "|---|---|" + "---|" * len(eps_values)] + body + [""]


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

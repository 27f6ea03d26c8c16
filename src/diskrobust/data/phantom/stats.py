"""How varied is a dataset's disk population? ``python -m diskrobust phantom-stats DIR``.

From the contour files alone (phantom.json adds the lordosis and the findings when present):

* per level: AP length and anterior / middle / posterior height (mean, SD) next to the published values;
* lordosis distribution;
* contour PCA in the patch frame (the network's view: 176 points in patch px, patch centred on the disk's
  area centroid, ``patch_size`` px at ``patch_spacing_mm``), fitted on the training split;
* Procrustes spread: rotation and translation removed (scale kept), the mean point distance to the mean
  shape, and the share of that variance beyond mode 3;
* held-out residual: validation + test shapes projected on the first 3, 5, 10 modes of the training PCA,
  mean point distance to the projection (median over shapes), px and mm.

The go/no-go gate of the study (issue 13): the median held-out residual after 3 modes is at least
``GATE_RESIDUAL_P3_PX`` patch px and at least ``GATE_BEYOND3`` of the Procrustes variance lies beyond mode 3.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from diskrobust.data.errors import DataError

from .config import DISK_LEVELS, PUBLISHED_DISK_GEOMETRY, PUBLISHED_LORDOSIS_DEG

__all__ = ["disk_measures", "load_contours", "population_stats", "write_stats", "GATE_RESIDUAL_P3_PX", "GATE_BEYOND3"]

GATE_RESIDUAL_P3_PX = 1.0
GATE_BEYOND3 = 0.12
MEASURES = ("length", "anterior", "middle", "posterior")
MODES_REPORTED = (3, 5, 10)


def disk_measures(p: np.ndarray) -> dict[str, float]:
    """AP length and heights (units of ``p``) of a 176-point contour: corner to corner, endplate midpoints."""
    p = np.asarray(p, dtype=np.float64)
    return {
        "length": float(np.linalg.norm((p[0] + p[44]) / 2 - (p[88] + p[132]) / 2)),
        "anterior": float(np.linalg.norm(p[0] - p[44])),
        "middle": float(np.linalg.norm(p[66] - p[154])),
        "posterior": float(np.linalg.norm(p[88] - p[132])),
    }


def _centroid(p: np.ndarray) -> np.ndarray:
    x, y = p[:, 0], p[:, 1]
    xn, yn = np.roll(x, -1), np.roll(y, -1)
    cross = x * yn - xn * y
    a = cross.sum() / 2.0
    if abs(a) < 1e-12:
        return p.mean(0)
    return np.array([((x + xn) * cross).sum(), ((y + yn) * cross).sum()]) / (6.0 * a)


def load_contours(dataset_dir: str | Path) -> dict:
    """Every disk of the dataset: {"split", "subject", "level", "points_mm" (176, 2)} and phantom.json (or None).

    Uses contours_exact/ (the truth) when the datalist names it (annotation noise on).
    """
    d = Path(dataset_dir)
    dl = d / "datalist.json"
    if not dl.is_file():
        raise DataError(d, "no datalist.json: not a dataset folder (make one with `python -m diskrobust phantom --out DIR`)")
    try:
        doc = json.loads(dl.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(dl, f"not valid JSON ({err})") from err
    disks = []
    for split, entries in doc.items():
        for e in entries:
            rel = e.get("contours_exact") or e.get("contours")
            if rel is None:
                continue
            path = d / rel
            if not path.is_file():
                raise DataError(dl, f"entry {e.get('subject')!r}: contours file missing: {path}")
            c = json.loads(path.read_text(encoding="utf-8"))
            for disk in c["disks"]:
                disks.append({"split": split, "subject": c.get("subject", e.get("subject")), "level": disk["level"], "points_mm": np.asarray(disk["points_mm"], dtype=np.float64)})
    if not disks:
        raise DataError(dl, "the datalist names no contour files")
    meta = None
    if (d / "phantom.json").is_file():
        meta = json.loads((d / "phantom.json").read_text(encoding="utf-8"))
    return {"disks": disks, "phantom": meta}


def _patch_frame(points_mm: np.ndarray, patch_size: int, patch_spacing_mm: float) -> np.ndarray:
    return (points_mm - _centroid(points_mm)) / patch_spacing_mm + patch_size / 2.0


def _pca(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mean = x.mean(0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    var = s**2 / max(len(x) - 1, 1)
    return mean, var, vt


def _residual(y: np.ndarray, mean: np.ndarray, vt: np.ndarray, k: int) -> np.ndarray:
    """Mean point distance (per shape) between shapes (M, 352) and their projection on k modes."""
    c = y - mean
    basis = vt[:k]
    r = c - (c @ basis.T) @ basis
    return np.linalg.norm(r.reshape(len(y), -1, 2), axis=2).mean(1)


def _procrustes(shapes: np.ndarray, iterations: int = 6) -> np.ndarray:
    """Shapes (N, 176, 2) with translation and rotation removed (scale kept), aligned to their mean."""
    s = shapes - shapes.mean(1, keepdims=True)
    ref = s[0]
    for _ in range(iterations):
        out = np.empty_like(s)
        for i, x in enumerate(s):
            u, _, vt = np.linalg.svd(x.T @ ref)
            r = u @ vt
            if np.linalg.det(r) < 0:  # a rotation, never a reflection
                u[:, -1] *= -1
                r = u @ vt
            out[i] = x @ r
        ref = out.mean(0)
    return out


def population_stats(dataset_dir: str | Path, patch_size: int = 128, patch_spacing_mm: float = 0.5) -> dict:
    """Everything phantom-stats reports, as a JSON-ready dict (see the module doc)."""
    data = load_contours(dataset_dir)
    return stats_from_disks(data["disks"], data["phantom"], str(dataset_dir), patch_size, patch_spacing_mm)


def stats_from_disks(disks: list[dict], meta: dict | None = None, name: str = "", patch_size: int = 128, patch_spacing_mm: float = 0.5) -> dict:
    """``population_stats`` of disks {"split", "subject", "level", "points_mm"} (and phantom.json's content)."""
    levels = [lv for lv in DISK_LEVELS if any(d["level"] == lv for d in disks)] + sorted({d["level"] for d in disks} - set(DISK_LEVELS))
    per_level = {}
    for lv in levels:
        m = [disk_measures(d["points_mm"]) for d in disks if d["level"] == lv]
        row = {"n": len(m)}
        for k in MEASURES:
            v = np.array([x[k] for x in m])
            row[k] = {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "p5": float(np.percentile(v, 5)), "p95": float(np.percentile(v, 95))}
            if lv in PUBLISHED_DISK_GEOMETRY:
                row[k]["published_mean"], row[k]["published_sd"] = PUBLISHED_DISK_GEOMETRY[lv][k]
        per_level[lv] = row
    # lordosis: phantom.json's L1-S1 angle, else the angle between the L5/S1 and L1/L2 endplates of the contours
    lordosis, source = [], "phantom.json (L1-S1, Cobb)"
    if meta and meta.get("subject_params"):
        lordosis = [float(r["params"]["lordosis_deg"]) for r in meta["subject_params"] if "lordosis_deg" in r.get("params", {})]
    if not lordosis:
        source = "contours (L5/S1 inferior to L1/L2 superior endplate)"
        by_subj: dict[str, dict] = {}
        for d in disks:
            by_subj.setdefault(d["subject"], {})[d["level"]] = d["points_mm"]
        for lv in by_subj.values():
            if "L5/S1" in lv and "L1/L2" in lv:
                a, b = lv["L5/S1"], lv["L1/L2"]
                v1, v2 = a[88] - a[44], b[132] - b[0]  # image y grows inferior
                ang1, ang2 = math.degrees(math.atan2(-v1[1], v1[0])), math.degrees(math.atan2(-v2[1], v2[0]))
                lordosis.append(ang1 - ang2)
    lord = np.array(lordosis) if lordosis else np.zeros(0)
    lordosis_stats = {"source": source, "n": int(len(lord)), "published_mean": PUBLISHED_LORDOSIS_DEG[0], "published_sd": PUBLISHED_LORDOSIS_DEG[1]}
    if len(lord):
        lordosis_stats.update(mean=float(lord.mean()), sd=float(lord.std(ddof=1)) if len(lord) > 1 else 0.0,
                              p5=float(np.percentile(lord, 5)), p50=float(np.median(lord)), p95=float(np.percentile(lord, 95)), values=[round(float(x), 2) for x in lord])
    # findings per level (phantom only)
    findings: dict[str, dict[str, int]] = {}
    if meta and meta.get("subject_params"):
        for r in meta["subject_params"]:
            for dp in r["params"].get("disks", []):
                if dp.get("level") in per_level:
                    for f in dp.get("findings", []):
                        findings.setdefault(dp["level"], {}).setdefault(f, 0)
                        findings[dp["level"]][f] += 1
    # shapes in the patch frame
    train = np.array([_patch_frame(d["points_mm"], patch_size, patch_spacing_mm) for d in disks if d["split"] == "training"])
    held = np.array([_patch_frame(d["points_mm"], patch_size, patch_spacing_mm) for d in disks if d["split"] != "training"])
    if len(train) < 12:
        raise DataError(name or None, f"only {len(train)} training disks: the PCA needs at least 12 (make more subjects)")
    mean, var, vt = _pca(train.reshape(len(train), -1))
    ratio = var / var.sum()
    pca = {"n_train": int(len(train)), "n_heldout": int(len(held)), "explained_ratio": [float(x) for x in ratio[:30]],
           "cumulative": [float(x) for x in np.cumsum(ratio)[:30]], "std_px": [float(x) for x in np.sqrt(var[:30])]}
    residual = {}
    if len(held):
        for k in range(1, min(30, len(var)) + 1):
            r = _residual(held.reshape(len(held), -1), mean, vt, k)
            residual[str(k)] = {"median_px": float(np.median(r)), "mean_px": float(r.mean()), "median_mm": float(np.median(r) * patch_spacing_mm), "mean_mm": float(r.mean() * patch_spacing_mm)}
    # rotation-removed spread (mm), all disks
    shapes_mm = np.array([d["points_mm"] for d in disks])
    aligned = _procrustes(shapes_mm)
    dist = np.linalg.norm(aligned - aligned.mean(0), axis=2)
    _, pvar, _ = _pca(aligned.reshape(len(aligned), -1))
    pratio = pvar / pvar.sum()
    procrustes = {"n": int(len(aligned)), "mean_point_distance_mm": float(dist.mean(1).mean()), "rms_mm": float(np.sqrt((dist**2).mean())),
                  "explained_ratio": [float(x) for x in pratio[:30]], "beyond_mode3": float(1.0 - pratio[:3].sum())}
    res3 = residual.get("3", {}).get("median_px", float("nan"))
    gate = {
        "residual_p3_median_px": res3, "residual_p3_threshold_px": GATE_RESIDUAL_P3_PX,
        "beyond_mode3": procrustes["beyond_mode3"], "beyond_mode3_threshold": GATE_BEYOND3,
        "passes": bool(res3 >= GATE_RESIDUAL_P3_PX and procrustes["beyond_mode3"] >= GATE_BEYOND3),
    }
    return {"dataset": name, "patch_size": patch_size, "patch_spacing_mm": patch_spacing_mm, "disks": len(disks),
            "subjects": len({d["subject"] for d in disks}), "per_level": per_level, "lordosis": lordosis_stats, "findings": findings,
            "pca_patch": pca, "heldout_residual": residual, "procrustes": procrustes, "gate": gate}


def gate_line(stats: dict) -> str:
    g = stats["gate"]
    verdict = "HOLDS" if g["passes"] else "FAILS"
    return (f"go/no-go gate {verdict}: held-out residual outside the P3 span {g['residual_p3_median_px']:.2f} px median "
            f"(need >= {g['residual_p3_threshold_px']:.1f} px = {g['residual_p3_threshold_px'] * stats['patch_spacing_mm']:.2f} mm), "
            f"Procrustes variance beyond mode 3 {100 * g['beyond_mode3']:.1f} % (need >= {100 * g['beyond_mode3_threshold']:.0f} %)")


def to_markdown(stats: dict) -> str:
    sp = stats["patch_spacing_mm"]
    lines = [f"# Disk population of `{stats['dataset']}`", "",
             f"{stats['subjects']} subjects, {stats['disks']} disks; patch frame {stats['patch_size']} px at {sp} mm/px.", "",
             f"**{gate_line(stats)}**", "", "## Per level (mm): mean (SD); published mean (SD) in brackets", "",
             "| level | n | AP length | anterior height | middle height | posterior height |", "|---|---|---|---|---|---|"]
    for lv, row in stats["per_level"].items():
        cells = []
        for k in MEASURES:
            c = row[k]
            pub = f" [{c['published_mean']:.1f} ({c['published_sd']:.1f})]" if "published_mean" in c else ""
            cells.append(f"{c['mean']:.1f} ({c['sd']:.1f}){pub}")
        lines.append(f"| {lv} | {row['n']} | " + " | ".join(cells) + " |")
    lo = stats["lordosis"]
    lines += ["", "## Lordosis", ""]
    if lo["n"]:
        lines.append(f"{lo['source']}: mean {lo['mean']:.1f} deg, SD {lo['sd']:.1f}, 5-50-95 % {lo['p5']:.0f} / {lo['p50']:.0f} / {lo['p95']:.0f} "
                     f"(published adults: {lo['published_mean']} (SD {lo['published_sd']})), n = {lo['n']}.")
    if stats["findings"]:
        names = sorted({f for v in stats["findings"].values() for f in v})
        lines += ["", "## Findings (disks per level)", "", "| level | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for lv, v in stats["findings"].items():
            lines.append(f"| {lv} | " + " | ".join(str(v.get(n, 0)) for n in names) + " |")
    pca, pr = stats["pca_patch"], stats["procrustes"]
    lines += ["", "## Shape variation", "",
              f"Patch-frame PCA (training split, {pca['n_train']} disks): modes 1-10 explain "
              + ", ".join(f"{100 * x:.1f}" for x in pca["explained_ratio"][:10]) + " % of the variance.", "",
              f"Rotation removed (Procrustes, {pr['n']} disks): mean point distance to the mean shape {pr['mean_point_distance_mm']:.2f} mm "
              f"(RMS {pr['rms_mm']:.2f} mm); modes 1-5 explain " + ", ".join(f"{100 * x:.1f}" for x in pr["explained_ratio"][:5])
              + f" %; {100 * pr['beyond_mode3']:.1f} % lies beyond mode 3.", "",
              f"Held-out shapes ({pca['n_heldout']} validation + test disks) outside the span of the first k training modes "
              "(mean point distance to the projection):", "", "| modes | median px | median mm | mean px | mean mm |", "|---|---|---|---|---|"]
    for k in MODES_REPORTED:
        r = stats["heldout_residual"].get(str(k))
        if r:
            lines.append(f"| {k} | {r['median_px']:.2f} | {r['median_mm']:.2f} | {r['mean_px']:.2f} | {r['mean_mm']:.2f} |")
    return "\n".join(lines) + "\n"


def plot(stats: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(2, 2, figsize=(10, 7.5), dpi=100)
    pca, pr = stats["pca_patch"], stats["procrustes"]
    k = np.arange(1, len(pca["explained_ratio"]) + 1)
    ax[0, 0].semilogy(k, pca["explained_ratio"], "o-", ms=3, label="patch frame")
    ax[0, 0].semilogy(np.arange(1, len(pr["explained_ratio"]) + 1), pr["explained_ratio"], "s-", ms=3, label="rotation removed (Procrustes)")
    ax[0, 0].axvline(3.5, color="grey", lw=0.8, ls=":")
    ax[0, 0].set(xlabel="PCA mode", ylabel="share of variance", title="contour PCA spectrum")
    ax[0, 0].legend(fontsize=8)
    res = stats["heldout_residual"]
    if res:
        ks = sorted(int(x) for x in res)
        ax[0, 1].plot(ks, [res[str(x)]["median_px"] for x in ks], "o-", ms=3)
        ax[0, 1].axhline(stats["gate"]["residual_p3_threshold_px"], color="red", lw=0.8, ls="--", label="gate at 3 modes")
        ax[0, 1].axvline(3, color="grey", lw=0.8, ls=":")
        ax[0, 1].legend(fontsize=8)
    ax[0, 1].set(xlabel="modes kept", ylabel="median residual (patch px)", title="held-out shapes outside the training PCA span")
    lo = stats["lordosis"]
    if lo["n"]:
        ax[1, 0].hist(lo["values"], bins=20, color="tab:blue", alpha=0.8)
        ax[1, 0].axvline(lo["published_mean"], color="k", lw=1)
        for s in (-1, 1):
            ax[1, 0].axvline(lo["published_mean"] + s * lo["published_sd"], color="k", lw=0.8, ls="--")
    ax[1, 0].set(xlabel="lordosis (deg)", ylabel="subjects", title="lordosis (published mean +- SD: black)")
    levels = list(stats["per_level"])
    for j, (m, colour) in enumerate(zip(("anterior", "middle", "posterior"), ("tab:red", "tab:green", "tab:blue"))):
        x = np.arange(len(levels)) + (j - 1) * 0.25
        ax[1, 1].errorbar(x, [stats["per_level"][lv][m]["mean"] for lv in levels], yerr=[stats["per_level"][lv][m]["sd"] for lv in levels], fmt="o", color=colour, ms=4, label=f"{m} (phantom)")
        pub = [stats["per_level"][lv][m].get("published_mean", np.nan) for lv in levels]
        pub_sd = [stats["per_level"][lv][m].get("published_sd", np.nan) for lv in levels]
        ax[1, 1].errorbar(x + 0.08, pub, yerr=pub_sd, fmt="x", color=colour, alpha=0.6, ms=5)
    ax[1, 1].set_xticks(np.arange(len(levels)), levels)
    ax[1, 1].set(ylabel="height (mm)", title="heights: phantom (o) vs published (x), mean +- SD")
    ax[1, 1].legend(fontsize=7)
    fig.suptitle(gate_line(stats), fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_stats(dataset_dir: str | Path, out_dir: str | Path | None = None, patch_size: int = 128, patch_spacing_mm: float = 0.5) -> dict:
    """Compute the statistics and write stats.md, stats.json, stats.png into ``out_dir``
    (default ``DIR/phantom_stats``). Returns the stats with the written paths under "files"."""
    stats = population_stats(dataset_dir, patch_size, patch_spacing_mm)
    out = Path(out_dir) if out_dir is not None else Path(dataset_dir) / "phantom_stats"
    out.mkdir(parents=True, exist_ok=True)
    (out / "stats.md").write_text(to_markdown(stats), encoding="utf-8")
    (out / "stats.json").write_text(json.dumps(stats, indent=1), encoding="utf-8")
    plot(stats, out / "stats.png")
    stats["files"] = {k: str(out / f"stats.{k}") for k in ("md", "json", "png")}
    return stats

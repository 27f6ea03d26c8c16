"""Render phantom subjects with their ground-truth contours to docs/images/phantom_*.png.

    python benchmarks/phantom_gallery.py                     # T2 and T1, seeds 0 1 2 and the pathology panels
    python benchmarks/phantom_gallery.py --seeds 5 --out /tmp/look

Writes phantom_<weighting>_<seed>.png (whole slices, default population), phantom_<weighting>_pathology.png
(one subject with raised prevalences: spondylolisthesis, herniations, Schmorl nodes, Modic, vacuum) and
phantom_disks_<weighting>.png (close-ups of single disks, one per finding, from the default population).
Point 0 (anterior-superior corner) is drawn green, the other corners cyan. The same seed gives the same
anatomy in T2 and T1.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from diskrobust.data.phantom import PhantomConfig, generate_subject, render_subject_png, subject_contours

REPO = Path(__file__).resolve().parents[1]
# a subject with many findings at once (for the pathology panel)
PATHOLOGY = {"spondylolisthesis": 1.0, "migration": 0.3, "extrusion": 0.3, "protrusion": 0.4, "schmorl": 0.4, "modic": 0.4, "vacuum": 0.6, "osteophyte": 0.5, "fatty_marrow": 0.6}
CLOSE_UPS = ("protrusion", "extrusion", "migration", "schmorl", "collapse", "spondylolisthesis", "vacuum", "modic_1", "osteophyte", "irregular_endplate")


def _find_disks(weighting: str, wanted=CLOSE_UPS, max_seed: int = 400) -> list[tuple[int, int, str]]:
    """(seed, disk index, finding) for the first default-population disk with each finding (contours only)."""
    found, used, seed = {}, set(), 0
    while len(found) < len(wanted) and seed < max_seed:
        _, info = subject_contours(seed, PhantomConfig(weighting=weighting))
        for i, d in enumerate(info["disks"][:5]):
            for f in wanted:
                if f not in found and (seed, i) not in used and f in d["findings"]:
                    found[f] = (seed, i, f)
                    used.add((seed, i))  # one finding per close-up disk, so each panel shows another disk
        seed += 1
    return [found[f] for f in wanted if f in found]


def close_ups(weighting: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    items = _find_disks(weighting)
    fig, axes = plt.subplots(2, (len(items) + 1) // 2, figsize=(2.2 * ((len(items) + 1) // 2), 4.8), dpi=110)
    for ax, (seed, i, finding) in zip(axes.flat, items):
        s = generate_subject(seed, PhantomConfig(weighting=weighting))
        p = s.disks[i]["points_px"]
        c = p.mean(0)
        half = 32.0 / s.spacing_mm[0]  # 64 mm wide
        ax.imshow(s.image, cmap="gray", vmin=0, vmax=float(np.percentile(s.image, 99.7)), interpolation="bilinear")
        ax.plot(np.append(p[:, 0], p[0, 0]), np.append(p[:, 1], p[0, 1]), "-", color="orange", lw=0.7)
        ax.plot(p[0, 0], p[0, 1], "o", ms=2.5, color="lime")
        ax.set_xlim(c[0] - half, c[0] + half)
        ax.set_ylim(c[1] + half, c[1] - half)
        ax.set_axis_off()
        ax.set_title(f"{finding.replace('_', ' ')}\nseed {seed} {s.disks[i]['level']}", fontsize=7)
    for ax in list(axes.flat)[len(items):]:
        ax.set_axis_off()
    fig.tight_layout(pad=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _title(s, w: str, label: str) -> str:
    grades = "".join(str(d["grade"]) for d in s.params["disks"][:5])
    return f"{w.upper()} {label}: lordosis {s.params['lordosis_deg']:.0f} deg, Pfirrmann L5/S1..L1/L2 {grades}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--weightings", nargs="+", default=["t2", "t1"], choices=["t2", "t1"])
    ap.add_argument("--pathology-seed", type=int, default=4)
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "images")
    args = ap.parse_args()
    for w in args.weightings:
        for seed in args.seeds:
            s = generate_subject(seed, PhantomConfig(weighting=w))
            print(render_subject_png(s, args.out / f"phantom_{w}_{seed}.png", title=_title(s, w, f"seed {seed}")))
        s = generate_subject(args.pathology_seed, PhantomConfig(weighting=w, prevalence=PATHOLOGY))
        print(render_subject_png(s, args.out / f"phantom_{w}_pathology.png", title=_title(s, w, f"raised prevalences, seed {args.pathology_seed}")))
        print(close_ups(w, args.out / f"phantom_disks_{w}.png"))


if __name__ == "__main__":
    main()

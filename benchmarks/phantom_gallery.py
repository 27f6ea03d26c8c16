"""Render phantom subjects with their ground-truth contours to docs/images/phantom_<weighting>_<seed>.png.

    python benchmarks/phantom_gallery.py                     # T2 and T1, seeds 0 1 2, 512 x 512
    python benchmarks/phantom_gallery.py --seeds 5 --out /tmp/look

Point 0 (anterior-superior corner) is drawn green, the other corners cyan. The same seed gives the same
anatomy in T2 and T1, so each pair shows one subject in both contrasts.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from diskrobust.data.phantom import PhantomConfig, generate_subject, render_subject_png

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--weightings", nargs="+", default=["t2", "t1"], choices=["t2", "t1"])
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "images")
    args = ap.parse_args()
    for w in args.weightings:
        for seed in args.seeds:
            s = generate_subject(seed, PhantomConfig(weighting=w))
            grades = "".join(str(d["grade"]) for d in s.params["disks"][:5])
            title = f"{w.upper()} seed {seed}: sacral slope {s.params['sacral_slope_deg']:.0f} deg, Pfirrmann L5/S1..L1/L2 {grades}"
            print(render_subject_png(s, args.out / f"phantom_{w}_{seed}.png", title=title))


if __name__ == "__main__":
    main()

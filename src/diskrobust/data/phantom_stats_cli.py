"""`python -m diskrobust phantom-stats DIR`: how varied a dataset's disks are, and the study's go/no-go gate."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", metavar="DIR", help="dataset folder (datalist.json, contours/; phantom.json adds lordosis and findings)")
    parser.add_argument("--out", default=None, help="folder for stats.md, stats.json, stats.png (default DIR/phantom_stats)")
    parser.add_argument("--patch-size", type=int, default=128, help="patch size in px (default 128, the paper's)")
    parser.add_argument("--patch-spacing", type=float, default=0.5, help="patch spacing in mm/px (default 0.5, the paper's)")


def run(args: argparse.Namespace) -> int:
    from diskrobust.data.errors import DataError
    from diskrobust.data.phantom.stats import gate_line, write_stats

    if args.patch_size < 16 or args.patch_spacing <= 0:
        print("error: --patch-size must be >= 16 and --patch-spacing positive", file=sys.stderr)
        return 2
    try:
        stats = write_stats(args.dataset, args.out, args.patch_size, args.patch_spacing)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    r = stats["heldout_residual"]
    print(f"{stats['subjects']} subjects, {stats['disks']} disks")
    for k in ("3", "5", "10"):
        if k in r:
            print(f"held-out residual after {k:>2} modes: {r[k]['median_px']:.2f} px ({r[k]['median_mm']:.2f} mm) median")
    pr = stats["procrustes"]
    print(f"Procrustes spread {pr['mean_point_distance_mm']:.2f} mm per point; {100 * pr['beyond_mode3']:.1f} % of it beyond mode 3")
    print(gate_line(stats))
    print("wrote " + ", ".join(stats["files"].values()))
    return 0

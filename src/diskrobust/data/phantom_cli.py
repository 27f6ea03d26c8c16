"""`python -m diskrobust phantom --out DIR --subjects N --seed S [...]`: write the phantom dataset."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="dataset folder to create (images/, labels/, contours/, datalist.json)")
    parser.add_argument("--subjects", type=int, default=100, help="number of subjects (default 100)")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed; per-subject seeds are spawned from it (default 0)")
    parser.add_argument("--weighting", choices=("t2", "t1"), default="t2", help="T2 (TR 3500/TE 100) or T1 (TR 600/TE 12)")
    parser.add_argument("--shape", type=int, nargs=2, metavar=("H", "W"), default=(512, 512), help="image size in px (default 512 512)")
    parser.add_argument("--spacing", type=float, nargs="+", metavar="MM", default=[0.6], help="pixel spacing in mm: one value, or row col (default 0.6)")
    parser.add_argument("--slice-thickness", type=float, default=4.0, metavar="MM", help="slice thickness in mm: partial volume at borders (default 4)")
    parser.add_argument(
        "--prevalence", action="append", default=[], metavar="NAME=P",
        help="pathology prevalence, repeatable (e.g. --prevalence migration=0.1); names: see docs/data.md",
    )
    parser.add_argument(
        "--annotation-noise-mm", type=float, default=0.0, metavar="MM",
        help="RMS of smooth annotation noise on the training split's contours (default 0: exact); exact ones go to contours_exact/",
    )
    parser.add_argument("--split", type=float, nargs=3, metavar=("TRAIN", "VAL", "TEST"), default=(0.7, 0.15, 0.15), help="split fractions (default 0.7 0.15 0.15)")
    parser.add_argument("--workers", type=int, default=2, help="processes (default 2); the output does not depend on it")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--force", action="store_true", help="write even if the folder is not empty")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from diskrobust.data.phantom import PhantomConfig, write_phantom_dataset

    if len(args.spacing) not in (1, 2):
        print("error: --spacing takes one value (isotropic) or two (row col)", file=sys.stderr)
        return 2
    spacing = (args.spacing[0], args.spacing[-1])
    prevalence = {}
    for item in args.prevalence:
        name, sep, value = item.partition("=")
        try:
            prevalence[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            print(f"error: --prevalence {item!r}: expected NAME=PROBABILITY, e.g. migration=0.1", file=sys.stderr)
            return 2
    try:
        config = PhantomConfig(
            shape=tuple(args.shape), spacing_mm=spacing, weighting=args.weighting, slice_thickness_mm=args.slice_thickness,
            prevalence=prevalence, annotation_noise_mm=args.annotation_noise_mm,
        )
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        print(f"error: {out}: exists and is not a folder", file=sys.stderr)
        return 2
    if out.is_dir() and any(out.iterdir()) and not args.force:
        print(f"error: {out}: folder is not empty (use --force to write into it anyway)", file=sys.stderr)
        return 2
    try:
        datalist = write_phantom_dataset(
            out, subjects=args.subjects, seed=args.seed, config=config, split=tuple(args.split), progress=not args.no_progress, workers=args.workers
        )
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.subjects} subjects to {out} (datalist: {datalist})")
    return 0

"""`python -m diskrobust convert {spider,mrspineseg,generic} --root <dir> --out <dir> ...`.

Writes the project's dataset format plus report.json / report.md into --out. Exit code 0 when at
least one series was converted, 1 when none was (everything is in the report), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import sys


def _fractions(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected three numbers like 0.7,0.15,0.15, got {text!r}") from None
    if len(parts) != 3 or min(parts) < 0 or sum(parts) <= 0:
        raise argparse.ArgumentTypeError(f"expected three non-negative numbers like 0.7,0.15,0.15, got {text!r}")
    return parts


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", required=True, help="the dataset's folder")
    p.add_argument("--out", required=True, help="output dataset folder (images/, labels/, contours/, datalist.json, report.*)")
    p.add_argument("--seed", type=int, default=0, help="seed of the patient split (default 0)")
    p.add_argument("--split", type=_fractions, default=(0.7, 0.15, 0.15), metavar="TRAIN,VAL,TEST",
                   help="fractions of patients per split (default 0.7,0.15,0.15)")
    p.add_argument("--min-disk-area-mm2", type=float, default=40.0, help="skip smaller disk masks (default 40)")
    p.add_argument("--min-roundtrip-dice", type=float, default=0.9,
                   help="skip a disk whose 176-point contour refills its mask worse than this (default 0.9)")
    p.add_argument("--keep-largest-component", action="store_true",
                   help="convert a disk in several pieces from its largest piece instead of skipping it")
    p.add_argument("--limit", type=int, default=None, help="convert only the first N series (a quick try)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="dataset", metavar="DATASET", required=True)
    _common(sub.add_parser("spider", help="SPIDER: images/<id>_<seq>.mha + masks/<same>.mha"))
    _common(sub.add_parser("mrspineseg", help="MRSpineSeg: train/MR/Case{N}.nii.gz + train/Mask/mask_case{N}.nii.gz"))
    g = sub.add_parser("generic", help="any NIfTI/MHA/NRRD/DICOM-folder image with a disk mask or world contour files")
    _common(g)
    g.add_argument("--image-pattern", required=True, help="image path under --root with {subject}, e.g. 'img/{subject}.nii.gz' or 'dicom/{subject}'")
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--mask-pattern", help="mask path with {subject}, e.g. 'seg/{subject}_seg.nii.gz'")
    src.add_argument("--contour-pattern", help="world-coordinate contour JSON with {subject} (docs/data.md)")
    g.add_argument("--disk-labels", help="mask values of the disks: 'L5/S1=11,L4/L5=12' or SPIDER values '201,202'")
    g.add_argument("--canal-label", type=int, default=None, help="mask value of the spinal canal (checks the anterior side)")
    g.add_argument("--vertebra-labels", default=None, help="mask values of vertebrae: 'L5=2,L4=3' (optional)")
    g.add_argument("--patient-regex", default=None, help="regex whose first group of the subject name is the patient id")


def run(args: argparse.Namespace) -> int:
    from diskrobust.data.convert import (
        ConvertOptions,
        build_label_map,
        convert_dataset,
        find_generic_series,
        find_mrspineseg_series,
        find_spider_series,
    )
    from diskrobust.data.convert.pipeline import check_output_folder
    from diskrobust.data.errors import DataError

    extra = {}
    try:
        check_output_folder(args.root, args.out)  # before anything is read or written
        if args.dataset == "spider":
            tasks, unpaired = find_spider_series(args.root)
        elif args.dataset == "mrspineseg":
            tasks, unpaired = find_mrspineseg_series(args.root)
        else:
            label_map = None
            if args.mask_pattern:
                if not args.disk_labels:
                    raise ValueError("--mask-pattern needs --disk-labels")
                label_map = build_label_map(args.disk_labels, args.canal_label, args.vertebra_labels)
                extra["label_map"] = {str(k): v for k, v in sorted(label_map.items())}
            tasks, unpaired = find_generic_series(
                args.root, args.image_pattern, args.mask_pattern, args.contour_pattern, label_map, args.patient_regex
            )
    except (DataError, ValueError) as err:
        print(f"convert {args.dataset}: {err}", file=sys.stderr)
        return 2
    if args.limit is not None:
        tasks = tasks[: args.limit]
    options = ConvertOptions(
        min_disk_area_mm2=args.min_disk_area_mm2,
        min_roundtrip_dice=args.min_roundtrip_dice,
        keep_largest_component=args.keep_largest_component,
    )
    report = convert_dataset(
        args.dataset, args.root, args.out, tasks, unpaired, options, seed=args.seed, fractions=args.split,
        progress=not args.no_progress, extra=extra,
    )
    s = report["summary"]
    failed = [r for r in report["series"] if r["status"] == "failed"]
    for r in failed[:5]:
        print(f"convert {args.dataset}: failed: {r.get('error', r['subject'])}", file=sys.stderr)
    if len(failed) > 5:
        print(f"convert {args.dataset}: ... and {len(failed) - 5} more failed series (see the report)", file=sys.stderr)
    print(
        f"convert {args.dataset}: {s['series_converted']}/{s['series_total']} series converted "
        f"({s['series_skipped']} skipped, {s['series_failed']} failed, {s['files_unpaired']} unpaired files); "
        f"{s['disks_converted']} disks converted, {s['disks_skipped']} skipped. Report: {args.out}/report.md"
    )
    return 0 if s["series_converted"] > 0 else 1

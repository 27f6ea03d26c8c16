"""`python -m diskrobust study --config configs/study/<profile>.json`."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="study profile, e.g. configs/study/quick.json")
    parser.add_argument("--out", default=None, help="output folder (default: the profile's output_dir)")
    parser.add_argument("--no-resume", action="store_true", help="recompute arms that finished earlier")
    parser.add_argument("--jobs", type=int, default=None,
                        help="arms trained/evaluated at once, one CPU thread each (default: the profile's, else 1)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from diskrobust.study.grid import load_study_config
    from diskrobust.study.runner import run_study

    cfg = load_study_config(args.config, args.out)
    jobs = args.jobs or cfg.jobs
    outcomes = run_study(cfg, resume=not args.no_resume, progress=not args.no_progress, jobs=jobs)
    failed = [o.arm.name for o in outcomes if o.status == "failed"]
    print(f"report: {cfg.output_dir / 'report.md'}")
    print(f"TensorBoard: tensorboard --logdir {cfg.output_dir / 'arms'}")
    if failed:
        print(f"failed arms: {', '.join(failed)} (see arm_failed.json in each arm's folder)", file=sys.stderr)
        return 1
    return 0

"""`python -m diskrobust study --config configs/study/<profile>.json [--engine {local,ray}]`."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="study profile, e.g. configs/study/quick.json")
    parser.add_argument("--out", default=None, help="output folder (default: the profile's output_dir)")
    parser.add_argument("--no-resume", action="store_true", help="recompute arms that finished earlier")
    parser.add_argument("--jobs", type=int, default=None,
                        help="local engine: arms trained/evaluated at once, one CPU thread each "
                             "(default: the profile's, else 1)")
    parser.add_argument("--engine", choices=("local", "ray"), default="local",
                        help="local: a pool of bundle processes on this machine (default); ray: one Ray task per "
                             "stage, on a local Ray instance or the cluster at --address (docs/cluster.md)")
    parser.add_argument("--address", default=None,
                        help="Ray engine: the cluster to join ('auto' or host:port); default: start a local instance")
    parser.add_argument("--retries", type=int, default=None,
                        help="times a failed stage (bundle error, dead Ray worker) is tried again before its arm is "
                             "reported failed (default: the profile's, else 0)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from diskrobust.data.errors import DataError
    from diskrobust.run_lock import RunLockedError
    from diskrobust.study.grid import load_study_config
    from diskrobust.study.runner import run_study

    engine = getattr(args, "engine", "local")
    if getattr(args, "address", None) and engine != "ray":
        print("--address is for the Ray engine: add --engine ray", file=sys.stderr)
        return 2
    try:
        cfg = load_study_config(args.config, args.out)
        if engine == "ray":
            from diskrobust.study.ray_engine import require_ray

            try:
                require_ray()
            except RuntimeError as err:
                print(f"error: {err}", file=sys.stderr)
                return 2
        jobs = args.jobs or cfg.jobs
        outcomes = run_study(cfg, resume=not args.no_resume, progress=not args.no_progress, jobs=jobs, engine=engine,
                             address=getattr(args, "address", None), retries=getattr(args, "retries", None))
    except (DataError, RunLockedError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("study interrupted: its bundle runs were stopped; run the same command again to resume",
              file=sys.stderr)
        return 130
    from diskrobust.study.report import summary_lines

    failed = [o.arm.name for o in outcomes if o.status == "failed"]
    print("\n".join(summary_lines(cfg, outcomes)))
    if failed:
        print(f"failed arms: {', '.join(failed)} (see arm_failed.json in each arm's folder)", file=sys.stderr)
        return 1
    return 0

"""`python -m diskrobust demo`: the README's main job, end to end on the built-in phantom.

Generates the phantom, trains a standard model and one adversarially fine-tuned model through the
`lumbar_disk_shape` bundle, attacks both (IND PGD sweep and OOD) with `lumbar_disk_attack`, and
writes the report. It is the study runner on a two-arm grid (configs/study/demo.json).
"""

from __future__ import annotations

import argparse
from pathlib import Path

DEMO_CONFIG = Path(__file__).resolve().parents[3] / "configs" / "study" / "demo.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    parser.add_argument("--config", default=str(DEMO_CONFIG), help="the demo's grid (default configs/study/demo.json)")
    parser.add_argument("--no-resume", action="store_true", help="recompute what an earlier run finished")


def run(args: argparse.Namespace) -> int:
    from diskrobust.study.cli import run as run_study_cli

    return run_study_cli(argparse.Namespace(config=args.config, out=args.out, no_resume=args.no_resume,
                                            no_progress=False, jobs=None, engine="local",
                                            address=None, retries=None))

"""The study's measurements of one trained model besides the attack bundle's sweep, as commands:

    python -m diskrobust.study.measure uniform-noise --ckpt_path MODEL.pt --datalist DATALIST --out DIR \
        --eps 0.01 0.03 0.05 [--norm linf] [--num_samples N] [--seed S]
    python -m diskrobust.study.measure ood-budget --ckpt_path MODEL.pt --datalist DATALIST --out DIR \
        --settings OOD_BUDGET.json [--seed S]

- `uniform-noise`: the network on the test patches plus uniform noise of each budget
  (`diskrobust.robustness.baselines.uniform_noise_rows`), the baseline PGD must beat by far.
  Writes `per_sample.csv` (the sweep's row format: sweep "baseline", attack "uniform_linf" /
  "uniform_l2", the same sample ids as the sweep's rows) and `aggregate.json` (curves over eps).
  L-inf budgets are per pixel; L2 budgets are per-pixel RMS, as the sweep's `ind#eps#l2`.
- `ood-budget`: the smallest per-pixel RMS at which the OOD attack brings the output within
  tolerance of the target, per start kind, from the unperturbed start and with random start
  (`diskrobust.robustness.ood_budget.run_ood_budget`; `--settings` is a JSON file holding the
  study profile's `ood_budget` section). Writes `rows.csv` (one row per target and setting,
  `BUDGET_COLUMNS`), `finding_rows.csv` (the rows `diskrobust.study.statistics` decides finding 3
  from) and `summary.json` (summaries, success-rate curves, tolerance, patch shape).

Several measurements run in one process when joined by `+` (`uniform-noise ... + ood-budget ...`):
the study does that, one child process per arm, since importing torch and MONAI costs more than a
small measurement. Each measurement writes only into its `--out`, which it locks, and ends by writing
`--out/done.json` holding its arguments: the study's resume marker (a measurement whose marker holds
other arguments is run again).

The model and its patch geometry come from the model file (`checkpoints.build_model_from_checkpoint`);
the test patches are the datalist split's first `num_samples` (the attack bundle's test set, so rows
pair with its rows by sample id). Each step prints one line (the study's progress view reads the log).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

COMMANDS = ("uniform-noise", "ood-budget")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt_path", required=True, help="the model file (models/model.pt of lumbar_disk_shape)")
    parser.add_argument("--datalist", required=True, help="datalist.json of the dataset")
    parser.add_argument("--split", default="test", help="the datalist split to measure on (default: test)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="seeds the noise and the attacks")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m diskrobust.study.measure", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    noise = sub.add_parser("uniform-noise", help="the network on test patches + uniform noise of each budget")
    _common(noise)
    noise.add_argument("--eps", type=float, nargs="+", required=True,
                       help="budgets: L-inf radius per pixel, or L2 as per-pixel RMS (--norm l2)")
    noise.add_argument("--norm", choices=("linf", "l2"), default="linf")
    noise.add_argument("--num_samples", type=int, default=None, help="the first N test patches (default: all)")
    noise.add_argument("--batch_size", type=int, default=16)
    noise.add_argument("--tolerance_px", type=float, default=2.0,
                       help="aggregate.json's within_tolerance threshold (as the sweep's tolerance_px)")
    budget = sub.add_parser("ood-budget", help="the OOD budget the attack needs, by bisection")
    _common(budget)
    budget.add_argument("--settings", required=True,
                        help="the ood_budget section (diskrobust.robustness.ood_budget.OodBudgetConfig): a JSON file, "
                             "or the JSON object itself")
    return parser


def _say(text: str) -> None:
    print(f"[measure] {text}", flush=True)


def _load(args) -> tuple[torch.nn.Module, object]:
    """The network (eval mode) and the test patches of `args` (DataError naming the file when missing)."""
    from diskrobust.checkpoints import build_model_from_checkpoint
    from diskrobust.data.errors import DataError
    from diskrobust.datasets import DiskPatchDataset
    from diskrobust.robustness.testset import load_test_set

    for path, what in ((args.ckpt_path, "model file"), (args.datalist, "datalist file")):
        if not Path(path).is_file():
            raise DataError(path, f"{what} not found")
    device = torch.device(args.device) if args.device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, desc = build_model_from_checkpoint(args.ckpt_path, device)
    size, spacing = int(desc["patch"]["size"]), float(desc["patch"]["spacing_mm"])
    dataset = DiskPatchDataset(str(args.datalist), args.split, patch_size=size, patch_spacing_mm=spacing)
    test = load_test_set(dataset, getattr(args, "num_samples", None))
    return model, test


def uniform_noise(args) -> Path:
    from diskrobust.data.dataset_io import atomic_write_json
    from diskrobust.robustness.baselines import uniform_noise_rows
    from diskrobust.robustness.ood_budget import rms_to_l2
    from diskrobust.robustness.results import aggregate, write_rows_csv

    if args.num_samples is not None and args.num_samples < 1:
        raise ValueError(f"--num_samples must be >= 1, got {args.num_samples}")
    if any(not e > 0 for e in args.eps) or (args.norm == "linf" and any(e > 1 for e in args.eps)):
        raise ValueError(f"--eps must be budgets in (0, 1] (per pixel), got {args.eps}")
    model, test = _load(args)
    shape = tuple(test.images.shape[-2:])
    # L2 budgets are per-pixel RMS (as the sweep's); the noise ball is the absolute radius
    radii = [rms_to_l2(e, shape) if args.norm == "l2" else e for e in args.eps]
    _say(f"uniform noise ({args.norm}) at eps {args.eps} on {len(test)} test patches")
    rows = uniform_noise_rows(model, test, radii, args.norm, args.seed, args.batch_size)
    out = Path(args.out)
    write_rows_csv(out / "per_sample.csv", rows)
    atomic_write_json(out / "aggregate.json", {**aggregate(rows, args.tolerance_px),
                                               "norm": args.norm, "eps_given": list(args.eps), "seed": args.seed,
                                               "num_samples": len(test), "checkpoint": str(args.ckpt_path)})
    _say(f"done: {len(rows)} rows in {out / 'per_sample.csv'}")
    return out


def ood_budget(args) -> Path:
    from dataclasses import asdict

    from diskrobust.data.dataset_io import atomic_write_json
    from diskrobust.data.errors import DataError
    from diskrobust.robustness.ood_budget import BUDGET_COLUMNS, OodBudgetConfig, finding_rows, run_ood_budget
    from diskrobust.robustness.results import write_rows_csv

    inline = args.settings.lstrip().startswith("{")
    settings = "--settings" if inline else Path(args.settings)
    try:
        cfg = OodBudgetConfig.from_dict(json.loads(args.settings if inline else settings.read_text()),
                                        where=str(settings))
    except FileNotFoundError:
        raise DataError(settings, "ood_budget settings file not found") from None
    except json.JSONDecodeError as err:
        raise DataError(settings, f"not valid JSON: {err}") from None
    args.num_samples = cfg.num_targets
    model, test = _load(args)
    rows, summaries, curves, result = [], {}, {}, {}
    t0 = time.perf_counter()
    # one start kind and random-start setting at a time, so the log shows progress; each is exactly
    # its share of the whole call (start images seeded by (seed, kind), attacks by (seed, target, try))
    settings_list = [(kind, rs) for kind in cfg.starts for rs in cfg.random_start]
    for k, (kind, rs) in enumerate(settings_list, 1):
        part = OodBudgetConfig(**{**asdict(cfg), "starts": [kind], "random_start": [rs]})
        label = f"{kind} / {'random start' if rs else 'from start'}"

        def targets_done(i: int, n: int, k=k, label=label) -> None:
            # a setting takes minutes on CPU: the study's progress view reads this count (study/progress.py)
            _say(f"setting {k}/{len(settings_list)} {label}: target {i}/{n} ({time.perf_counter() - t0:.0f} s)")

        targets_done(0, len(test))
        result = run_ood_budget(model, test.images, part, seed=args.seed, on_target=targets_done)
        rows += result["rows"]
        summaries.update(result["summaries"])
        curves.update(result["curves"])
        s, = result["summaries"].values()
        median = "not reached" if s["rms_median"] == float("inf") else f"{s['rms_median']:.4g}"
        _say(f"setting {k}/{len(settings_list)} {label}: {s['reached']:.0%} of {s['n']} targets reached, median "
             f"RMS {median} ({time.perf_counter() - t0:.0f} s)")
    out = Path(args.out)
    write_rows_csv(out / "rows.csv", rows, BUDGET_COLUMNS)
    write_rows_csv(out / "finding_rows.csv", finding_rows(rows),
                   ("sample_id", "sweep", "attack", "head", "eps", "rms_needed", "reached"))
    atomic_write_json(out / "summary.json", {
        "summaries": summaries, "curves": curves, "curve_rms": list(cfg.curve_rms), "tolerance": cfg.tol.text(),
        "shape": list(result["shape"]), "settings": asdict(cfg), "seed": args.seed, "num_targets": len(test),
        "checkpoint": str(args.ckpt_path)})
    _say(f"done: {len(rows)} rows in {out / 'rows.csv'}")
    return out


def split_parts(argv: list[str]) -> list[list[str]]:
    """The measurements of one command line: its arguments split at each `+`."""
    parts, part = [], []
    for a in argv:
        if a == "+":
            parts.append(part)
            part = []
        else:
            part.append(a)
    return [p for p in parts + [part] if p]


def main(argv: list[str] | None = None) -> int:
    from diskrobust.data.dataset_io import atomic_write_json
    from diskrobust.data.errors import DataError
    from diskrobust.run_lock import RunLock, RunLockedError

    parser = build_parser()
    parts = split_parts(sys.argv[1:] if argv is None else list(argv))
    if not parts:
        parser.error("name a measurement: " + " or ".join(COMMANDS))
    parsed = [parser.parse_args(p) for p in parts]  # every part checked before any work
    for part, args in zip(parts, parsed):
        try:
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            (out / "done.json").unlink(missing_ok=True)
            with RunLock(out, what=f"measure {args.command}"):
                start = time.perf_counter()
                (uniform_noise if args.command == "uniform-noise" else ood_budget)(args)
                atomic_write_json(out / "done.json", {"args": part, "seconds": time.perf_counter() - start})
        except (DataError, RunLockedError, ValueError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

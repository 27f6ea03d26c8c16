"""Which OOD detector survives an adaptive OOD attack? The budget the attack needs, per detector. Phantom, CPU.

    python benchmarks/ood_detector_budget.py --data /tmp/ood18/ph --ckpt /tmp/ood18/net.pt --seed 0 \
        [--starts uniform_noise natural --n-targets 2 --steps 100 --iterations 5 --rms-max 0.5 \
         --weights 1 10 0 --oe-iters 120 --oe-path oe.pt --fixed-rms 0.1 --out docs/images/ood_detector_budget]

The network (DiskShapeNet width 8, 64 px; --ckpt from `benchmarks/ood_detector_adaptive.py --save-ckpt`)
is frozen. Detectors are fitted on its training patches plus shape-augmented ones: Mahalanobis on
encoder features (reference), input statistics, head agreement, an outlier-exposure CNN trained with
OOD attacks against itself in the loop, and the ensemble of the last three. Thresholds accept 95 % of
a *calibration* IND set (a second phantom, other subjects, seed + 1000); the false-positive rate is
then checked on the first phantom's validation + test patches.

Measured per detector (`detector_budget_comparison`): the median per-pixel RMS budget the adaptive
OOD attack needs for "fooled (Tolerance: point distance <= 1 px, seg Dice >= 0.8) and undetected",
against the budget for "fooled" without a detector; the ratio (goal >= 5); the success curve (PNG); and
AUROC / detection / joint success at fixed budgets, non-adaptive (w=0) and adaptive (`evaluate_detector`);
and the straight-line attack (`straight_line_budget`: the cheapest point on the line from the start to the
target's own IND patch that is fooled and undetected), an upper bound where the gradient attack stalls.
Writes <out>_seed<k>.json and <out>_seed<k>.png.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import machine  # noqa: E402
from ood_detector_adaptive import images_of  # noqa: E402

from diskrobust.attacks import targets_from_model  # noqa: E402
from diskrobust.data.phantom import PhantomConfig, write_phantom_dataset  # noqa: E402
from diskrobust.datasets import DiskPatchDataset, ShapeAugmentedDataset  # noqa: E402
from diskrobust.defenses import (EnsembleDetector, HeadAgreementDetector, InputStatsDetector,  # noqa: E402
                                 MahalanobisDetector, OutlierExposureDetector, detector_scores, evaluate_detector,
                                 threshold_at_tpr, train_outlier_exposure)
from diskrobust.networks import DiskShapeNet  # noqa: E402
from diskrobust.robustness.ood_budget import (Tolerance, detector_budget_comparison, rms_to_l2,  # noqa: E402
                                              start_images, straight_line_budget)
from diskrobust.transforms import ShapePCA  # noqa: E402


def phantom(folder: Path, subjects: int, seed: int) -> Path:
    if not (folder / "datalist.json").is_file():
        write_phantom_dataset(folder, subjects=subjects, seed=seed,
                              config=PhantomConfig(shape=(256, 256), spacing_mm=(1.2, 1.2)), progress=False)
    return folder / "datalist.json"


def plot(result: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = list(next(iter(result["curves"].values())))
    fig, axes = plt.subplots(1, len(kinds), figsize=(5 * len(kinds), 4), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        for name, curves in result["curves"].items():
            style = "k--" if name == "none" else "-"
            label = "no detector (fooled)" if name == "none" else f"{name} (fooled & undetected)"
            ax.plot(result["curve_rms"], curves[kind], style, marker="o", label=label)
        base = result["summaries"]["none"][kind]["rms_median"]
        if math.isfinite(base):
            ax.axvline(5 * base, color="grey", lw=0.8, ls=":", label="5x undefended median")
        ax.set(title=f"{kind}", xlabel="budget, per-pixel RMS", ylabel="targets reached", ylim=(-0.05, 1.05))
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="phantom folder (written if missing, 24 subjects)")
    parser.add_argument("--calib-data", default=None, help="calibration phantom folder (default: <data>_calib)")
    parser.add_argument("--ckpt", required=True, help="DiskShapeNet(width 8) state_dict at --patch-size")
    parser.add_argument("--patch-size", type=int, default=64)
    parser.add_argument("--spacing-mm", type=float, default=1.0)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--fit-augmented", type=int, default=256)
    parser.add_argument("--starts", nargs="+", default=["uniform_noise", "natural"])
    parser.add_argument("--n-targets", type=int, default=2)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--attack-lr", type=float, default=0.01)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--rms-max", type=float, default=0.5)
    parser.add_argument("--weights", type=float, nargs="+", default=[1.0, 10.0, 0.0],
                        help="detector weights tried in this order at each budget (0: non-adaptive)")
    parser.add_argument("--fpr", type=float, default=0.05)
    parser.add_argument("--oe-iters", type=int, default=120)
    parser.add_argument("--oe-path", default=None, help="outlier-exposure detector file: loaded if it exists, "
                                                         "else trained and saved there")
    parser.add_argument("--fixed-rms", type=float, nargs="*", default=[0.1])
    parser.add_argument("--detectors", nargs="+", default=["input stats", "head agreement", "outlier exposure",
                                                           "ensemble"],
                        help="of: Mahalanobis, input stats, head agreement, outlier exposure, ensemble")
    parser.add_argument("--line-only", action="store_true", help="only the straight-line attack (no gradient "
                                                                  "bisection, no fixed budgets)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="docs/images/ood_detector_budget")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    wall = time.perf_counter()
    print(machine())

    size = args.patch_size
    datalist = phantom(Path(args.data), 24, 0)
    calib_list = phantom(Path(args.calib_data or f"{args.data}_calib"), 24, 1000)
    train_set = DiskPatchDataset(datalist, "training", size, args.spacing_mm)
    eval_ind = torch.cat([images_of(DiskPatchDataset(datalist, s, size, args.spacing_mm))
                          for s in ("validation", "test")])
    calib_ind = torch.cat([images_of(DiskPatchDataset(calib_list, s, size, args.spacing_mm))
                           for s in ("training", "validation", "test")])
    net = DiskShapeNet(width=args.width, spatial_size=size)
    net.load_state_dict(torch.load(args.ckpt, map_location="cpu"))
    net.eval()
    pca = ShapePCA.fit(train_set.bank.points)
    augmented = ShapeAugmentedDataset(train_set.bank, pca, n_modes=min(8, pca.num_modes),
                                      samples_per_epoch=args.fit_augmented, seed=args.seed + 1)
    fit_images = torch.cat([images_of(train_set), images_of(augmented)])
    print(f"IND: fit {len(fit_images)} (training + augmented), calibration {len(calib_ind)} (second phantom), "
          f"evaluation {len(eval_ind)} (validation + test); seed {args.seed}")

    built = {}
    t0 = time.perf_counter()
    if "Mahalanobis" in args.detectors:
        built["Mahalanobis"] = MahalanobisDetector(net).fit(fit_images)
    stats = InputStatsDetector().fit(fit_images)
    heads = HeadAgreementDetector(net)
    oe = OutlierExposureDetector(width=8)
    need_oe = "outlier exposure" in args.detectors or "ensemble" in args.detectors
    if need_oe and args.oe_path and Path(args.oe_path).is_file():
        oe = OutlierExposureDetector.load(args.oe_path)
        print(f"outlier exposure detector loaded from {args.oe_path}")
    elif need_oe:
        torch.manual_seed(args.seed)
        oe = OutlierExposureDetector(width=8)
        fit_targets = targets_from_model(net, fit_images)
        train_outlier_exposure(oe, net, fit_images, fit_targets, iterations=args.oe_iters, seed=args.seed, log=print)
        if args.oe_path:
            oe.save(args.oe_path)
    for name, det in (("input stats", stats), ("head agreement", heads), ("outlier exposure", oe)):
        if name in args.detectors:
            built[name] = det
    if "ensemble" in args.detectors:
        built["ensemble"] = EnsembleDetector({"input stats": stats, "head agreement": heads,
                                              "outlier exposure": oe}).calibrate(calib_ind, args.fpr)
    print(f"detectors built in {time.perf_counter() - t0:.0f} s")

    specs, fpr_rows = {}, {}
    for name, det in built.items():
        calib = detector_scores(det, calib_ind)
        thr = threshold_at_tpr(calib, 1 - args.fpr)
        scale = max(thr - float(calib.median()), 1e-6)
        specs[name] = (det, thr, scale)
        fpr_rows[name] = float((detector_scores(det, eval_ind) > thr).double().mean())
        print(f"{name}: threshold {thr:.4g} (IND spread {scale:.3g}); FPR on {len(eval_ind)} held-out IND "
              f"patches {fpr_rows[name]:.1%}")

    targets = targets_from_model(net, eval_ind[:args.n_targets])
    starts = {k: start_images(k, args.n_targets, (size, size), args.seed) for k in args.starts}
    tol = Tolerance()
    # the straight-line attack to each target's own IND patch: gradient-free, upper-bounds the budget
    line = {name: {kind: straight_line_budget(net, x, eval_ind[:args.n_targets], targets, tol,
                                              *(specs[name][:2] if name in specs else ())).tolist()
                   for kind, x in starts.items()} for name in ["none", *specs]}
    for name, by_kind in line.items():
        print(f"straight line | {name} | " + ", ".join(f"{k}: {[round(v, 4) for v in vals]}"
                                                     for k, vals in by_kind.items()))
    if args.line_only:
        out = Path(f"{args.out}_seed{args.seed}_line.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"args": vars(args), "straight_line": line}, indent=1))
        print(f"wrote {out}; wall {time.perf_counter() - wall:.0f} s")
        return
    t0 = time.perf_counter()
    result = detector_budget_comparison(net, specs, starts, targets, tol, args.rms_max, args.iterations, args.steps,
                                        args.attack_lr, args.weights, args.seed, log=print)
    budget_s = time.perf_counter() - t0

    print(f"\nNeeded budget (median per-pixel RMS over {args.n_targets} targets; {tol.text()}; undetected = score "
          f"<= threshold at {args.fpr:.0%} FPR), {args.steps} Adamax steps, weights {args.weights}, bisection "
          f"{args.iterations} halvings of [0, {args.rms_max}]:\n")
    print("| detector | start | reached | median RMS | ratio vs none | FPR held-out |\n|---|---|---|---|---|---|")
    for name, by_kind in result["summaries"].items():
        for kind, s in by_kind.items():
            ratio = result["ratios"].get(name, {}).get(kind)
            if ratio is None:
                rtext = "-"
            elif math.isinf(ratio):
                rtext = f">= {result['ratio_lower_bounds'][name][kind]:.1f} (not reached)"
            else:
                rtext = f"{ratio:.1f}"
            print(f"| {name} | {kind} | {s['reached']:.0%} | {s['rms_median']:.4f} | {rtext} | "
                  f"{fpr_rows.get(name, float('nan')):.1%} |")

    fixed = {}
    t0 = time.perf_counter()
    for name, (det, thr, scale) in specs.items():
        fixed[name] = {}
        for rms in args.fixed_rms:
            r = evaluate_detector(net, det, calib_ind, starts, {"eps": rms_to_l2(rms, (size, size)),
                                                                "steps": args.steps, "lr": args.attack_lr,
                                                                "progress": False},
                                  [0.0] + [w / scale for w in args.weights if w > 0], targets, tpr=1 - args.fpr,
                                  seed=args.seed)
            fixed[name][rms] = {kind: {row: {k: v for k, v in vals.items()} for row, vals in rows.items()}
                                for kind, rows in r["kinds"].items()}
            for kind, rows in r["kinds"].items():
                adaptive = [k for k in rows if k not in ("clean", "w=0")]
                best = max(adaptive, key=lambda k: (rows[k]["success_rate"], -rows[k]["auroc"]))
                print(f"fixed RMS {rms:g} | {name} | {kind} | AUROC clean {rows['clean']['auroc']:.2f}, "
                      f"non-adaptive {rows['w=0']['auroc']:.2f} (joint success {rows['w=0']['success_rate']:.0%}), "
                      f"adaptive {rows[best]['auroc']:.2f} (joint success {rows[best]['success_rate']:.0%}, {best})")
    fixed_s = time.perf_counter() - t0

    wall = time.perf_counter() - wall
    load = os.getloadavg()
    out = Path(f"{args.out}_seed{args.seed}")
    out.parent.mkdir(parents=True, exist_ok=True)
    title = (f"seed {args.seed}: {args.n_targets} targets, {args.steps} steps, weights {args.weights}, "
             f"threshold at {args.fpr:.0%} FPR; {tol.text()}")
    plot(result, out.with_suffix(".png"), title)
    with open(out.with_suffix(".json"), "w") as f:
        json.dump({"args": vars(args), "fpr_held_out": fpr_rows, "straight_line": line,
                   "thresholds": {k: v[1] for k, v in specs.items()}, "scales": {k: v[2] for k, v in specs.items()},
                   "summaries": result["summaries"], "ratios": result["ratios"],
                   "ratio_lower_bounds": result["ratio_lower_bounds"], "curves": result["curves"],
                   "curve_rms": result["curve_rms"], "rows": result["rows"], "fixed_budget": fixed,
                   "wall_s": wall, "budget_s": budget_s, "fixed_s": fixed_s, "load_end": load}, f, indent=1,
                  default=float)
    print(f"\nwrote {out.with_suffix('.png')} and .json; wall {wall:.0f} s (budgets {budget_s:.0f} s, fixed "
          f"{fixed_s:.0f} s); load average at the end {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}")


if __name__ == "__main__":
    main()

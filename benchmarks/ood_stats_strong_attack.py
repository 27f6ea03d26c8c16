"""Does a stronger gradient attack pass the input-statistics detector on uniform-noise starts at RMS 0.5?

    python benchmarks/ood_stats_strong_attack.py DATA_DIR CKPT [CALIB_DIR]

The check behind docs/defenses.md ("Which detector survives"): the same detector, threshold,
targets and starts as `ood_detector_budget.py --seed 0`, one attack at the largest budget
(`minimal_ood_budget(..., iterations=1)`) with 400 steps and weights 1, 10, 100, at lr 0.01 and 0.03.
Prints reached, needed RMS, detector score, point distance (px) and seg Dice per target. The options
only shrink or vary that check (the defaults are the documented run).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import machine  # noqa: E402
from ood_detector_adaptive import images_of  # noqa: E402

from diskrobust.attacks import targets_from_model  # noqa: E402
from diskrobust.datasets import DiskPatchDataset, ShapeAugmentedDataset  # noqa: E402
from diskrobust.defenses import InputStatsDetector, detector_scores, threshold_at_tpr  # noqa: E402
from diskrobust.networks import DiskShapeNet  # noqa: E402
from diskrobust.robustness.ood_budget import Tolerance, minimal_ood_budget, start_images  # noqa: E402
from diskrobust.transforms import ShapePCA  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", help="phantom folder (with datalist.json)")
    parser.add_argument("ckpt", help="DiskShapeNet state_dict at --patch-size")
    parser.add_argument("calib", nargs="?", default=None, help="calibration phantom folder (default: <data>_calib)")
    parser.add_argument("--patch-size", type=int, default=64)
    parser.add_argument("--spacing-mm", type=float, default=1.0)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--fit-augmented", type=int, default=256)
    parser.add_argument("--n-targets", type=int, default=2)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--lrs", type=float, nargs="+", default=[0.01, 0.03])
    parser.add_argument("--weights", type=float, nargs="+", default=[1.0, 10.0, 100.0])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    size, spacing = args.patch_size, args.spacing_mm
    dl = f"{args.data}/datalist.json"
    cl = f"{args.calib or args.data + '_calib'}/datalist.json"
    tr = DiskPatchDataset(dl, "training", size, spacing)
    pca = ShapePCA.fit(tr.bank.points)
    augmented = ShapeAugmentedDataset(tr.bank, pca, n_modes=min(8, pca.num_modes), samples_per_epoch=args.fit_augmented,
                                      seed=1)
    fit = torch.cat([images_of(tr), images_of(augmented)])
    ev = torch.cat([images_of(DiskPatchDataset(dl, s, size, spacing)) for s in ("validation", "test")])
    cal = torch.cat([images_of(DiskPatchDataset(cl, s, size, spacing)) for s in ("training", "validation", "test")])
    net = DiskShapeNet(width=args.width, spatial_size=size)
    net.load_state_dict(torch.load(args.ckpt))
    net.eval()
    det = InputStatsDetector().fit(fit)
    c = detector_scores(det, cal)
    thr = threshold_at_tpr(c, 0.95)
    scale = thr - float(c.median())
    tg = targets_from_model(net, ev[:args.n_targets])
    x = start_images("uniform_noise", args.n_targets, (size, size), 0)
    print("start scores", detector_scores(det, x).tolist(), "threshold", thr)
    for lr in args.lrs:
        t = time.time()
        rows = minimal_ood_budget(net, x, tg, Tolerance(), rms_max=0.5, iterations=1, steps=args.steps, lr=lr,
                                  detector=det, threshold=thr, detector_scale=scale,
                                  detector_weights=tuple(args.weights))
        print(args.steps, lr, tuple(args.weights),
              [(r["reached"], r["rms_needed"], round(r["detector_score"], 2), round(r["point_distance_px"], 2),
                round(r["seg_dice"], 3)) for r in rows], f"{time.time() - t:.0f} s")
    print(machine())


if __name__ == "__main__":
    main()

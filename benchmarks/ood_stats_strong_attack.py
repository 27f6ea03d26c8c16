"""Does a stronger gradient attack pass the input-statistics detector on uniform-noise starts at RMS 0.5?

    python benchmarks/ood_stats_strong_attack.py DATA_DIR CKPT [CALIB_DIR]

The check behind docs/defenses.md ("Which detector survives"): the same detector, threshold,
targets and starts as `ood_detector_budget.py --seed 0`, one attack at the largest budget
(`minimal_ood_budget(..., iterations=1)`) with 400 steps and weights 1, 10, 100, at lr 0.01 and 0.03.
Prints reached, needed RMS, detector score, point distance (px) and seg Dice per target.
"""
import sys, time
from pathlib import Path
import torch
sys.path.insert(0, str(Path(__file__).resolve().parent))
from ood_detector_adaptive import images_of
from diskrobust.datasets import DiskPatchDataset, ShapeAugmentedDataset
from diskrobust.transforms import ShapePCA
from diskrobust.networks import DiskShapeNet
from diskrobust.attacks import targets_from_model
from diskrobust.defenses import InputStatsDetector, detector_scores, threshold_at_tpr
from diskrobust.robustness.ood_budget import Tolerance, minimal_ood_budget, start_images
torch.set_num_threads(1)
data, ckpt = sys.argv[1], sys.argv[2]
dl = f"{data}/datalist.json"; cl = f"{sys.argv[3] if len(sys.argv) > 3 else data + '_calib'}/datalist.json"
tr = DiskPatchDataset(dl, "training", 64, 1.0)
pca = ShapePCA.fit(tr.bank.points)
fit = torch.cat([images_of(tr), images_of(ShapeAugmentedDataset(tr.bank, pca, n_modes=min(8, pca.num_modes),
                                                                  samples_per_epoch=256, seed=1))])
ev = torch.cat([images_of(DiskPatchDataset(dl, s, 64, 1.0)) for s in ("validation", "test")])
cal = torch.cat([images_of(DiskPatchDataset(cl, s, 64, 1.0)) for s in ("training", "validation", "test")])
net = DiskShapeNet(width=8, spatial_size=64); net.load_state_dict(torch.load(ckpt)); net.eval()
det = InputStatsDetector().fit(fit)
c = detector_scores(det, cal); thr = threshold_at_tpr(c, 0.95); scale = thr - float(c.median())
tg = targets_from_model(net, ev[:2]); x = start_images("uniform_noise", 2, (64, 64), 0)
print("start scores", detector_scores(det, x).tolist(), "threshold", thr)
for steps, lr, ws in [(400, 0.01, (1.0, 10.0, 100.0)), (400, 0.03, (1.0, 10.0, 100.0))]:
    t = time.time()
    rows = minimal_ood_budget(net, x, tg, Tolerance(), rms_max=0.5, iterations=1, steps=steps, lr=lr, detector=det,
                              threshold=thr, detector_scale=scale, detector_weights=ws)
    print(steps, lr, ws, [(r["reached"], r["rms_needed"], round(r["detector_score"], 2),
                           round(r["point_distance_px"], 2), round(r["seg_dice"], 3)) for r in rows],
          f"{time.time() - t:.0f} s")

"""Is RegressionAutoAttack the strongest evaluation we have? Ensemble vs the best of PGD-100 x 5 restarts.

    python benchmarks/autoattack_strength.py [--subjects 10 --patch-size 32 --spacing-mm 2.0 --test-patches 8 ...]

Trains two small DiskShapeNets on the phantom in the script (a standard one, and a copy fine-tuned with
the adv_r handler: PGD on the point SSE, eps 0.07), then attacks the test patches at each eps (L-inf):

* PGD-100 with 5 restarts, step eps/5, "sign" and "adamax" (the paper's) updates, and their per-sample best;
* RegressionAutoAttack (APGD-100 on point SSE, point MAE and SSE + soft Dice, then Square on the point
  error, from each sample's worst case so far);
* equal wall time: PGD-100 "sign" with as many restarts as fit into the ensemble's time (at least 1).

The score is the mean point distance (px) to the true contour, the study's point error. Prints the
machine and its load average, the settings, and a Markdown table per model. Default sizes fit ~15
minutes on one loaded core: 32 px patches at 2 mm, width 8, 8 test patches (the study uses more).
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
from monai.engines import SupervisedTrainer
from monai.utils import set_determinism
from torch.utils.data import DataLoader, RandomSampler

from diskrobust.attacks import PGD, RegressionAutoAttack, mean_point_distance
from diskrobust.batch import prepare_disk_batch
from diskrobust.datasets import DiskPatchDataset
from diskrobust.data.phantom import PhantomConfig, write_phantom_dataset
from diskrobust.handlers.adversarial import AdversarialTrainingHandler
from diskrobust.losses import DiskShapeLoss
from diskrobust.networks import DiskShapeNet


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def train(net, dataset, iterations, batch, lr, seed, device, handler=None) -> float:
    gen = torch.Generator().manual_seed(seed)
    sampler = RandomSampler(dataset, replacement=True, num_samples=iterations * batch, generator=gen)
    trainer = SupervisedTrainer(device=device, max_epochs=1, train_data_loader=DataLoader(dataset, batch_size=batch,
                                                                                          sampler=sampler),
                                network=net, optimizer=torch.optim.Adamax(net.parameters(), lr=lr),
                                loss_function=DiskShapeLoss(), prepare_batch=prepare_disk_batch, decollate=False)
    if handler is not None:
        handler.attach(trainer)
    start = time.perf_counter()
    trainer.run()
    net.eval()
    return time.perf_counter() - start


def point_error(net, images, points) -> torch.Tensor:
    with torch.no_grad():
        return mean_point_distance(net(images)["pred"], points)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def evaluate(net, image, targets, eps_list, args):
    rows = []
    clean = point_error(net, image, targets["points"])
    for eps in eps_list:
        row = {"eps": eps}
        per_sample = {}
        for update in ("sign", "adamax"):
            res, sec = timed(lambda: PGD(net, eps=eps, steps=args.pgd_steps, step_size=eps / 5, update=update,
                                         restarts=args.pgd_restarts, seed=args.seed)(image, targets))
            per_sample[update] = point_error(net, res.images, targets["points"])
            row[f"pgd_{update}"], row[f"pgd_{update}_s"] = per_sample[update].mean().item(), sec
        row["pgd_best"] = torch.maximum(per_sample["sign"], per_sample["adamax"]).mean().item()
        ensemble = RegressionAutoAttack(net, eps=eps, steps=args.apgd_steps, restarts=args.apgd_restarts,
                                        queries=args.queries, seed=args.seed)
        res, sec = timed(lambda: ensemble(image, targets))
        row["ens"], row["ens_s"] = point_error(net, res.images, targets["points"]).mean().item(), sec
        row["members"] = {k: v for k, v in ensemble.member_summary(res).items() if v}
        # equal wall time: as many PGD-sign restarts as the ensemble's seconds buy (one restart's cost measured)
        one = row["pgd_sign_s"] / args.pgd_restarts
        restarts = max(1, int(sec // one))
        res, eq_sec = timed(lambda: PGD(net, eps=eps, steps=args.pgd_steps, step_size=eps / 5, update="sign",
                                        restarts=restarts, seed=args.seed + 1)(image, targets))
        row["pgd_eq"], row["pgd_eq_restarts"], row["pgd_eq_s"] = (
            point_error(net, res.images, targets["points"]).mean().item(), restarts, eq_sec)
        rows.append(row)
        print(f"  eps {eps:g}: PGD sign {row['pgd_sign']:.3f} ({row['pgd_sign_s']:.0f} s), adamax "
              f"{row['pgd_adamax']:.3f} ({row['pgd_adamax_s']:.0f} s), ensemble {row['ens']:.3f} ({sec:.0f} s), "
              f"PGD at equal time {row['pgd_eq']:.3f} ({restarts} restarts)", flush=True)
    return clean.mean().item(), rows


def table(name, clean, rows, args) -> str:
    lines = [f"\n**{name}** (clean point error {clean:.3f} px)\n",
             f"| eps | PGD-{args.pgd_steps} x{args.pgd_restarts} sign | PGD adamax | PGD best of both (per sample) "
             "| ensemble | ensemble - best PGD | ensemble s | PGD s (sign + adamax) | PGD sign at equal time "
             "(restarts) | worst case found by |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['eps']:g} | {r['pgd_sign']:.3f} | {r['pgd_adamax']:.3f} | {r['pgd_best']:.3f} | "
                     f"{r['ens']:.3f} | {r['ens'] - r['pgd_best']:+.3f} | {r['ens_s']:.0f} | "
                     f"{r['pgd_sign_s'] + r['pgd_adamax_s']:.0f} | {r['pgd_eq']:.3f} ({r['pgd_eq_restarts']}) | "
                     f"{', '.join(f'{k} {v}' for k, v in r['members'].items())} |")
    ok_all = all(r["ens"] >= r["pgd_best"] for r in rows)
    strictly = any(r["ens"] > r["pgd_best"] for r in rows)
    eq = all(r["ens"] >= r["pgd_eq"] for r in rows)
    lines.append(f"\nensemble >= best PGD on every eps: {ok_all}; strictly higher somewhere: {strictly}; "
                 f">= PGD at equal wall time on every eps: {eq}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subjects", type=int, default=10)
    parser.add_argument("--patch-size", type=int, default=32)
    parser.add_argument("--spacing-mm", type=float, default=2.0)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--train-iters", type=int, default=300)
    parser.add_argument("--adv-iters", type=int, default=100, help="adv_r fine-tuning iterations (PGD-5, eps 0.07)")
    parser.add_argument("--test-patches", type=int, default=8)
    parser.add_argument("--eps", type=float, nargs="*", default=[0.01, 0.03, 0.05, 0.07, 0.1])
    parser.add_argument("--pgd-steps", type=int, default=100)
    parser.add_argument("--pgd-restarts", type=int, default=5)
    parser.add_argument("--apgd-steps", type=int, default=100)
    parser.add_argument("--apgd-restarts", type=int, default=1)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", nargs="*", default=["standard", "adv_r"], choices=["standard", "adv_r"],
                        help="which models to attack (both are trained either way: adv_r is fine-tuned from standard)")
    parser.add_argument("--data", default=None, help="phantom folder (default: a temporary one)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    set_determinism(seed=args.seed)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(args.data or tmp)
        if not (data / "datalist.json").is_file():
            write_phantom_dataset(data, subjects=args.subjects, seed=args.seed,
                                  config=PhantomConfig(shape=(256, 256), spacing_mm=(1.2, 1.2)), progress=False)
        train_set = DiskPatchDataset(data / "datalist.json", "training", args.patch_size, args.spacing_mm)
        test_set = DiskPatchDataset(data / "datalist.json", "test", args.patch_size, args.spacing_mm)
    batch = next(iter(DataLoader(test_set, batch_size=min(args.test_patches, len(test_set)))))
    image, targets = prepare_disk_batch(batch, device)

    torch.manual_seed(args.seed)
    blocks = (1,) * max(1, min(4, (args.patch_size // 8).bit_length() - 1))
    std = DiskShapeNet(width=args.width, spatial_size=args.patch_size, blocks=blocks).to(device)
    t_std = train(std, train_set, args.train_iters, args.batch, 3e-3, args.seed, device)
    adv = copy.deepcopy(std)
    handler = AdversarialTrainingHandler("adv_r", eps=0.07, steps=5, step_size=0.02, ramp_epochs=0, seed=args.seed)
    t_adv = train(adv, train_set, args.adv_iters, args.batch, 3e-3, args.seed + 1, device, handler)
    adv.eval()

    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",) * 3
    print(f"machine: {cpu_name()}, {os.cpu_count()} logical CPUs, torch threads {torch.get_num_threads()}, "
          f"device {device}, load average at start {' '.join(f'{v:.2f}' for v in load)}; torch {torch.__version__}")
    print(f"phantom {args.subjects} subjects ({len(train_set)} training / {len(test_set)} test patches, "
          f"{image.shape[0]} attacked), {args.patch_size} px at {args.spacing_mm} mm; DiskShapeNet(width={args.width}, "
          f"blocks={blocks}); standard {args.train_iters} it ({t_std:.0f} s), adv_r fine-tune {args.adv_iters} it "
          f"({t_adv:.0f} s); L-inf; ensemble APGD-{args.apgd_steps} x{args.apgd_restarts} per objective + "
          f"Square {args.queries} queries; seed {args.seed}", flush=True)
    out = []
    for name, net in (("standard", std), ("adv_r", adv)):
        if name not in args.models:
            continue
        print(f"{name}:", flush=True)
        clean, rows = evaluate(net, image, targets, args.eps, args)
        out.append(table(name, clean, rows, args))
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",) * 3
    print("\n".join(out))
    print(f"\ntotal {time.perf_counter() - start:.0f} s; load average at end {' '.join(f'{v:.2f}' for v in load)}")


if __name__ == "__main__":
    main()

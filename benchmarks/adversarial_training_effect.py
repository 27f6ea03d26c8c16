"""Does adversarial training lower the PGD error? A small run on the phantom.

    python benchmarks/adversarial_training_effect.py [--subjects 12 --patch-size 64 --spacing-mm 1.0 ...]

Pretrains DiskShapeNet on clean phantom patches, then fine-tunes two copies for the same number of
iterations: `std` (clean) and `adv_r` (AdversarialTrainingHandler, PGD on the point SSE, eps 0.07,
step 0.01); `--arms std adv_r ima` adds the adaptive-margin arm (AdaptiveMarginTrainingHandler: PGD at a
per-disk budget up to eps 0.07, `--ima-eps-step`, `--ima-tolerance-px`). All are evaluated on the phantom's test split, clean and under PGD (L-inf, step eps/5,
point SSE). Prints a Markdown table of the mean point distance (px).
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import torch
from monai.engines import SupervisedTrainer
from monai.utils import set_determinism
from torch.utils.data import DataLoader, RandomSampler

from diskrobust.attacks import PGD, mean_point_distance
from diskrobust.batch import prepare_disk_batch
from diskrobust.datasets import DiskPatchDataset
from diskrobust.data.phantom import PhantomConfig, write_phantom_dataset
from diskrobust.handlers.adaptive_margin import AdaptiveMarginTrainingHandler
from diskrobust.handlers.adversarial import AdversarialTrainingHandler
from diskrobust.losses import DiskShapeLoss
from diskrobust.networks import DiskShapeNet


def train(net, dataset, iterations, batch, lr, seed, device, handler=None):
    gen = torch.Generator().manual_seed(seed)
    sampler = RandomSampler(dataset, replacement=True, num_samples=iterations * batch, generator=gen)
    loader = DataLoader(dataset, batch_size=batch, sampler=sampler)
    trainer = SupervisedTrainer(device=device, max_epochs=1, train_data_loader=loader, network=net,
                                optimizer=torch.optim.Adamax(net.parameters(), lr=lr), loss_function=DiskShapeLoss(),
                                prepare_batch=prepare_disk_batch, decollate=False)
    if handler is not None:
        handler.attach(trainer)
    start = time.perf_counter()
    trainer.run()
    return time.perf_counter() - start


def evaluate(net, dataset, eps_list, steps, device, seed):
    loader = DataLoader(dataset, batch_size=len(dataset))
    batch = next(iter(loader))
    image, targets = prepare_disk_batch(batch, device)
    row = {}
    for eps in eps_list:
        if eps == 0:
            adv = image
        else:
            adv = PGD(net, eps=eps, steps=steps, step_size=eps / 5, objective="points", seed=seed)(image, targets).images
        with torch.no_grad():
            net.eval()
            row[eps] = mean_point_distance(net(adv)["pred"], targets["points"]).mean().item()
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subjects", type=int, default=12)
    parser.add_argument("--patch-size", type=int, default=64)
    parser.add_argument("--spacing-mm", type=float, default=1.0)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--pretrain-iters", type=int, default=300)
    parser.add_argument("--finetune-iters", type=int, default=150)
    parser.add_argument("--train-steps", type=int, default=5, help="PGD steps during adversarial training")
    parser.add_argument("--eval-steps", type=int, default=20)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", default=None, help="phantom folder (default: a temporary one)")
    parser.add_argument("--arms", nargs="+", default=["std", "adv_r"], choices=["std", "adv_r", "fast_r", "ima"])
    parser.add_argument("--ima-eps-step", type=float, default=0.005)
    parser.add_argument("--ima-tolerance-px", type=float, default=1.0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    set_determinism(seed=args.seed)

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(args.data or tmp)
        if not (data / "datalist.json").is_file():
            write_phantom_dataset(data, subjects=args.subjects, seed=args.seed,
                                  config=PhantomConfig(shape=(256, 256), spacing_mm=(1.2, 1.2)), progress=True)
        train_set = DiskPatchDataset(data / "datalist.json", "training", args.patch_size, args.spacing_mm)
        test_set = DiskPatchDataset(data / "datalist.json", "test", args.patch_size, args.spacing_mm)

    torch.manual_seed(args.seed)
    net = DiskShapeNet(width=args.width, spatial_size=args.patch_size).to(device)
    t_pre = train(net, train_set, args.pretrain_iters, args.batch, args.lr, args.seed, device)
    arms = {}
    budgets = None
    for mode in args.arms:
        arm = copy.deepcopy(net)
        if mode == "ima":
            handler = AdaptiveMarginTrainingHandler(eps=0.07, steps=args.train_steps, step_size=0.01,
                                                    eps_step=args.ima_eps_step, tolerance_px=args.ima_tolerance_px,
                                                    seed=args.seed)
        else:
            handler = AdversarialTrainingHandler(mode, eps=0.07, steps=args.train_steps, step_size=0.01,
                                                 ramp_epochs=0, seed=args.seed)
        seconds = train(arm, train_set, args.finetune_iters, args.batch, args.lr, args.seed + 1, device, handler)
        arms[mode] = (arm, seconds)
        if mode == "ima":
            budgets = handler.summary()

    eps_list = (0.0, 0.03, 0.07)
    print(f"\nphantom: {args.subjects} subjects, {len(train_set)} training / {len(test_set)} test patches, "
          f"{args.patch_size} px at {args.spacing_mm} mm; DiskShapeNet(width={args.width}); pretrain "
          f"{args.pretrain_iters} it ({t_pre:.0f} s), fine-tune {args.finetune_iters} it x batch {args.batch}; "
          f"training PGD-{args.train_steps}; evaluation PGD-{args.eval_steps}, step eps/5, device {device}\n")
    print("| arm | fine-tune s | " + " | ".join(f"MRSE px, eps {e:g}" for e in eps_list) + " |")
    print("|---|---|" + "---|" * len(eps_list))
    for mode, (arm, seconds) in arms.items():
        row = evaluate(arm, test_set, eps_list, args.eval_steps, device, args.seed)
        print(f"| {mode} | {seconds:.0f} | " + " | ".join(f"{row[e]:.2f}" for e in eps_list) + " |")
    if budgets is not None:
        print(f"\nima per-disk budgets at the end: {', '.join(f'{k} {v:.4g}' for k, v in budgets.items())}")


if __name__ == "__main__":
    main()

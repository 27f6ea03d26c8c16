"""Cost of one adversarial-training iteration relative to a clean one: fast_r (FGSM with random start,
"fast is better than free") vs adv_r (PGD-K) vs ima (PGD-K at a per-disk budget, plus the robustness
check's points-only forward) vs std, in a real MONAI SupervisedTrainer.

    python benchmarks/fast_adversarial_cost.py [--size 64 --width 8 --batch 8 --pgd-steps 20 --iterations 3 --rounds 3]

Each round runs every arm's trainer for `--iterations` iterations, the arms interleaved; a timestamp
handler attached at ITERATION_STARTED *before* the adversarial handler and one at ITERATION_COMPLETED
time the whole iteration, attack included (the first iteration of each run is dropped as warm-up).
Prints best and median seconds per iteration and the ratio to std, with the machine and its load.
The ima arm's samples carry a "subject" identity (one disk each), with a fresh handler per run (budgets
from eps_step); its work per iteration does not depend on the budgets (PGD-K at any eps_i).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from ignite.engine import Events
from monai.engines import SupervisedTrainer

from diskrobust.batch import prepare_disk_batch
from diskrobust.handlers.adaptive_margin import AdaptiveMarginTrainingHandler
from diskrobust.handlers.adversarial import AdversarialTrainingHandler
from diskrobust.losses import DiskShapeLoss
from diskrobust.networks import DiskShapeNet


def per_iteration_seconds(net, loader, mode, pgd_steps, device) -> list[float]:
    trainer = SupervisedTrainer(device=device, max_epochs=1, train_data_loader=loader, network=net,
                                optimizer=torch.optim.Adamax(net.parameters(), lr=1e-4),
                                loss_function=DiskShapeLoss(), prepare_batch=prepare_disk_batch, decollate=False)
    starts, ends = [], []
    trainer.add_event_handler(Events.ITERATION_STARTED, lambda: starts.append(time.perf_counter()))
    if mode == "ima":
        AdaptiveMarginTrainingHandler(eps=0.07, steps=pgd_steps, step_size=0.01, eps_step=0.01,
                                      identity=("subject",)).attach(trainer)
    else:
        AdversarialTrainingHandler(mode, eps=0.07, steps=pgd_steps, step_size=0.01, ramp_epochs=0).attach(trainer)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda: ends.append(time.perf_counter()))
    trainer.run()
    return [e - s for s, e in zip(starts[1:], ends[1:])]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--pgd-steps", type=int, default=20)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    net = DiskShapeNet(width=args.width, spatial_size=args.size).to(device)
    gen = torch.Generator().manual_seed(1)
    n = args.batch * (args.iterations + 1)
    images = torch.rand((n, 1, args.size, args.size), generator=gen)
    points = args.size / 2 + args.size / 8 * torch.randn((n, 176, 2), generator=gen)
    masks = (torch.rand((n, 1, args.size, args.size), generator=gen) > 0.5).float()
    items = [{"image": images[i], "points": points[i], "mask": masks[i], "subject": f"sub-{i}"} for i in range(n)]
    loader = torch.utils.data.DataLoader(items, batch_size=args.batch)
    arms = ("std", "fast_r", "adv_r", "ima")
    times = {arm: [] for arm in arms}
    for _ in range(args.rounds):
        for arm in arms:
            times[arm] += per_iteration_seconds(net, loader, arm, args.pgd_steps, device)
    load = os.getloadavg()
    print(f"machine: {os.cpu_count()} logical CPUs, torch threads {torch.get_num_threads()}, device {device}, "
          f"load average {' '.join(f'{v:.2f}' for v in load)}")
    print(f"DiskShapeNet(width={args.width}, spatial_size={args.size}), batch {args.batch}, "
          f"adv_r and ima PGD-{args.pgd_steps}, "
          f"{args.rounds} interleaved rounds x {args.iterations} timed iterations\n")
    base_best, base_med = min(times["std"]), statistics.median(times["std"])
    print("| arm | best s/iteration | median s/iteration | cost vs std (best) | cost vs std (median) |")
    print("|---|---|---|---|---|")
    for arm in arms:
        best, med = min(times[arm]), statistics.median(times[arm])
        print(f"| {arm} | {best:.3f} | {med:.3f} | {best / base_best:.2f}x | {med / base_med:.2f}x |")


if __name__ == "__main__":
    main()

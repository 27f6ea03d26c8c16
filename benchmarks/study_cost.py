"""What one study arm costs, from counted operations and measured per-image step times, and the
wall time of a whole profile on N GPUs (the Ray engine: one arm per GPU).

    python benchmarks/study_cost.py --profile configs/study/paper.json --gpu-tflops 50
    python benchmarks/study_cost.py --profile configs/study/paper.json --device cuda   # measure the rate

Two kinds of image-step make up every arm: a training step (forward, DiskShapeLoss, backward to
the weights, Adamax) and a PGD/OOD iteration (forward, backward to the input only, weights
frozen). Their operations are counted with torch.utils.flop_counter (independent of the machine
and its load) and their time measured on this device (interleaved rounds; best and median). An
arm's work is counted from the profile: standard training = epochs x samples training steps;
fine-tuning adds its PGD iterations per sample (adv_r/adv_s: steps, adv_rs: 2 x steps) and trains
on the clean and attacked copies (2 or 3 training steps per sample; rand: 2); evaluation = IND
(attacks x heads x eps x test patches x steps x restarts) + OOD (starts x heads x eps x targets x
steps). Without a GPU the GPU time is FLOPs / `--gpu-tflops` (an assumed sustained rate, printed as
such); with `--device cuda` the measured rate replaces it. The schedule on N GPUs respects the one
dependency (fine-tuned arms start after their standard arm) and takes arms longest first.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path


def step_costs(width: int, size: int, batch: int, rounds: int, device: str) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from diskrobust.losses import DiskShapeLoss
    from diskrobust.networks import DiskShapeNet

    dev = torch.device(device)
    g = torch.Generator().manual_seed(0)
    net = DiskShapeNet(spatial_size=size, width=width).to(dev)
    opt = torch.optim.Adamax(net.parameters(), lr=1e-3)
    loss_fn = DiskShapeLoss()
    x = torch.rand(batch, 1, size, size, generator=g).to(dev)
    tgt = {"points": net.mean_shape.detach() + torch.randn(batch, net.num_points, 2, generator=g).to(dev),
           "mask": (torch.rand(batch, 1, size, size, generator=g) > 0.5).float().to(dev)}

    def train():
        net.train()
        for p in net.parameters():
            p.requires_grad_(True)
        loss = loss_fn(net(x), tgt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def attack():  # one PGD iteration: eval mode, input gradient only
        net.eval()
        for p in net.parameters():
            p.requires_grad_(False)
        xa = x.clone().requires_grad_(True)
        out = net(xa)
        loss = ((out["pred"] - tgt["points"]) ** 2).sum()
        loss.backward()  # weights are frozen: only the input's gradient is computed
        return xa.grad.sign()

    flops = {}
    for name, fn in (("train", train), ("attack", attack)):
        with FlopCounterMode(display=False) as counter:
            fn()
        flops[name] = counter.get_total_flops() / batch
    times: dict[str, list[float]] = {"train": [], "attack": []}
    cpu: dict[str, list[float]] = {"train": [], "attack": []}
    for _ in range(rounds):  # interleaved, so load changes hit both alike
        for name, fn in (("train", train), ("attack", attack)):
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            t, c = time.perf_counter(), time.process_time()
            fn()
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            times[name].append((time.perf_counter() - t) / batch)
            cpu[name].append((time.process_time() - c) / batch)
    # the first round warms up; other jobs only ever slow a step down, so the best is the machine's speed
    return {"flops": flops, "best_s": {k: min(v[1:] or v) for k, v in times.items()},
            "median_s": {k: statistics.median(v[1:] or v) for k, v in times.items()},
            "cpu_s": {k: min(v[1:] or v) for k, v in cpu.items()}}


def arm_work(profile: dict, attack_profile: dict, test_patches: int) -> dict[str, dict[str, float]]:
    """Image-steps per arm kind: {kind: {"train": n, "attack": n}} for training and evaluation."""
    tr, adv = profile["train"], profile.get("adversarial", {})
    samples = tr.get("epochs", 8) * tr.get("samples_per_epoch", 6400)
    fine = adv.get("epochs", tr.get("epochs", 8)) * tr.get("samples_per_epoch", 6400)
    steps = adv.get("adv_steps", 20)
    ind, ood = attack_profile["ind"], attack_profile["ood"]
    ind_steps = len(ind["heads"]) * sum(len(ind["eps"][a]) for a in ind["attacks"]) * test_patches \
        * ind["steps"] * max(1, ind.get("restarts", 1))
    ood_n = min(test_patches, ood.get("num_samples") or test_patches)
    ood_steps = len(ood["starts"]) * len(ood["heads"]) * len(ood["eps"]) * ood_n * ood["steps"]
    return {
        "std": {"train": samples, "attack": 0.0},
        "rand": {"train": 2 * fine, "attack": 0.0},
        "adv_r": {"train": 2 * fine, "attack": steps * fine},
        "adv_s": {"train": 2 * fine, "attack": steps * fine},
        "adv_rs": {"train": 3 * fine, "attack": 2 * steps * fine},
        "evaluate": {"train": 0.0, "attack": ind_steps + ood_steps},
    }


def makespan(arms: list[tuple[str, float, float]], gpus: int) -> float:
    """Greedy list schedule: (level, standard training, [what waits for it: its evaluation, the fine-tuned
    arms (training + evaluation)]) in hours -> wall hours on `gpus` GPUs."""
    free = [0.0] * gpus
    ready_fine = []
    for _, std_s, fines in sorted(arms, key=lambda a: -a[1]):
        i = min(range(gpus), key=free.__getitem__)
        free[i] += std_s
        ready_fine += [(free[i], s) for s in fines]
    for ready, s in sorted(ready_fine, key=lambda r: (-r[1], r[0])):
        i = min(range(gpus), key=free.__getitem__)
        free[i] = max(free[i], ready) + s
    return max(free)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="configs/study/paper.json")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=4, help="images per timed step (CPU: small)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--gpu-tflops", type=float, default=25.0,
                    help="assumed sustained rate of one GPU on this network (TFLOP/s) when --device is cpu; "
                         "default 25: an A100-class GPU training a ResNet in TF32 without AMP")
    ap.add_argument("--test-patches", type=int, default=150,
                    help="disks in the test split (the paper profile's 200-subject phantom: 30 subjects x 5)")
    ap.add_argument("--gpus", type=int, nargs="+", default=[1, 2, 4, 8, 15])
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    root = Path(__file__).resolve().parents[1]
    profile = json.loads((root / args.profile).read_text() if not Path(args.profile).is_file()
                         else Path(args.profile).read_text())
    ev = profile.get("evaluation", {}).get("profile", "cpu-quick")
    attack_profile = json.loads((root / "bundles" / "lumbar_disk_attack" / "configs" / "profiles" / f"{ev}.json").read_text())
    tr = profile["train"]
    width, size = tr.get("width", 16), tr.get("patch_size", 128)
    print(f"# study cost: {args.profile} (width {width}, {size} px), device {args.device}, {args.threads} thread(s), "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    costs = step_costs(width, size, args.batch, args.rounds, args.device)
    f, best, med = costs["flops"], costs["best_s"], costs["median_s"]
    for k in ("train", "attack"):
        print(f"- {k} image-step: {f[k] / 1e9:.1f} GFLOP; {best[k]:.3f} s best, {med[k]:.3f} s median wall, "
              f"{costs['cpu_s'][k]:.3f} CPU s per image ({f[k] / costs['cpu_s'][k] / 1e9:.1f} GFLOP per CPU second)")
    rate = None if args.device == "cpu" else min(f[k] / best[k] for k in f) / 1e12
    gpu_rate = rate or args.gpu_tflops
    work = arm_work(profile, attack_profile, args.test_patches)
    print(f"\nGPU rate: {gpu_rate:.1f} TFLOP/s ({'measured' if rate else 'ASSUMED, not measured'})\n")
    print("| stage | training image-steps | PGD/OOD image-steps | PFLOP | CPU hours (1 core of this machine) | GPU hours |")
    print("|---|---|---|---|---|---|")
    hours = {}
    for kind, w in work.items():
        fl = w["train"] * f["train"] + w["attack"] * f["attack"]
        cpu_h = (w["train"] * costs["cpu_s"]["train"] + w["attack"] * costs["cpu_s"]["attack"]) / 3600
        hours[kind] = fl / (gpu_rate * 1e12) / 3600
        print(f"| {kind} | {w['train']:,.0f} | {w['attack']:,.0f} | {fl / 1e15:,.1f} | {cpu_h:,.0f} | {hours[kind]:.2f} |")
    levels = profile.get("shape_modes", [3, 5, 10])
    methods = [m for m in profile.get("methods", []) if m != "std"]
    ev_h = hours["evaluate"]
    arms = [(f"P{k}", hours["std"], [ev_h] + [hours[m] + ev_h for m in methods]) for k in levels]
    total = sum(a[1] + sum(a[2]) for a in arms)
    print(f"\n{len(levels) * (1 + len(methods))} arms, {total:.1f} GPU hours in all")
    print("\n| GPUs | wall time (h) |\n|---|---|")
    for n in args.gpus:
        print(f"| {n} | {makespan(arms, n):.1f} |")


if __name__ == "__main__":
    main()

"""What bfloat16 changes: clean error of a bf16-trained model, and the strength of bf16-generated PGD.

1. Training: the same DiskShapeNet, data stream and seed trained with `TrainingStep(precision="fp32")`
   and `"bf16"` (forward under torch.autocast; loss, gradients, optimiser state fp32); both scored
   in fp32 on the same held-out samples. Paired per-sample differences give a bootstrap 95 % CI.
2. Attacks: `diskrobust.attacks.PGD` (points objective) run on the fp32-trained model with
   `precision="fp32"` and `"bf16"` (its gradient passes under bfloat16 autocast, its last scoring pass
   and returned losses fp32); both adversarial sets are scored here in fp32 with the plain network.
   bf16 generation may be offered for evaluation only if its strength (mean fp32 point SSE at the
   adversarials) is within 2 % of fp32's.

Data: synthetic disk-like ellipses (random centre, axes, tilt; noisy intensities), generated here,
so that the run is small and needs no dataset. Timings are printed too (bf16 is only faster where
the hardware has bf16 arithmetic: AVX512-BF16/AMX CPUs, Ampere+ GPUs).

    python benchmarks/precision_effect.py                       # CPU, 64 px, width 8, 2 seeds
    python benchmarks/precision_effect.py --device cuda --size 128 --width 16 --steps 400 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from diskrobust.attacks import PGD
from diskrobust.data.contours import polygon_fill_torch
from diskrobust.losses import DiskShapeLoss, point_sse_per_sample
from diskrobust.networks import DiskShapeNet
from diskrobust.training import StepSettings, forward_backward

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import machine, sync  # noqa: E402


def synthetic_disks(n: int, size: int, seed: int, device) -> tuple[torch.Tensor, dict]:
    """n ellipse 'disks' in the contract's point order: images (n, 1, S, S), points (n, 176, 2), masks."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.rand((n, 5), generator=gen, dtype=torch.float64)
    cx = size / 2 + (u[:, 0] - 0.5) * 0.15 * size
    cy = size / 2 + (u[:, 1] - 0.5) * 0.15 * size
    a = (0.18 + 0.10 * u[:, 2]) * size
    b = (0.06 + 0.05 * u[:, 3]) * size
    tilt = (u[:, 4] - 0.5) * 0.6
    theta = -math.pi / 4 + 2 * math.pi * torch.arange(176, dtype=torch.float64) / 176
    ex, ey = -torch.cos(theta)[None] * a[:, None], torch.sin(theta)[None] * b[:, None]
    x = cx[:, None] + ex * torch.cos(tilt)[:, None] - ey * torch.sin(tilt)[:, None]
    y = cy[:, None] + ex * torch.sin(tilt)[:, None] + ey * torch.cos(tilt)[:, None]
    points = torch.stack([x, y], -1).float()
    mask = polygon_fill_torch(points, (size, size)).float()
    noise = torch.rand((n, 1, size, size), generator=gen)
    images = (0.25 + 0.45 * mask + 0.15 * noise).clamp(0, 1)
    return images.to(device), {"points": points.to(device), "mask": mask.to(device)}


def point_distance(net, images, points, chunk: int = 64) -> torch.Tensor:
    """Mean Euclidean point distance (px) per sample, fp32, eval mode."""
    net.eval()
    out = []
    with torch.no_grad():
        for s in range(0, len(images), chunk):
            pred = net(images[s:s + chunk].float())["pred"]
            out.append((pred - points[s:s + chunk]).norm(dim=-1).mean(-1))
    return torch.cat(out)


def bootstrap_ci(per_seed: list[np.ndarray], seed: int = 0, n: int = 2000) -> tuple[float, float]:
    """95 % CI of the mean, resampling seeds and then samples within each (both vary)."""
    rng = np.random.default_rng(seed)
    means = []
    for _ in range(n):
        picked = [per_seed[i] for i in rng.integers(len(per_seed), size=len(per_seed))]
        means.append(np.mean([rng.choice(v, size=len(v)).mean() for v in picked]))
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def train(precision: str, seed: int, args, device) -> tuple[DiskShapeNet, float]:
    torch.manual_seed(seed)
    net = DiskShapeNet(spatial_size=args.size, width=args.width).to(device).train()
    optimiser = torch.optim.Adamax(net.parameters(), lr=args.lr)
    loss_fn = DiskShapeLoss()
    settings = StepSettings(precision=precision)
    sync(device)
    start = time.perf_counter()
    for step in range(args.steps):
        images, targets = synthetic_disks(args.batch, args.size, 10_000 * seed + step, device)
        optimiser.zero_grad(set_to_none=True)
        forward_backward(net, loss_fn, images, targets, settings)
        optimiser.step()
    sync(device)
    return net, (time.perf_counter() - start) / args.steps


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=40, help="training steps per model")
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--test", type=int, default=64, help="held-out samples")
    parser.add_argument("--eps", type=float, default=0.03)
    parser.add_argument("--pgd-steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise SystemExit("this CUDA device has no bfloat16 support")
    print(machine(device))
    test_images, test_targets = synthetic_disks(args.test, args.size, 999_999, device)

    print(f"\n1. Training, DiskShapeNet(width={args.width}), {args.size} px, {args.steps} steps of batch {args.batch}, "
          f"lr {args.lr}, seeds {args.seeds}; clean error scored in fp32 on {args.test} held-out samples\n")
    print("| seed | fp32: mean point distance (px) | bf16: mean point distance (px) | bf16 - fp32 (px) "
          "| s/step fp32 | s/step bf16 |")
    print("|---|---:|---:|---:|---:|---:|")
    diffs, models = [], {}
    for seed in args.seeds:
        errors, secs = {}, {}
        for precision in ("fp32", "bf16"):
            net, secs[precision] = train(precision, seed, args, device)
            errors[precision] = point_distance(net, test_images, test_targets["points"])
            models[(precision, seed)] = net
        d = (errors["bf16"] - errors["fp32"]).cpu().numpy()
        diffs.append(d)
        print(f"| {seed} | {errors['fp32'].mean():.3f} | {errors['bf16'].mean():.3f} | {d.mean():+.3f} "
              f"| {secs['fp32']:.3f} | {secs['bf16']:.3f} |")
    d = np.concatenate(diffs)
    lo, hi = bootstrap_ci(diffs)
    verdict = "inconclusive (the CI contains 0)" if lo <= 0 <= hi else ("bf16 worse" if lo > 0 else "bf16 better")
    print(f"\nbf16 - fp32 clean error over seeds x samples: {d.mean():+.3f} px, bootstrap 95 % CI over seeds and samples "
          f"[{lo:+.3f}, {hi:+.3f}]: {verdict}")

    print(f"\n2. PGD (points, L-inf eps {args.eps}, {args.pgd_steps} steps, seed 0) on each fp32-trained model, "
          f"generated with PGD(precision='fp32') and PGD(precision='bf16'), scored in fp32\n")
    print("| seed | fp32 attack: mean point SSE | bf16 attack: mean point SSE | bf16 / fp32 strength "
          "| s/attack fp32 | s/attack bf16 |")
    print("|---|---:|---:|---:|---:|---:|")
    ratios = []
    for seed in args.seeds:
        net = models[("fp32", seed)]
        strength, secs = {}, {}
        for precision in ("fp32", "bf16"):
            attack = PGD(net, eps=args.eps, steps=args.pgd_steps, objective="points", seed=0, precision=precision)
            sync(device)
            start = time.perf_counter()
            adv = attack(test_images, test_targets).images
            sync(device)
            secs[precision] = time.perf_counter() - start
            net.eval()
            with torch.no_grad():  # fp32 scoring, outside autocast
                strength[precision] = point_sse_per_sample(net(adv.float())["pred"], test_targets["points"]).mean()
        ratio = float(strength["bf16"] / strength["fp32"])
        ratios.append(ratio)
        print(f"| {seed} | {strength['fp32']:.1f} | {strength['bf16']:.1f} | {ratio:.3f} | {secs['fp32']:.2f} "
              f"| {secs['bf16']:.2f} |")
    worst = min(ratios)
    print(f"\nbf16-generated attacks: strength {statistics.mean(ratios):.3f} of fp32 on average, worst {worst:.3f}: "
          + ("within 2 %: may be offered" if worst >= 0.98 else "NOT within 2 %: do not offer bf16 attack generation"))
    print(machine(device) + " (at the end)")


if __name__ == "__main__":
    main()

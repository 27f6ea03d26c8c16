"""Where a training step's time goes: convolutions, GroupNorm, activations and the rest, per layout.

    python benchmarks/train_step_profile.py [--width 16 --batch 16 --size 128 --steps 3 --threads 1]

One step = DiskShapeNet forward (both heads) + DiskShapeLoss + backward + Adamax step on random
patches, the bundle's step. For NCHW and channels_last each, `--steps` steps run under
torch.profiler (after two untimed ones) and the operators' own CPU time is summed per category. The
last column is what the step would take if everything but the convolutions cost nothing: a bound
on what any change of layout, chunking or fusion of the small operators can give without faster
convolutions. Prints the machine and its load; the profiler adds a little overhead of its own.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/_bench.py
from _bench import conv_peak, count_flops, machine  # noqa: E402

from diskrobust.compute import channels_last_weight_grad_hazards  # noqa: E402
from diskrobust.losses import DiskShapeLoss  # noqa: E402
from diskrobust.networks import DiskShapeNet  # noqa: E402

# operator name fragments -> category (first match wins); the rest is "other"
CATEGORIES = (("convolution", ("convolution",)), ("GroupNorm", ("group_norm",)),
              ("LeakyReLU", ("leaky_relu",)), ("copies and concatenation", ("copy_", "cat", "contiguous")),
              ("optimiser and loss", ("adamax", "lerp", "addcdiv", "maximum", "abs", "sigmoid", "mse", "mul_")))


def category(name: str) -> str:
    name = name.lower()
    for label, parts in CATEGORIES:
        if any(p in name for p in parts):
            return label
    return "other"


def profile_layout(channels_last: bool, args) -> tuple[dict[str, float], float]:
    """(milliseconds per step per category, GFLOP per step)."""
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = DiskShapeNet(width=args.width, spatial_size=args.size).train().to(memory_format=fmt)
    optimiser = torch.optim.Adamax(net.parameters(), lr=1e-3)
    loss_fn = DiskShapeLoss()
    gen = torch.Generator().manual_seed(1)
    images = torch.rand(args.batch, 1, args.size, args.size, generator=gen).contiguous(memory_format=fmt)
    targets = {"points": args.size / 2 + args.size / 12 * torch.randn(args.batch, 176, 2, generator=gen),
               "mask": (torch.rand(args.batch, 1, args.size, args.size, generator=gen) > 0.5).float()}

    def step():
        optimiser.zero_grad(set_to_none=True)
        loss_fn(net(images), targets).backward()
        optimiser.step()

    for _ in range(2):
        step()
    flops = count_flops(step)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
    per: dict[str, float] = {}
    for event in prof.key_averages():
        if event.key.startswith(("autograd::", "Optimizer.", "ProfilerStep")) or "Backward0" in event.key:
            continue  # wrappers: their work is in the aten operators they call
        label = category(event.key)
        per[label] = per.get(label, 0.0) + event.self_cpu_time_total / 1e3 / args.steps
    return per, flops / 1e9


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    peak = conv_peak(torch.device("cpu")) / 1e9
    layouts = [("NCHW", False), ("channels_last", True)]
    hazards = channels_last_weight_grad_hazards(DiskShapeNet(width=args.width, spatial_size=args.size), "cpu")
    if hazards:  # oneDNN crashes or computes these layers' weight gradients wrongly in channels_last
        print(f"channels_last left out: oneDNN issue 6035 at {', '.join(hazards)} (use --width 16 or more)")
        layouts = layouts[:1]
    rows = {name: profile_layout(cl, args) for name, cl in layouts}
    print(machine())
    print(f"DiskShapeNet(width={args.width}, {args.size} px), batch {args.batch}, {args.steps} profiled steps per "
          f"layout; measured fp32 conv peak {peak:.0f} GFLOP/s\n")
    labels = [label for label, _ in CATEGORIES] + ["other"]
    print("| layout | step ms (profiled) | " + " | ".join(f"{label} ms" for label in labels)
          + " | GFLOP/step | GFLOP/s in the convolutions | step if only the convolutions cost: ms |")
    print("|---" * (len(labels) + 5) + "|")
    for name, (per, gflop) in rows.items():
        total = sum(per.values())
        conv = per.get("convolution", 0.0)
        cells = " | ".join(f"{per.get(label, 0.0):.0f} ({100 * per.get(label, 0.0) / total:.0f} %)" for label in labels)
        print(f"| {name} | {total:.0f} | {cells} | {gflop:.1f} | {gflop / (conv / 1e3):.0f} "
              f"({100 * gflop / (conv / 1e3) / peak:.0f} % of peak) | {conv:.0f} |")


if __name__ == "__main__":
    main()

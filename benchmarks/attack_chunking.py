"""PGD on the points objective: today's path (full forward, whole batch) vs the points-only forward
(`DiskShapeNet.forward_heads`, no U-Net decoder), points-only with the batch in chunks, and the same on
a channels_last copy of the network (`diskrobust.attacks.layout_model`).

    python benchmarks/attack_chunking.py [--size 128 --width 16 --batch 32 --steps 5 --chunks 4 8 16 --rounds 3]

All variants run interleaved in every round (a change in the machine's load hits them alike); each is
timed `--rounds` times, best and median reported. "old" is the code as it was before the points-only
path: the same PGD fed an objective that does not declare the heads it reads, so the full network runs,
with the whole batch at once. The adversarial images of every variant are compared with "old"
(`torch.equal`) and the table says whether they are bit-identical; where they are not (channels_last:
other convolution algorithms), the last column gives the attack's strength relative to "old" (the
summed point SSE at the returned adversarials, scored by the NCHW network). It also prints the layout
the evaluation engine's `chunk_size: auto` / `channels_last: auto` would choose (`tune_attack_layout`). FLOPs per image-step come from
torch.utils.flop_counter (forward + input-gradient backward, one step); the fraction of the measured
fp32 convolution peak (a large 3x3 convolution timed on the same thread budget) is printed next to each
rate. Prints the machine (CPU, threads, load average).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/_bench.py
from _bench import conv_peak, machine  # noqa: E402

from diskrobust.attacks import PGD, layout_model, tune_attack_layout
from diskrobust.losses import point_sse_per_sample
from diskrobust.networks import DiskShapeNet


def full_forward_points(outputs, targets):
    """The point SSE without a `heads` attribute: PGD runs the whole network, as before the split."""
    return point_sse_per_sample(outputs["pred"], targets["points"])


def step_flops(net, image, targets, objective, chunk) -> float:
    """FLOPs of one PGD step (forward + input-gradient backward) per image."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        PGD(net, eps=0.07, steps=1, objective=objective, chunk_size=chunk, seed=0)(image, targets)
    # steps=1 is one forward+backward plus one scoring forward (about a third of a step): count 1.33 steps
    return counter.get_total_flops() / image.shape[0] / (4.0 / 3.0)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--chunks", type=int, nargs="*", default=[4, 8, 16])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-channels-last", action="store_true", help="leave out the channels_last variants")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    net = DiskShapeNet(width=args.width, spatial_size=args.size).to(device).eval()
    gen = torch.Generator().manual_seed(1)
    image = torch.rand((args.batch, 1, args.size, args.size), generator=gen).to(device)
    targets = {"points": (args.size / 2 + args.size / 8 * torch.randn((args.batch, 176, 2), generator=gen)).to(device)}

    twin = layout_model(net, True)
    variants = {"old: full forward, whole batch": (full_forward_points, None, net),
                "points-only forward, whole batch": ("points", None, net)}
    variants.update({f"points-only forward, chunks of {c}": ("points", c, net) for c in args.chunks if c < args.batch})
    if not args.no_channels_last:
        variants["points-only, channels_last, whole batch"] = ("points", None, twin)
        variants.update({f"points-only, channels_last, chunks of {c}": ("points", c, twin)
                         for c in args.chunks if c < args.batch})
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def run(objective, chunk, model):
        result = PGD(model, eps=0.07, steps=args.steps, objective=objective, chunk_size=chunk, seed=0)(image, targets)
        sync()
        return result.images

    def strength(adv):
        with torch.no_grad():
            return float(point_sse_per_sample(net(adv)["pred"], targets["points"]).sum())

    reference = run(*variants["old: full forward, whole batch"])
    advs = {name: run(*v) for name, v in variants.items()}  # also the warm-up
    identical = {name: torch.equal(adv, reference) for name, adv in advs.items()}
    ratio = {name: strength(adv) / strength(reference) for name, adv in advs.items()}
    chosen, _ = tune_attack_layout(net, image, heads=("pred",), sizes=args.chunks)
    times = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, (objective, chunk, model) in variants.items():
            start = time.perf_counter()
            run(objective, chunk, model)
            times[name].append(time.perf_counter() - start)
    peak = conv_peak(device) / 1e9
    flops = {name: step_flops(net, image, targets, *v[:2]) for name, v in variants.items()}

    print(f"{machine(device)}; device {device}")
    print(f"DiskShapeNet(width={args.width}, spatial_size={args.size}), batch {args.batch}, PGD L-inf "
          f"{args.steps} steps (+1 scoring pass) on the point SSE; {args.rounds} interleaved rounds; "
          f"measured fp32 conv peak (the better of NCHW and channels_last) {peak:.0f} GFLOP/s; "
          f"the evaluation engine's autotune chose: {chosen.describe()}\n")
    base = min(times["old: full forward, whole batch"])
    print("| variant | best s | median s | image-steps/s (best) | speed-up vs old (best) | speed-up (median) "
          "| GFLOP per image-step | GFLOP/s | % of conv peak | adversarials bit-identical to old | strength / old |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    base_med = statistics.median(times["old: full forward, whole batch"])
    for name in variants:
        best, med = min(times[name]), statistics.median(times[name])
        rate = args.batch * args.steps / best
        gflops = flops[name] * rate / 1e9
        print(f"| {name} | {best:.3f} | {med:.3f} | {rate:.1f} | {base / best:.2f}x | {base_med / med:.2f}x "
              f"| {flops[name] / 1e9:.2f} | {gflops:.1f} | {100 * gflops / peak:.0f} % | {identical[name]} "
              f"| {ratio[name]:.4f} |")


if __name__ == "__main__":
    main()

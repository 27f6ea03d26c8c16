"""Training throughput and peak memory of DiskShapeNet per width and batch size.

One training step = forward (both heads) + DiskShapeLoss + backward + Adamax step, on random
128 x 128 patches. Each (width, batch) runs in its own subprocess so that the peak resident
memory (resource.getrusage ru_maxrss; tracemalloc cannot see torch's allocations) belongs to that
configuration alone; on CUDA the peak is torch.cuda.max_memory_allocated.

    python benchmarks/train_speed.py                      # widths 8 16 32 64, batches 16 64, CPU, 2 threads
    python benchmarks/train_speed.py --device cuda --threads 16 --iters 20
    python benchmarks/train_speed.py --widths 16 --batch 64 --iters 3
    python benchmarks/train_speed.py --compare --widths 16 --batch 16 32 --threads 1 --rounds 5

`--compare`: today's step (MONAI's default iteration: NCHW, whole batch, fp32) against
`diskrobust.training.TrainingStep` with the settings its autotune picks on this machine (and each
candidate it tried), in one process, the paths alternating within each of `--rounds` rounds; every
row has its FLOP count, GFLOP/s and the fraction of the fp32 convolution peak, a large 3x3
convolution timed inside the same rounds (so under the same load). `--bf16` adds the tuned step under bfloat16 autocast.

Prints a Markdown table: operations per step (torch.utils.flop_counter, independent of the
machine's load), images/s over the timed steps and at the fastest step (other jobs only slow a
step down), CPU s/step, the wall time of a 320-patch epoch at the fastest step, memory.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/_bench.py

EPOCH_IMAGES = 320  # "a few hundred patches": the epoch the default width is chosen for


def _maxrss_mib() -> float:
    # ru_maxrss is in KiB on Linux (bytes on macOS)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def measure(width: int, batch: int, iters: int, warmup: int, device: str, threads: int, size: int, seed: int) -> dict:
    """Time `iters` training steps after `warmup` ones; returns a dict of figures."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from diskrobust.losses import DiskShapeLoss
    from diskrobust.networks import DiskShapeNet

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    dev = torch.device(device)
    net = DiskShapeNet(spatial_size=size, width=width).to(dev).train()
    optimiser = torch.optim.Adamax(net.parameters(), lr=1e-3)
    loss_fn = DiskShapeLoss()
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 1, size, size, generator=generator).to(dev)
    targets = {
        "points": (net.mean_shape + torch.randn(batch, net.num_points, 2, generator=generator).to(dev)),
        "mask": (torch.rand(batch, 1, size, size, generator=generator) > 0.5).float().to(dev),
    }
    baseline_rss = _maxrss_mib()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)

    def step():
        loss = loss_fn(net(images), targets)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()

    # the operation count does not depend on the machine's load, unlike the timings
    with FlopCounterMode(display=False) as counter:
        step()
    for _ in range(max(warmup - 1, 0)):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    step_seconds = []
    start_cpu = time.process_time()
    for _ in range(iters):
        start = time.perf_counter()
        step()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        step_seconds.append(time.perf_counter() - start)
    seconds = sum(step_seconds) / iters
    # on a shared machine other jobs only ever slow a step down: the fastest step is the best
    # estimate of the machine's speed, the mean what this run got
    best = min(step_seconds)
    # CPU seconds of all threads: wall time grows with the machine's load, CPU time much less
    cpu_seconds = (time.process_time() - start_cpu) / iters
    return {
        "width": width,
        "batch": batch,
        "params": sum(p.numel() for p in net.parameters()),
        "gflop_per_step": counter.get_total_flops() / 1e9,
        "s_per_step": seconds,
        "cpu_s_per_step": cpu_seconds,
        "best_s_per_step": best,
        "images_per_s": batch / seconds,
        "best_images_per_s": batch / best,
        "epoch_s": EPOCH_IMAGES / (batch / seconds),
        "best_epoch_s": EPOCH_IMAGES / (batch / best),
        "peak_rss_mib": _maxrss_mib(),
        "rss_increase_mib": _maxrss_mib() - baseline_rss,
        "cuda_peak_mib": torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None,
    }


def compare(width: int, batch: int, device: str, size: int, rounds: int, seed: int, bf16: bool, peak_layout: bool,
            extra: bool = False) -> None:
    """Old vs tuned training step, interleaved; prints a Markdown table."""
    import statistics

    import torch

    from _bench import count_flops, interleaved, peak_conv
    from diskrobust.losses import DiskShapeLoss
    from diskrobust.networks import DiskShapeNet
    from diskrobust.training import StepSettings, autotune, forward_backward, set_memory_format

    dev = torch.device(device)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 1, size, size, generator=gen).to(dev)
    loss_fn = DiskShapeLoss()
    nets, optimisers = {}, {}

    def make(name):
        torch.manual_seed(seed)
        nets[name] = DiskShapeNet(spatial_size=size, width=width).to(dev).train()
        optimisers[name] = torch.optim.Adamax(nets[name].parameters(), lr=1e-3)
        return nets[name]

    base = make("today")
    targets = {
        "points": (base.mean_shape + torch.randn(batch, base.num_points, 2, generator=gen).to(dev)),
        "mask": (torch.rand(batch, 1, size, size, generator=gen) > 0.5).float().to(dev),
    }

    def today():  # what SupervisedTrainer's default _iteration does, in the same order
        net, opt = nets["today"], optimisers["today"]
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(images), targets).mean()
        loss.backward()
        opt.step()

    chosen, tried = autotune(base, loss_fn, images, repeats=2)
    settings = {"today (NCHW, whole batch, fp32)": None, f"tuned: {chosen.describe()}": chosen}
    if extra:  # other candidates the autotune tried, so that its choice can be checked in the same rounds
        for cand in (StepSettings(True, None), StepSettings(False, 8), StepSettings(True, 8)):
            if cand != chosen and (cand.micro_batch is None or cand.micro_batch < batch):
                settings[cand.describe()] = cand
    if bf16:
        cand = StepSettings(chosen.channels_last, chosen.micro_batch, "bf16")
        settings[f"tuned + bf16: {cand.describe()}"] = cand

    fns = {}
    for label, cand in settings.items():
        if cand is None:
            fns[label] = today
            continue
        net = set_memory_format(make(label), cand.channels_last)

        def step(net=net, opt=optimisers[label], cand=cand):
            opt.zero_grad(set_to_none=True)
            forward_backward(net, loss_fn, images, targets, cand)
            opt.step()

        fns[label] = step
    flops = {label: count_flops(fn) for label, fn in fns.items()}
    # the peak reference runs inside the rounds too, so that it sees the same load as the steps
    peak_fn, peak_flops = peak_conv(dev, channels_last=peak_layout)
    times = interleaved({**fns, "_peak": peak_fn}, rounds, dev)
    peak_times = times.pop("_peak")
    peak = peak_flops / statistics.median(peak_times)
    today_times = times[next(iter(times))]
    print(f"\nTraining step, DiskShapeNet(width={width}), batch {batch}, {size} x {size}, device {device}, "
          f"{rounds} interleaved rounds after 1 warm-up; autotune tried: "
          + "; ".join(f"{k} {min(v):.3f} s" for k, v in tried.items()) + "\n")
    print(f"fp32 conv peak in these rounds: median {peak / 1e9:.1f} GFLOP/s, best {peak_flops / min(peak_times) / 1e9:.1f}\n")
    print("| step | GFLOP/step | s/step best / median / worst | images/s (median) | GFLOP/s (median) "
          "| % of the conv peak (per round, median) | speed-up vs today per round: min / median / max |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, secs in times.items():
        med = statistics.median(secs)
        # paired per round: both sides of each ratio ran back to back, under the same load
        fraction = statistics.median((flops[label] / t) / (peak_flops / p) for t, p in zip(secs, peak_times))
        ups = sorted(a / b for a, b in zip(today_times, secs))
        print(f"| {label} | {flops[label] / 1e9:.1f} | {min(secs):.3f} / {med:.3f} / {max(secs):.3f} "
              f"| {batch / med:.1f} | {flops[label] / med / 1e9:.1f} | {100 * fraction:.0f} % "
              f"| {ups[0]:.2f}x / {statistics.median(ups):.2f}x / {ups[-1]:.2f}x |")


def table(rows: list[dict]) -> str:
    lines = [
        "| width | parameters | batch | GFLOP/step | images/s (mean) | images/s (fastest step) | s/step (mean) "
        f"| CPU s/step | {EPOCH_IMAGES}-patch epoch (s, fastest step) | peak RSS (MiB) "
        "| RSS growth in training (MiB) | CUDA peak allocated (MiB) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        cuda = "-" if r["cuda_peak_mib"] is None else f"{r['cuda_peak_mib']:.0f}"
        lines.append(f"| {r['width']} | {r['params'] / 1e6:.2f} M | {r['batch']} | {r['gflop_per_step']:.1f} "
                     f"| {r['images_per_s']:.1f} | {r['best_images_per_s']:.1f} | {r['s_per_step']:.3f} "
                     f"| {r['cpu_s_per_step']:.3f} | {r['best_epoch_s']:.1f} | {r['peak_rss_mib']:.0f} "
                     f"| {r['rss_increase_mib']:.0f} | {cuda} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default cpu)")
    parser.add_argument("--widths", type=int, nargs="+", default=[8, 16, 32, 64], help="first-stage widths")
    parser.add_argument("--batch", type=int, nargs="+", default=[16, 64], help="batch sizes")
    parser.add_argument("--iters", type=int, default=3, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed steps first (the first one also counts the FLOPs); at least 1")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--size", type=int, default=128, help="patch size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="also print the rows as JSON")
    parser.add_argument("--compare", action="store_true",
                        help="today's step vs the autotuned TrainingStep, interleaved, with the measured conv peak")
    parser.add_argument("--rounds", type=int, default=5, help="--compare: interleaved timing rounds")
    parser.add_argument("--bf16", action="store_true", help="--compare: also the tuned step under bf16 autocast")
    parser.add_argument("--candidates", action="store_true",
                        help="--compare: also time the other layout/chunk candidates in the same rounds")
    parser.add_argument("--single", action="store_true", help=argparse.SUPPRESS)  # child process mode
    args = parser.parse_args(argv)
    if args.iters < 1 or args.warmup < 1:
        parser.error("--iters and --warmup must be >= 1")

    if args.compare:
        import torch

        from _bench import interleaved, machine, peak_conv

        torch.set_num_threads(args.threads)
        dev = torch.device(args.device)
        print(machine(dev))
        layouts = {}
        for channels_last in (False, True):
            fn, flops = peak_conv(dev, channels_last=channels_last)
            layouts[channels_last] = flops / min(interleaved({"conv": fn}, 3, dev)["conv"])
        peak_layout = max(layouts, key=layouts.get)
        print("fp32 convolution peak reference (3x3 conv, best of 3): "
              + ", ".join(f"{'channels_last' if k else 'NCHW'} {v / 1e9:.1f} GFLOP/s" for k, v in layouts.items())
              + f"; the faster layout is re-measured inside every round below")
        for width in args.widths:
            for batch in args.batch:
                compare(width, batch, args.device, args.size, args.rounds, args.seed, args.bf16, peak_layout,
                        args.candidates)
        print("\n" + machine(dev) + " (at the end)")
        return

    if args.single:
        row = measure(args.widths[0], args.batch[0], args.iters, args.warmup, args.device, args.threads,
                      args.size, args.seed)
        print(json.dumps(row))
        return

    from tqdm import tqdm

    configs = [(w, b) for w in args.widths for b in args.batch]
    rows = []
    for width, batch in tqdm(configs, desc="train_speed", unit="config"):
        cmd = [sys.executable, __file__, "--single", "--widths", str(width), "--batch", str(batch),
               "--iters", str(args.iters), "--warmup", str(args.warmup), "--device", args.device,
               "--threads", str(args.threads), "--size", str(args.size), "--seed", str(args.seed)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"width {width}, batch {batch} failed:\n{done.stderr}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"\nDiskShapeNet training step (forward + loss + backward + Adamax), {args.size} x {args.size}, "
          f"device {args.device}, {args.threads} threads, {args.iters} timed steps after {args.warmup} warm-up\n")
    print(table(rows))
    if args.json:
        print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

"""Throughput of the shape-augmented training stream (samples/s).

Builds (or reuses) a small phantom dataset, cuts its training patch bank, fits the PCA shape model
and times `ShapeAugmentedDataset`:
  - per sample in the main process (1 torch thread),
  - through a MONAI DataLoader with N workers and batch 64 (the training path),
  - the batched `ShapeAugmentedDataset.batch` path on CPU (and on CUDA when available),
then the training step the bundle runs on the same device (DiskShapeNet, `diskrobust.training.TrainingStep`
autotuned, fp32) in images/s, and the ratio of augmentation to training throughput (target >= 3:
the data must never limit a step). On CUDA the bundle's path is the batched one on the GPU
(`diskrobust.training.augmentation_loader`), on CPU the per-sample one.

    python benchmarks/augment_speed.py --samples 640 --workers 2
    python benchmarks/augment_speed.py --device cuda --samples 2048 --batch-size 64 --train-batch 64

Numbers go to docs/performance.md, "Data pipeline (shape augmentation)".
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from monai.data import DataLoader

from diskrobust.data.dataset_io import load_datalist
from diskrobust.datasets import ShapeAugmentedDataset, build_patch_bank
from diskrobust.transforms import ShapePCA

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import count_flops, interleaved, machine, peak_conv  # noqa: E402


def timed(fn, n_samples: int) -> float:
    start = time.perf_counter()
    fn()
    return n_samples / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=None, help="dataset folder with datalist.json (default: a fresh tiny phantom)")
    parser.add_argument("--subjects", type=int, default=10, help="phantom subjects when --dataset is not given")
    parser.add_argument("--samples", type=int, default=640, help="samples per timed epoch")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--modes", type=int, default=10)
    parser.add_argument("--grid-stride", type=int, default=4)
    parser.add_argument("--contour-stride", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--train-width", type=int, default=16, help="DiskShapeNet width of the training step")
    parser.add_argument("--train-batch", type=int, default=32, help="batch of the training step")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the rate comparison")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(machine(device))

    with tempfile.TemporaryDirectory() as tmp:
        root = args.dataset
        if root is None:
            from diskrobust.data.phantom import PhantomConfig, write_phantom_dataset

            root = Path(tmp) / "phantom"
            write_phantom_dataset(root, subjects=args.subjects, seed=args.seed, config=PhantomConfig(), progress=False)
        entries = load_datalist(root / "datalist.json", "training")
        start = time.perf_counter()
        bank = build_patch_bank(entries, progress=False)
        bank_s = time.perf_counter() - start
        pca = ShapePCA.fit(bank.points)
        modes = min(args.modes, pca.num_modes)
        ds = ShapeAugmentedDataset(
            bank, pca, modes, args.samples, seed=args.seed, grid_stride=args.grid_stride, contour_stride=args.contour_stride
        )
        print(f"bank: {len(bank)} patches from {len(entries)} subjects in {bank_s:.2f} s; PCA modes used: {modes}")

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        n_main = min(args.samples, 128)
        rate = timed(lambda: [ds[i] for i in range(n_main)], n_main)
        print(f"main process, per sample, 1 thread: {rate:.0f} samples/s")
        n_batch = min(args.samples, args.batch_size)
        rate = timed(lambda: ds.batch(range(n_batch)), n_batch)
        print(f"batched path on CPU (B={n_batch}), 1 thread: {rate:.0f} samples/s")
        torch.set_num_threads(threads)

        ds.set_epoch(1)
        loader = DataLoader(ds, batch_size=args.batch_size, num_workers=args.workers, shuffle=True)
        rate = timed(lambda: [b["image"].shape for b in loader], args.samples)
        print(f"DataLoader, {args.workers} workers, batch {args.batch_size}: {rate:.0f} samples/s (incl. worker start)")

        if device.type == "cuda":
            ds.batch(range(n_batch), device=device)  # warm-up
            torch.cuda.synchronize()
            rate = timed(lambda: (ds.batch(range(n_batch), device=device), torch.cuda.synchronize()), n_batch)
            print(f"batched path on {torch.cuda.get_device_name()}: {rate:.0f} samples/s")

        augmentation_vs_training(ds, args, device)


def augmentation_vs_training(ds, args, device) -> None:
    """The bundle's augmentation path on `device` and its training step there, interleaved rounds."""
    from diskrobust.losses import DiskShapeLoss
    from diskrobust.networks import DiskShapeNet
    from diskrobust.training import autotune, forward_backward, set_memory_format

    if device.type == "cpu":
        torch.set_num_threads(1)
    b = args.train_batch
    size = ds.bank.patch_size
    torch.manual_seed(args.seed)
    net = DiskShapeNet(spatial_size=size, width=args.train_width).to(device).train()
    optimiser = torch.optim.Adamax(net.parameters(), lr=1e-3)
    loss_fn = DiskShapeLoss()
    first = ds.batch(range(min(b, len(ds))), device=device)
    b = first["image"].shape[0]
    targets = {"points": first["points"], "mask": first["mask"]}
    settings, _ = autotune(net, loss_fn, first["image"], repeats=1)
    set_memory_format(net, settings.channels_last)

    def train():
        optimiser.zero_grad(set_to_none=True)
        forward_backward(net, loss_fn, first["image"], targets, settings)
        optimiser.step()

    if device.type == "cuda":
        def augment():
            ds.batch(range(b), device=device)
        label = f"batched on {device} (the bundle's CUDA path)"
    else:
        def augment():
            [ds[i] for i in range(b)]
        label = "per sample, 1 thread (the bundle's CPU path, one DataLoader worker's rate)"
    flops = count_flops(train)
    peak_fn, peak_flops = peak_conv(device)
    times = interleaved({"augment": augment, "train": train, "peak": peak_fn}, args.rounds, device)
    aug = b / statistics.median(times["augment"])
    trn = b / statistics.median(times["train"])
    peak = peak_flops / statistics.median(times["peak"])
    rate = flops * trn / b
    print(f"\naugmentation vs training on {device}, batch {b}, {args.rounds} interleaved rounds (medians):")
    print(f"  augmentation, {label}: {aug:.0f} samples/s")
    print(f"  training step DiskShapeNet(width={args.train_width}), {settings.describe()}: {trn:.1f} images/s, "
          f"{flops / 1e9:.1f} GFLOP/step, {rate / 1e9:.1f} GFLOP/s = {100 * rate / peak:.0f} % of the fp32 conv "
          f"peak measured in the same rounds ({peak / 1e9:.1f} GFLOP/s)")
    print(f"  augmentation / training throughput: {aug / trn:.1f}x (target >= 3)")
    print(machine(device) + " (at the end)")


if __name__ == "__main__":
    main()

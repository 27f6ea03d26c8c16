"""Throughput of the shape-augmented training stream (samples/s).

Builds (or reuses) a small phantom dataset, cuts its training patch bank, fits the PCA shape model
and times `ShapeAugmentedDataset`:
  - per sample in the main process (1 torch thread),
  - through a MONAI DataLoader with N workers and batch 64 (the training path),
  - the batched `ShapeAugmentedDataset.batch` path on CPU (and on CUDA when available).

    python benchmarks/augment_speed.py --samples 640 --workers 2

Numbers go to docs/performance.md, "Data pipeline (shape augmentation)".
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from monai.data import DataLoader

from diskrobust.data.dataset_io import load_datalist
from diskrobust.datasets import ShapeAugmentedDataset, build_patch_bank
from diskrobust.transforms import ShapePCA


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
    args = parser.parse_args()

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

        if torch.cuda.is_available():
            dev = torch.device("cuda")
            ds.batch(range(n_batch), device=dev)  # warm-up
            torch.cuda.synchronize()
            rate = timed(lambda: (ds.batch(range(n_batch), device=dev), torch.cuda.synchronize()), n_batch)
            print(f"batched path on {torch.cuda.get_device_name()}: {rate:.0f} samples/s")


if __name__ == "__main__":
    main()

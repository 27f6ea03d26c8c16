"""Training batches of the shape-augmented stream, warped on the device that trains.

On a GPU the per-sample TPS warps of DataLoader workers (a few hundred samples/s on CPU) would
starve the network, so `DeviceAugmentedLoader` asks `ShapeAugmentedDataset.batch(indices, device)`
for each whole batch: the random draws stay on the CPU (cheap), the warp and the polygon fill run
batched on the device. The samples are the ones `dataset[i]` gives (same draws per (seed, epoch,
index); images equal up to float rounding), in order, so DatasetEpochSetter and the seeds work
unchanged. `augmentation_loader` picks this path on CUDA and MONAI's DataLoader elsewhere.
"""

from __future__ import annotations

import torch


class DeviceAugmentedLoader:
    """Iterable of collated batches `dataset.batch(range(i, i + batch_size), device)`, in order.

    `len()` is the number of batches (Ignite's epoch length); `drop_last` drops a short last batch.
    The dataset is read at iteration time, so `set_epoch` before an epoch is honoured.
    """

    def __init__(self, dataset, batch_size: int, device: torch.device | str, drop_last: bool = False):
        if not hasattr(dataset, "batch"):
            raise TypeError(f"DeviceAugmentedLoader needs a dataset with .batch(indices, device) "
                            f"(ShapeAugmentedDataset), got {type(dataset).__name__}")
        if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.device = torch.device(device)
        self.drop_last = bool(drop_last)

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        n = len(self.dataset)
        for b in range(len(self)):
            start = b * self.batch_size
            yield self.dataset.batch(range(start, min(start + self.batch_size, n)), device=self.device)


def augmentation_loader(dataset, batch_size: int, device, num_workers: int = 0, gpu_augment: bool | str = "auto"):
    """The training loader: batched augmentation on the device when it is CUDA (`gpu_augment` "auto"
    or True), else MONAI's DataLoader with `num_workers` (per-sample warps in worker processes)."""
    device = torch.device(device)
    if gpu_augment not in ("auto", True, False):
        raise ValueError(f"gpu_augment must be true, false or 'auto', got {gpu_augment!r}")
    if gpu_augment is True and device.type != "cuda":
        raise ValueError(f"gpu_augment=true needs a CUDA device, the trainer's is {device}")
    if gpu_augment is True or (gpu_augment == "auto" and device.type == "cuda"):
        return DeviceAugmentedLoader(dataset, batch_size, device)
    from monai.data import DataLoader

    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=int(num_workers),
                      persistent_workers=False)

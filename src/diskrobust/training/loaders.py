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
    """Iterable of collated batches `dataset.batch(chunk, device)` over `indices` (default all samples, in
    order; any iterable re-read every epoch, e.g. a DistributedSampler's shard), `batch_size` at a time.

    `len()` is the number of batches (Ignite's epoch length); `drop_last` drops a short last batch.
    The dataset is read at iteration time, so `set_epoch` before an epoch is honoured.
    """

    def __init__(self, dataset, batch_size: int, device: torch.device | str, drop_last: bool = False, indices=None):
        if not hasattr(dataset, "batch"):
            raise TypeError(f"DeviceAugmentedLoader needs a dataset with .batch(indices, device) "
                            f"(ShapeAugmentedDataset), got {type(dataset).__name__}")
        if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.device = torch.device(device)
        self.drop_last = bool(drop_last)
        self.indices = indices

    def _indices(self) -> list[int]:
        return list(range(len(self.dataset))) if self.indices is None else [int(i) for i in self.indices]

    def __len__(self) -> int:
        n = len(self._indices()) if self.indices is not None else len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        indices = self._indices()
        for b in range(len(self)):
            yield self.dataset.batch(indices[b * self.batch_size:(b + 1) * self.batch_size], device=self.device)


def _gpu_augment(value) -> bool | str:
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if value not in ("auto", True, False):
        raise ValueError(f"gpu_augment must be true, false or 'auto', got {value!r}")
    return value


def device_loader(dataloader, device, gpu_augment: bool | str = "auto"):
    """The training loader for `device`: on CUDA (`gpu_augment` "auto" or true) a DeviceAugmentedLoader
    over the configured DataLoader's dataset, batch size, drop_last and sampler indices (so a
    DistributedSampler's shard is kept); elsewhere the DataLoader itself (per-sample warps, in
    `num_workers` worker processes)."""
    device = torch.device(device)
    gpu_augment = _gpu_augment(gpu_augment)
    if gpu_augment is True and device.type != "cuda":
        raise ValueError(f"gpu_augment=true needs a CUDA device, the trainer's is {device}")
    if not (gpu_augment is True or (gpu_augment == "auto" and device.type == "cuda")):
        return dataloader
    if not hasattr(dataloader.dataset, "batch"):
        if gpu_augment is True:
            raise TypeError(f"gpu_augment=true needs a ShapeAugmentedDataset, got {type(dataloader.dataset).__name__}")
        return dataloader
    sampler = getattr(dataloader, "sampler", None)
    plain = isinstance(sampler, torch.utils.data.SequentialSampler)
    return DeviceAugmentedLoader(dataloader.dataset, dataloader.batch_size, device, dataloader.drop_last,
                                 indices=None if plain or sampler is None else sampler)


def augmentation_loader(dataset, batch_size: int, device, num_workers: int = 0, gpu_augment: bool | str = "auto"):
    """`device_loader` of a plain MONAI DataLoader(dataset, batch_size, num_workers, no shuffling)."""
    from monai.data import DataLoader

    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=int(num_workers),
                        persistent_workers=False)
    return device_loader(loader, device, gpu_augment)

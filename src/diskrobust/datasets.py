"""Torch datasets of disk patches: real patches (validation, test, attacks), the shape-augmented stream,
and the inference items.

The patches come from one preprocessing chain of MONAI dictionary transforms
(`diskrobust.transforms.disk_patch_chain`: LoadDiskImaged -> LoadDiskContoursd -> ScaleIntensityMRd ->
ExtractDiskPatchesd), applied once per subject and kept as a `PatchBank` (optionally cached on disk,
keyed by the files' content digest and the chain's geometry). The training stream draws from the bank
with `RandShapeAugmentd`, seeded per (seed, epoch, index). Inference uses the same chain with disk
centres instead of contours (`diskrobust.transforms.inference_chain`).

This module sits after data/ and transforms/ in the flow (it imports both; neither imports it).

Every item is a dict in the batch layout of docs/architecture.md: "image" (1, S, S) float32 in [0, 1],
"points" (176, 2) float32 (x, y) patch px, "mask" (1, S, S) float32 {0, 1}, plus "subject" (str),
"level" (str), "centre_px" (2,) and "scale" (2,) (see `diskrobust.transforms.patch_points_to_image`),
so MONAI's DataLoader and `diskrobust.batch.prepare_disk_batch` work unchanged.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from diskrobust import PATCH_SIZE
from diskrobust.data.contours import polygon_fill_torch
from diskrobust.data.dataset_io import load_datalist
from diskrobust.data.digest import entries_digest
from diskrobust.data.errors import DataError
from diskrobust.transforms.pipeline import disk_patch_chain, project_data_error
from diskrobust.transforms.shape_augment import RandShapeAugmentd, ShapePCA, draw_new_shape
from diskrobust.transforms.tps import tps_warp

__all__ = ["PatchBank", "build_patch_bank", "DiskPatchDataset", "ShapeAugmentedDataset", "ensure_dataset",
           "inference_items", "collate_patches"]

_CACHE_VERSION = 2


@dataclass
class PatchBank:
    """All disk patches of a set of subjects, in memory.

    images (N, 1, S, S) float32 in [0, 1]; points (N, 176, 2) float32 patch px; masks (N, 1, S, S) uint8
    (filled contours, stored compactly, handed out as float32); levels, subjects: N str each;
    centres (N, 2) and scales (N, 2) float32 map patch px back to the source image.
    """

    images: np.ndarray
    points: np.ndarray
    masks: np.ndarray
    levels: list[str]
    subjects: list[str]
    centres: np.ndarray
    scales: np.ndarray
    patch_size: int = PATCH_SIZE
    patch_spacing_mm: float = 0.5

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def item(self, index: int) -> dict:
        """The index-th patch as a dict of tensors (the module's item layout); copies, so callers may
        modify them in place without touching the bank."""
        return {
            "image": torch.from_numpy(self.images[index].copy()),
            "points": torch.from_numpy(self.points[index].copy()),
            "mask": torch.from_numpy(self.masks[index].astype(np.float32)),
            **self.metadata(index),
        }

    def metadata(self, index: int) -> dict:
        """"centre_px", "scale" tensors and "subject", "level" of the index-th patch."""
        return {
            "centre_px": torch.from_numpy(self.centres[index].copy()),
            "scale": torch.from_numpy(self.scales[index].copy()),
            "subject": self.subjects[index],
            "level": self.levels[index],
        }

    def save(self, path: str | Path, fingerprint: str = "") -> None:
        np.savez(
            Path(path),
            images=self.images,
            points=self.points,
            masks=self.masks,
            levels=np.array(self.levels, dtype=str),
            subjects=np.array(self.subjects, dtype=str),
            centres=self.centres,
            scales=self.scales,
            patch_size=self.patch_size,
            patch_spacing_mm=self.patch_spacing_mm,
            fingerprint=fingerprint,
            version=_CACHE_VERSION,
        )

    @classmethod
    def load(cls, path: str | Path) -> tuple[PatchBank, str]:
        """Read a bank written by `save` -> (bank, fingerprint). DataError naming the file if unusable."""
        path = Path(path)
        try:
            with np.load(path) as z:
                if int(z["version"]) != _CACHE_VERSION:
                    raise DataError(path, f"patch cache version {int(z['version'])}, expected {_CACHE_VERSION}")
                bank = cls(
                    images=z["images"],
                    points=z["points"],
                    masks=z["masks"],
                    levels=[str(s) for s in z["levels"]],
                    subjects=[str(s) for s in z["subjects"]],
                    centres=z["centres"],
                    scales=z["scales"],
                    patch_size=int(z["patch_size"]),
                    patch_spacing_mm=float(z["patch_spacing_mm"]),
                )
                return bank, str(z["fingerprint"])
        except FileNotFoundError:
            raise DataError(path, "patch cache not found") from None
        except (KeyError, ValueError, OSError, EOFError) as err:
            raise DataError(path, f"not a readable patch cache: {err}") from None


def _fingerprint(entries: Sequence[Mapping], patch_size: int, patch_spacing_mm: float, padding: str) -> str:
    """Hash of what a bank depends on: the files' contents (not paths or mtimes) and the patch geometry."""
    parts = [f"v{_CACHE_VERSION}", str(patch_size), repr(float(patch_spacing_mm)), padding, entries_digest(entries)]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def build_patch_bank(
    entries: Sequence[Mapping],
    patch_size: int = PATCH_SIZE,
    patch_spacing_mm: float = 0.5,
    progress: bool = True,
    cache_path: str | Path | None = None,
    padding: str = "zeros",
    transform=None,
) -> PatchBank:
    """Run the preprocessing chain over every datalist entry (absolute "image" and "contours" paths, e.g.
    from `dataset_io.load_datalist`) and keep its patches as a bank.

    `transform` is the chain (default `disk_patch_chain(patch_size, patch_spacing_mm, padding)`: each image
    scaled with `ScaleIntensityMR` (0.5-99.5 percentiles), each patch min-max scaled to [0, 1]); it must
    turn an entry into a list of patch dicts with "image", "points", "mask", "centre_px", "scale", "level"
    and "subject". With `cache_path`, a bank saved there for the same file contents and geometry is loaded
    instead, and a freshly built bank is saved there (give a custom `transform` its own cache path).
    Raises DataError (naming the file) for unreadable files, contours outside their image, and image /
    contour spacings that disagree.
    """
    if not entries:
        raise ValueError("build_patch_bank needs at least one datalist entry")
    for i, e in enumerate(entries):
        for key in ("image", "contours"):
            if key not in e:
                raise DataError(e.get("subject", f"entry {i}"), f"datalist entry has no {key!r} path")
    fingerprint = _fingerprint(entries, patch_size, patch_spacing_mm, padding) if cache_path is not None else ""
    if cache_path is not None and Path(cache_path).is_file():
        try:
            bank, stored = PatchBank.load(cache_path)
            if stored == fingerprint:
                return bank
        except DataError:
            pass  # an unreadable or stale cache is rebuilt below

    chain = transform if transform is not None else disk_patch_chain(patch_size, patch_spacing_mm, padding)
    items = []
    for e in tqdm(entries, desc="disk patches", unit="subject", disable=not progress):
        try:
            items.extend(chain(dict(e)))
        except RuntimeError as err:  # MONAI's Compose wraps errors as "applying transform ...": show ours
            cause = project_data_error(err)
            if cause is None:
                raise
            raise cause from None
    bank = PatchBank(
        images=np.stack([np.asarray(p["image"]) for p in items]).astype(np.float32),
        points=np.stack([np.asarray(p["points"]) for p in items]).astype(np.float32),
        masks=np.stack([np.asarray(p["mask"]) for p in items]).astype(np.uint8),
        levels=[str(p["level"]) for p in items],
        subjects=[str(p["subject"]) for p in items],
        centres=np.stack([p["centre_px"] for p in items]).astype(np.float32),
        scales=np.stack([p["scale"] for p in items]).astype(np.float32),
        patch_size=int(patch_size),
        patch_spacing_mm=float(patch_spacing_mm),
    )
    if cache_path is not None:
        Path(cache_path).parent.mkdir(parents=True, exist_ok=True)
        bank.save(cache_path, fingerprint)
    return bank


class DiskPatchDataset(Dataset):
    """The real disk patches of one datalist split (validation, test, attack evaluation).

    `cache=True` keeps the bank in `<cache_dir>/patches_<split>_<S>px_<spacing>mm.npz`, by default
    `cache_dir = <datalist folder>/.cache`. `transform`: the preprocessing chain (`build_patch_bank`). Attributes: datalist_path, split, patch_size, patch_spacing_mm,
    bank (`PatchBank`).
    Items: see the module docstring.
    """

    def __init__(
        self,
        datalist_path: str | Path,
        split: str,
        patch_size: int = PATCH_SIZE,
        patch_spacing_mm: float = 0.5,
        cache: bool = False,
        cache_dir: str | Path | None = None,
        progress: bool = False,
        transform=None,
    ):
        datalist_path = Path(datalist_path)
        entries = load_datalist(datalist_path, split)
        cache_path = None
        if cache:
            cache_dir = Path(cache_dir) if cache_dir is not None else datalist_path.resolve().parent / ".cache"
            cache_dir.mkdir(parents=True, exist_ok=True)
            cache_path = cache_dir / f"patches_{split}_{patch_size}px_{patch_spacing_mm:g}mm.npz"
        self.datalist_path = datalist_path
        self.split = split
        self.patch_size = int(patch_size)
        self.patch_spacing_mm = float(patch_spacing_mm)
        self.bank = build_patch_bank(entries, patch_size, patch_spacing_mm, progress=progress, cache_path=cache_path,
                                     transform=transform)

    def __len__(self) -> int:
        return len(self.bank)

    def __getitem__(self, index: int) -> dict:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} patches")
        return self.bank.item(int(index))


class ShapeAugmentedDataset(Dataset):
    """A fresh set of shape-augmented patches every epoch (the paper's training stream).

    Sample i of epoch e is a pure function of (seed, e, i): its generator is
    `numpy.random.default_rng([seed, e, i])`, which picks a bank patch and then drives `RandShapeAugmentd`
    (`augment`): c_k ~ U[-c_max, c_max] over `n_modes` PCA modes (placement rule in
    `diskrobust.transforms.shape_augment`), the patch TPS-warped onto the new shape. Call `set_epoch(e)` before each epoch; with DataLoader workers use
    persistent_workers=False so every epoch's workers copy the updated epoch.

    `n_modes=0` means no shape augmentation (the study's `none` arm): sample i is the bank patch the
    same generator picks, unwarped (its real image, contour and mask). Zero modes would otherwise warp
    every patch onto the mean shape, the opposite of "no augmentation".
    """

    def __init__(
        self,
        bank: PatchBank,
        pca: ShapePCA,
        n_modes: int,
        samples_per_epoch: int,
        c_max: float = 2.0,
        seed: int = 0,
        border_points: int = 16,
        grid_stride: int = 4,
        margin: float = 2.0,
        contour_stride: int = 2,
    ):
        if len(bank) == 0:
            raise ValueError("ShapeAugmentedDataset needs a non-empty patch bank")
        if pca.mean.shape != bank.points.shape[1:]:
            raise ValueError(f"shape model points {pca.mean.shape} do not match the bank's {bank.points.shape[1:]}")
        pca._check_modes(n_modes)
        if samples_per_epoch < 1:
            raise ValueError(f"samples_per_epoch must be >= 1, got {samples_per_epoch}")
        self.bank, self.pca = bank, pca
        self.n_modes, self.samples_per_epoch = int(n_modes), int(samples_per_epoch)
        self.c_max, self.seed = float(c_max), int(seed)
        self.border_points, self.grid_stride, self.margin = border_points, grid_stride, margin
        self.contour_stride = contour_stride
        self.augment = RandShapeAugmentd(pca, n_modes, c_max=c_max, border_points=border_points, grid_stride=grid_stride,
                                         margin=margin, contour_stride=contour_stride)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.samples_per_epoch

    def generator(self, index: int) -> np.random.Generator:
        """The generator of sample `index` in the current epoch."""
        return np.random.default_rng([self.seed, self.epoch, int(index)])

    def draw(self, index: int) -> tuple[int, np.ndarray]:
        """(bank index of the source patch, new shape (176, 2)) of sample `index` in the current epoch."""
        if not 0 <= index < self.samples_per_epoch:
            raise IndexError(f"index {index} out of range for {self.samples_per_epoch} samples")
        rng = self.generator(index)
        source = int(rng.integers(len(self.bank)))
        if self.n_modes == 0:  # no shape augmentation: the patch's own contour
            return source, self.bank.points[source].astype(np.float64)
        new_points = draw_new_shape(
            self.pca, self.n_modes, self.bank.points[source], self.bank.patch_size, rng, self.c_max, self.margin
        )
        return source, new_points

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.samples_per_epoch:
            raise IndexError(f"index {index} out of range for {self.samples_per_epoch} samples")
        rng = self.generator(index)
        source = int(rng.integers(len(self.bank)))
        item = self.bank.item(source)
        if self.n_modes == 0:  # no shape augmentation: the real patch, unwarped
            return item
        item["points"] = item["points"].numpy()
        out = self.augment(item, generator=rng)
        out["points"] = torch.from_numpy(out["points"])
        return out

    def batch(self, indices, device: torch.device | str | None = None) -> dict:
        """Samples `indices` of the current epoch as one collated batch, warped together on `device`.

        The same samples as `__getitem__` (same draws; images equal up to float rounding), but one
        batched `tps_warp` and `polygon_fill_torch` call: the path for a GPU, where per-sample warps
        would be launch-bound. On CPU the per-sample path in DataLoader workers is faster (smaller
        working set). Returns image (B, 1, S, S), points (B, 176, 2), mask (B, 1, S, S), centre_px (B, 2),
        scale (B, 2) tensors on `device`, subject and level lists.
        """
        indices = [int(i) for i in indices]
        draws = [self.draw(i) for i in indices]
        sources = np.array([d[0] for d in draws])
        new_points = torch.from_numpy(np.stack([d[1] for d in draws]).astype(np.float32)).to(device)
        images = torch.from_numpy(self.bank.images[sources]).to(device)
        src = torch.from_numpy(self.bank.points[sources]).to(device)
        if self.n_modes == 0:  # no shape augmentation: the real patches, unwarped
            return {"image": images, "points": src, "mask": torch.from_numpy(self.bank.masks[sources]).float().to(device),
                    "centre_px": torch.from_numpy(self.bank.centres[sources]).to(device),
                    "scale": torch.from_numpy(self.bank.scales[sources]).to(device),
                    "subject": [self.bank.subjects[j] for j in sources], "level": [self.bank.levels[j] for j in sources]}
        step = max(int(self.contour_stride), 1)
        warped = tps_warp(
            images, src[:, ::step], new_points[:, ::step], self.border_points, self.grid_stride
        ).clamp_(0.0, 1.0)
        size = (self.bank.patch_size, self.bank.patch_size)
        return {
            "image": warped,
            "points": new_points,
            "mask": polygon_fill_torch(new_points, size),
            "centre_px": torch.from_numpy(self.bank.centres[sources]).to(device),
            "scale": torch.from_numpy(self.bank.scales[sources]).to(device),
            "subject": [self.bank.subjects[j] for j in sources],
            "level": [self.bank.levels[j] for j in sources],
        }


# --------------------------------------------------------------------------------------------------
# the dataset folder, and inference items


def ensure_dataset(dataset_dir: str | Path, phantom_subjects: int, seed: int) -> str:
    """Path of `dataset_dir`/datalist.json; generates the seeded phantom there first when the folder is missing
    or empty (the bundles' `initialize`). A folder with other files but no datalist.json is refused
    (DataError), so user data is never mixed with a phantom. Under torchrun rank 0 writes, the others wait."""
    from diskrobust import distributed
    from diskrobust.data.phantom import ensure_phantom

    folder = Path(dataset_dir).expanduser().resolve()
    if not distributed.is_main_process():
        distributed.barrier()  # rank 0 writes the phantom; the others wait instead of writing the same files
        datalist = folder / "datalist.json"
        if not datalist.is_file():
            raise DataError(folder, "rank 0 did not produce datalist.json (see its log)")
        return str(datalist)
    try:
        return str(ensure_phantom(folder, subjects=int(phantom_subjects), seed=int(seed)))
    finally:
        distributed.barrier()


def inference_items(input_image, input_disks="") -> list[dict]:
    """Dataset items for inference.json: [{"image": path, "disks": path or ""}, ...].

    input_image: one NIfTI path or a list of them; input_disks: a JSON of disk centres or a contour
    JSON ("" = each image already is one S x S disk patch). With several images, input_disks may be
    a matching list.
    """
    images = [input_image] if isinstance(input_image, (str, Path)) else list(input_image)
    if not images or not all(str(i) for i in images):
        raise ValueError("inference needs input_image: a NIfTI image (or patch) path, e.g. --input_image img.nii.gz")
    disks = [input_disks] * len(images) if isinstance(input_disks, (str, Path)) else list(input_disks)
    if len(disks) != len(images):
        raise ValueError(f"{len(images)} input images but {len(disks)} disk files")
    return [{"image": str(i), "disks": str(d or "")} for i, d in zip(images, disks)]


def collate_patches(batch: Sequence):
    """DataLoader collate_fn for inference: items are patch dicts or lists of them (one per disk); flattens both."""
    from monai.data import list_data_collate

    flat: list = []
    for item in batch:
        flat.extend(item if isinstance(item, list) else [item])
    return list_data_collate(flat)

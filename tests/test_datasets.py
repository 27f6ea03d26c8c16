"""Patch banks, the real-patch dataset and the shape-augmented stream, on the tiny phantom."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import DataLoader

from diskrobust.batch import prepare_disk_batch
from diskrobust.data.contours import contour_centroid, dice, polygon_fill_torch
from diskrobust.data.dataset_io import load_datalist, read_contours_json
from diskrobust.datasets import DiskPatchDataset, PatchBank, ShapeAugmentedDataset, build_patch_bank
from diskrobust.data.errors import DataError
from diskrobust.transforms import ShapePCA, augment_patch, patch_points_to_image

S = 128


@pytest.fixture(scope="module")
def train_entries(tiny_phantom):
    return load_datalist(Path(tiny_phantom) / "datalist.json", "training")


@pytest.fixture(scope="module")
def bank(train_entries) -> PatchBank:
    return build_patch_bank(train_entries, progress=False)


@pytest.fixture(scope="module")
def pca(bank) -> ShapePCA:
    return ShapePCA.fit(bank.points)


def test_patch_bank_layout_and_geometry(bank, train_entries):
    n = 5 * len(train_entries)
    assert len(bank) == n
    assert bank.images.shape == (n, 1, S, S) and bank.images.dtype == np.float32
    assert bank.points.shape == (n, 176, 2) and bank.points.dtype == np.float32
    assert bank.masks.shape == (n, 1, S, S)
    assert bank.images.min() >= 0.0 and bank.images.max() <= 1.0
    assert len(bank.levels) == n and len(bank.subjects) == n
    assert bank.levels[:5] == ["L5/S1", "L4/L5", "L3/L4", "L2/L3", "L1/L2"]
    assert bank.subjects[0] == train_entries[0]["subject"]
    # the points map back exactly to the contour file; each patch is centred on its disk
    doc = read_contours_json(train_entries[1]["contours"])
    for k, disk in enumerate(doc["disks"]):
        i = 5 + k
        back = patch_points_to_image(bank.points[i], bank.centres[i], bank.scales[i], S)
        assert np.allclose(back, disk["points_px"], atol=1e-3)
        assert np.allclose(contour_centroid(bank.points[i]), [S / 2, S / 2], atol=1e-2)
    # 1.2 mm images at 0.5 mm/px: 2.4 patch px per image px
    assert np.allclose(bank.scales, 0.5 / 1.2)
    # masks are the filled contours
    filled = polygon_fill_torch(torch.from_numpy(bank.points), (S, S)).numpy()
    assert (filled != bank.masks).mean() < 0.005


def test_patch_bank_cache_is_used_and_invalidated(tmp_path, train_entries, bank, monkeypatch):
    entries = train_entries[:2]
    cache = tmp_path / "bank.npz"
    first = build_patch_bank(entries, progress=False, cache_path=cache)
    assert cache.is_file()
    assert np.array_equal(first.images, bank.images[:10])

    def no_reading(*args, **kwargs):
        raise DataError("cache test", "the cache should have been used")

    import diskrobust.transforms.io as io_module

    # the cache is keyed by the files' contents: a copy of the dataset elsewhere still hits it
    copies = []
    for e in entries:
        c = dict(e)
        for key in ("image", "contours"):
            c[key] = str(tmp_path / f"{e['subject']}_{Path(e[key]).name}")
            shutil.copyfile(e[key], c[key])
        copies.append(c)
    monkeypatch.setattr(io_module, "read_image", no_reading)
    cached = build_patch_bank(copies, progress=False, cache_path=cache)
    assert np.array_equal(cached.images, first.images) and cached.levels == first.levels
    assert cached.subjects == first.subjects and np.array_equal(cached.masks, first.masks)
    # other geometry -> another fingerprint -> rebuilt (and here the reader refuses)
    with pytest.raises(DataError, match="cache should have been used"):
        build_patch_bank(entries, patch_size=64, progress=False, cache_path=cache)
    # an edited contour file (same name) -> rebuilt
    doc = json.loads(Path(copies[0]["contours"]).read_text())
    doc["disks"][0]["points_px"][0][0] += 0.5
    Path(copies[0]["contours"]).write_text(json.dumps(doc))
    with pytest.raises(DataError, match="cache should have been used"):
        build_patch_bank(copies, progress=False, cache_path=cache)


def test_patch_bank_is_the_monai_chain_composed(train_entries, bank):
    """One preprocessing chain: the bank holds exactly what disk_patch_chain makes of each entry."""
    from diskrobust.transforms import disk_patch_chain

    patches = disk_patch_chain()(dict(train_entries[0]))
    assert len(patches) == 5
    for i, p in enumerate(patches):
        np.testing.assert_array_equal(p["image"], bank.images[i])
        np.testing.assert_array_equal(p["points"], bank.points[i])
        assert p["subject"] == bank.subjects[i] and p["level"] == bank.levels[i]


def test_shape_augmented_sample_is_rand_shape_augmentd_seeded_by_seed_epoch_index(bank):
    from diskrobust.transforms import RandShapeAugmentd

    pca = ShapePCA.fit(bank.points)
    ds = ShapeAugmentedDataset(bank, pca, n_modes=3, samples_per_epoch=4, seed=7)
    ds.set_epoch(2)
    got = ds[3]
    rng = np.random.default_rng([7, 2, 3])
    source = int(rng.integers(len(bank)))
    item = bank.item(source)
    item["points"] = item["points"].numpy()
    want = RandShapeAugmentd(pca, 3)(item, generator=rng)
    assert torch.equal(got["image"], want["image"]) and np.array_equal(got["points"].numpy(), want["points"])
    assert got["subject"] == bank.subjects[source] and got["level"] == bank.levels[source]
    ds.set_epoch(3)
    assert not torch.equal(ds[3]["image"], got["image"])


def test_subjects_in_two_splits_are_refused(tmp_path, tiny_phantom):
    from diskrobust.data.splits import check_disjoint_splits

    doc = json.loads((Path(tiny_phantom) / "datalist.json").read_text())
    check_disjoint_splits(Path(tiny_phantom) / "datalist.json")
    doc["test"].append(dict(doc["training"][0]))
    (tmp_path / "datalist.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match=r"datalist.json: 1 subject\(s\) appear in more than one split \(subject "
                                        + doc["training"][0]["subject"] + " in training and test"):
        check_disjoint_splits(tmp_path / "datalist.json")


def test_patch_bank_errors(tmp_path, train_entries):
    with pytest.raises(ValueError):
        build_patch_bank([], progress=False)
    with pytest.raises(DataError, match="no 'contours' path"):
        build_patch_bank([{"subject": "s", "image": train_entries[0]["image"]}], progress=False)
    # a contour file whose spacing disagrees with its image
    doc = json.loads(Path(train_entries[0]["contours"]).read_text())
    doc["spacing_mm"] = [0.6, 0.6]
    bad = tmp_path / "bad_spacing.json"
    bad.write_text(json.dumps(doc))
    entry = dict(train_entries[0], contours=str(bad))
    with pytest.raises(DataError, match="bad_spacing.json.*spacing_mm"):
        build_patch_bank([entry], progress=False)


def test_disk_patch_dataset_items_and_batches(tiny_phantom, tmp_path):
    ds = DiskPatchDataset(Path(tiny_phantom) / "datalist.json", "validation", cache=True, cache_dir=tmp_path)
    assert len(ds) == 5
    assert (tmp_path / "patches_validation_128px_0.5mm.npz").is_file()
    assert ds.patch_spacing_mm == 0.5 and ds.patch_size == S and ds.split == "validation"
    item = ds[0]
    assert item["image"].shape == (1, S, S) and item["image"].dtype == torch.float32
    assert item["points"].shape == (176, 2) and item["points"].dtype == torch.float32
    assert item["mask"].shape == (1, S, S) and item["mask"].dtype == torch.float32
    assert item["level"] == "L5/S1" and item["subject"].startswith("sub-")
    with pytest.raises(IndexError):
        ds[5]
    batch = next(iter(DataLoader(ds, batch_size=4, shuffle=False)))
    image, targets = prepare_disk_batch(batch, device=torch.device("cpu"))
    assert image.shape == (4, 1, S, S)
    assert targets["points"].shape == (4, 176, 2) and targets["mask"].shape == (4, 1, S, S)
    assert batch["level"] == ["L5/S1", "L4/L5", "L3/L4", "L2/L3"]


def test_disk_patch_dataset_bad_split(tiny_phantom):
    with pytest.raises(DataError, match="unknown split"):
        DiskPatchDataset(Path(tiny_phantom) / "datalist.json", "nope")


def test_shape_augmented_samples_are_pure_functions_of_seed_epoch_index(bank, pca):
    ds = ShapeAugmentedDataset(bank, pca, n_modes=5, samples_per_epoch=8, seed=3)
    assert len(ds) == 8
    forward = [ds[i] for i in range(4)]
    backward = [ds[i] for i in reversed(range(4))][::-1]
    for a, b in zip(forward, backward):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["points"], b["points"])
    again = ShapeAugmentedDataset(bank, pca, n_modes=5, samples_per_epoch=8, seed=3)[2]
    assert torch.equal(again["image"], forward[2]["image"])
    ds.set_epoch(1)
    assert not torch.allclose(ds[2]["points"], forward[2]["points"])
    other_seed = ShapeAugmentedDataset(bank, pca, n_modes=5, samples_per_epoch=8, seed=4)[2]
    assert not torch.allclose(other_seed["points"], forward[2]["points"])
    with pytest.raises(IndexError):
        ds[8]


def test_shape_augmented_items_follow_the_batch_layout(bank, pca):
    ds = ShapeAugmentedDataset(bank, pca, n_modes=10, samples_per_epoch=6, seed=0)
    for i in range(6):
        item = ds[i]
        assert item["image"].shape == (1, S, S) and item["image"].dtype == torch.float32
        assert 0.0 <= item["image"].min() and item["image"].max() <= 1.0
        assert item["points"].shape == (176, 2) and item["points"].dtype == torch.float32
        assert item["points"].min() >= 0 and item["points"].max() <= S - 1
        assert torch.equal(item["mask"], polygon_fill_torch(item["points"][None], (S, S))[0])
        assert isinstance(item["subject"], str) and isinstance(item["level"], str)
        # the warped disk is where the new contour is: the source's disk mask, warped the same way, fills it
        source = int(ds.generator(i).integers(len(bank)))
        assert (item["subject"], item["level"]) == (bank.subjects[source], bank.levels[source])
        warped_mask, _, _ = augment_patch(bank.masks[source].astype(np.float32), bank.points[source], item["points"].numpy())
        # (0.9: the phantom's thin and wavy disks lose more Dice per pixel of warp error between the anchors)
        assert dice(warped_mask[0].numpy() > 0.5, item["mask"][0].numpy() > 0.5) > 0.9
        # and carries the disk's intensities along
        src_mean = bank.images[source][bank.masks[source] > 0].mean()
        assert item["image"][item["mask"] > 0.5].mean().item() == pytest.approx(src_mean, abs=0.05)
    batch = next(iter(DataLoader(ds, batch_size=3, num_workers=0)))
    image, targets = prepare_disk_batch(batch)
    assert image.shape == (3, 1, S, S) and targets["points"].shape == (3, 176, 2)


def test_shape_augmented_with_workers_matches_main_process(bank, pca):
    ds = ShapeAugmentedDataset(bank, pca, n_modes=3, samples_per_epoch=4, seed=1)
    ds.set_epoch(2)
    main = next(iter(DataLoader(ds, batch_size=4, num_workers=0)))
    workers = next(iter(DataLoader(ds, batch_size=4, num_workers=2)))
    assert torch.equal(main["image"], workers["image"]) and torch.equal(main["points"], workers["points"])


def test_shape_augmented_checks_its_inputs(bank, pca):
    with pytest.raises(ValueError, match="n_modes=30 requested"):
        ShapeAugmentedDataset(bank, pca, n_modes=30, samples_per_epoch=4)
    with pytest.raises(ValueError):
        ShapeAugmentedDataset(bank, pca, n_modes=3, samples_per_epoch=0)
    small = ShapePCA(pca.mean[:88], pca.components[:, :88], pca.eigenvalues)
    with pytest.raises(ValueError, match="do not match"):
        ShapeAugmentedDataset(bank, small, n_modes=3, samples_per_epoch=4)


def test_shape_augmented_batch_path_matches_per_sample(bank, pca):
    ds = ShapeAugmentedDataset(bank, pca, n_modes=5, samples_per_epoch=6, seed=9)
    ds.set_epoch(4)
    idx = [5, 0, 3]
    batch = ds.batch(idx)
    assert batch["image"].shape == (3, 1, S, S) and batch["mask"].shape == (3, 1, S, S)
    for k, i in enumerate(idx):
        item = ds[i]
        assert torch.equal(batch["points"][k], item["points"])
        assert torch.allclose(batch["image"][k], item["image"], atol=1e-4)
        assert torch.equal(batch["mask"][k], item["mask"])
        assert batch["subject"][k] == item["subject"] and batch["level"][k] == item["level"]
    image, targets = prepare_disk_batch(batch)
    assert image.shape == (3, 1, S, S) and targets["points"].shape == (3, 176, 2)


def test_shape_modes_0_in_the_shape_bundle_trains_on_the_real_patches_unwarped(tiny_phantom, repo_root):
    """The study's `none` augmentation: `--shape_modes 0` gives the real training patches, not patches warped
    onto the mean shape (what zero PCA modes would mean to the warp)."""
    from monai.bundle import ConfigParser

    def dataset(modes):
        parser = ConfigParser()
        parser.read_config(str(repo_root / "bundles" / "lumbar_disk_shape" / "configs" / "train.json"))
        parser.update({"dataset_dir": str(tiny_phantom), "shape_modes": modes, "samples_per_epoch": 6,
                       "patch_size": 64, "patch_spacing_mm": 1.0, "seed": 3})
        return parser.get_parsed_content("train#dataset")

    plain = dataset(0)
    plain.set_epoch(2)
    bank = plain.bank
    sources = [int(np.random.default_rng([3, 2, i]).integers(len(bank))) for i in range(6)]
    assert len(set(sources)) > 1
    batch = plain.batch(range(6))
    for i, j in enumerate(sources):
        item = plain[i]
        assert torch.equal(item["image"], torch.from_numpy(bank.images[j]))
        assert torch.equal(item["points"], torch.from_numpy(bank.points[j]))
        assert torch.equal(item["mask"], torch.from_numpy(bank.masks[j]).float())
        assert item["subject"] == bank.subjects[j] and item["level"] == bank.levels[j]
        for key in ("image", "points", "mask"):
            assert torch.equal(batch[key][i], item[key])
    warped = dataset(3)
    warped.set_epoch(2)
    assert not torch.equal(warped[0]["points"], plain[0]["points"])  # the same draw, augmented

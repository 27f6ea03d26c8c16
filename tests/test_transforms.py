"""MONAI transforms: intensity, contour loading, disk patches, PCA shape model, TPS warp, shape augmentation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from diskrobust.data.contours import contour_centroid, contour_to_mask, dice, mask_to_contour, polygon_fill_torch
from diskrobust.data.errors import DataError
from diskrobust.transforms import (
    ExtractDiskPatches,
    ExtractDiskPatchesd,
    LoadDiskContours,
    LoadDiskContoursd,
    LoadDiskImaged,
    RandShapeAugment,
    RandShapeAugmentd,
    ScaleIntensityMR,
    ScaleIntensityMRd,
    ShapePCA,
    border_control_points,
    draw_new_shape,
    extract_patch,
    image_points_to_patch,
    patch_points_to_image,
    tps_warp,
)

S = 128


def disk_outline(cx=64.0, cy=64.0, length=60.0, h_ant=24.0, h_post=14.0, angle_deg=0.0, n=176) -> np.ndarray:
    """A disk-like closed outline (n, 2) (x, y), anterior (taller) on the left, in contract order."""
    th = np.linspace(0, 2 * np.pi, 600, endpoint=False)
    x = np.sign(np.cos(th)) * np.abs(np.cos(th)) ** 0.4 * length / 2
    height = h_ant + (h_post - h_ant) * (x + length / 2) / length
    y = np.sign(np.sin(th)) * np.abs(np.sin(th)) ** 0.4 * height / 2
    a = np.deg2rad(angle_deg)
    dense = np.stack([cx + x * np.cos(a) - y * np.sin(a), cy + x * np.sin(a) + y * np.cos(a)], 1)
    return mask_to_contour(contour_to_mask(dense, (S, S)), num_points=n)


@pytest.fixture(scope="module")
def shape_set() -> np.ndarray:
    """40 disk contours (40, 176, 2) in a 128 patch with varied length, heights and tilt."""
    rng = np.random.default_rng(3)
    shapes = []
    for _ in range(40):
        shapes.append(
            disk_outline(
                64 + rng.uniform(-1, 1), 64 + rng.uniform(-1, 1), rng.uniform(54, 66), rng.uniform(20, 30),
                rng.uniform(12, 18), rng.uniform(-12, 12),
            )
        )
    return np.stack(shapes)


@pytest.fixture(scope="module")
def pca(shape_set) -> ShapePCA:
    return ShapePCA.fit(shape_set)


def textured_patch(points: np.ndarray, seed: int = 0) -> np.ndarray:
    """(1, S, S) float32 image: a bright disk over a smooth gradient plus noise, in [0, 1]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:S, 0:S]
    img = 0.2 + 0.2 * xx / S + 0.6 * contour_to_mask(points, (S, S)) + 0.05 * rng.random((S, S))
    return np.clip(img, 0, 1).astype(np.float32)[None]


# ------------------------------------------------------------------------------------------------
# intensity
# ------------------------------------------------------------------------------------------------


def test_scale_intensity_mr_percentiles_resist_outliers():
    rng = np.random.default_rng(0)
    img = rng.normal(100.0, 10.0, (1, 64, 64)).astype(np.float32)
    img[0, 0, 0] = 1e6  # one hot voxel
    out = np.asarray(ScaleIntensityMR()(img))
    assert out.shape == img.shape and out.dtype == np.float32
    assert out.min() == 0.0 and out.max() == 1.0
    # the bulk keeps its spread (a plain min-max would squash it to ~0)
    assert np.median(out) == pytest.approx(0.5, abs=0.05)
    assert np.percentile(out, 90) - np.percentile(out, 10) > 0.3

    z = np.asarray(ScaleIntensityMR(mode="zscore")(rng.normal(5.0, 3.0, (1, 32, 32)).astype(np.float32)))
    assert abs(z.mean()) < 1e-4 and z.std() == pytest.approx(1.0, abs=1e-3)
    with pytest.raises(ValueError):
        ScaleIntensityMR(mode="minmax")
    with pytest.raises(ValueError):
        ScaleIntensityMR(lower=90, upper=10)


def test_scale_intensity_mrd_matches_array_version():
    img = np.random.default_rng(1).gamma(2.0, 50.0, (1, 40, 40)).astype(np.float32)
    d = ScaleIntensityMRd(keys="image")({"image": img, "other": 3})
    assert np.allclose(np.asarray(d["image"]), np.asarray(ScaleIntensityMR()(img)))
    assert d["other"] == 3


# ------------------------------------------------------------------------------------------------
# loading
# ------------------------------------------------------------------------------------------------


def test_load_disk_contours_from_phantom(tiny_phantom):
    root = Path(tiny_phantom)
    entry = json.loads((root / "datalist.json").read_text())["training"][0]
    out = LoadDiskContours()(root / entry["contours"])
    assert out["contours"].shape == (5, 176, 2) and out["contours"].dtype == np.float64
    assert out["levels"] == ["L5/S1", "L4/L5", "L3/L4", "L2/L3", "L1/L2"]
    assert out["disk_labels"].tolist() == [201, 202, 203, 204, 205]
    assert out["spacing_mm"] == pytest.approx((1.2, 1.2))

    d = LoadDiskImaged(keys="image")({"image": root / entry["image"], "contours": root / entry["contours"]})
    assert d["image"].shape == (1, 256, 256)
    d = LoadDiskContoursd(keys="contours")(d)
    assert d["contours"].shape == (5, 176, 2) and d["levels"][0] == "L5/S1"
    assert d["disk_labels"].shape == (5,)


def test_load_disk_contours_errors_name_the_file(tmp_path, tiny_phantom):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="bad.json"):
        LoadDiskContours()(bad)
    root = Path(tiny_phantom)
    entry = json.loads((root / "datalist.json").read_text())["training"][0]
    with pytest.raises(DataError, match="does not match the image shape"):
        LoadDiskContoursd(keys="contours")({"image": np.zeros((1, 100, 100)), "contours": root / entry["contours"]})


# ------------------------------------------------------------------------------------------------
# patches
# ------------------------------------------------------------------------------------------------


def _ramp_image(h=200, w=240):
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    return (0.003 * xx + 0.001 * yy).astype(np.float32)  # linear: bilinear sampling is exact


def test_extract_patch_geometry_on_a_linear_image():
    img = _ramp_image()
    spacing = (0.8, 0.6)  # anisotropic (row, col)
    centre = np.array([120.3, 95.7])
    patch, scale = extract_patch(img, centre, spacing, patch_size=64, patch_spacing_mm=0.5, intensity=None)
    assert patch.shape == (1, 64, 64)
    assert np.allclose(scale, [0.5 / 0.6, 0.5 / 0.8])
    # every patch pixel holds the image value at its mapped position
    yy, xx = np.mgrid[0:64, 0:64]
    pp = np.stack([xx.ravel(), yy.ravel()], 1).astype(np.float64)
    ip = patch_points_to_image(pp, centre, scale, patch_size=64)
    expected = 0.003 * ip[:, 0] + 0.001 * ip[:, 1]
    assert np.allclose(patch[0].ravel(), expected, atol=1e-5)
    # the patch centre is the requested centre
    assert np.allclose(patch_points_to_image(np.array([[32.0, 32.0]]), centre, scale, 64), centre)
    assert np.allclose(image_points_to_patch(ip, centre, scale, 64), pp)


def test_extract_patch_padding_and_intensity():
    img = np.ones((50, 50), np.float32)
    zeros, _ = extract_patch(img, (2.0, 2.0), (1.0, 1.0), patch_size=32, patch_spacing_mm=1.0, intensity=None)
    border, _ = extract_patch(img, (2.0, 2.0), (1.0, 1.0), patch_size=32, patch_spacing_mm=1.0, padding="border", intensity=None)
    assert zeros[0, 0, 0] == 0.0 and zeros[0, -1, -1] == 1.0
    assert np.all(border == 1.0)
    scaled, _ = extract_patch(_ramp_image() * 7 + 3, (100, 100), (1.0, 1.0), patch_size=32)
    assert scaled.min() == pytest.approx(0.0) and scaled.max() == pytest.approx(1.0)
    with pytest.raises(ValueError):
        extract_patch(img, (2, 2), (1, 1), padding="reflect")


def test_patch_points_to_image_batched_torch():
    pts = torch.rand(3, 176, 2) * 128
    centre = torch.tensor([[10.0, 20.0], [30.0, 40.0], [50.0, 60.0]])
    scale = torch.tensor([[0.5, 0.5], [1.0, 2.0], [0.8, 0.6]])
    img = patch_points_to_image(pts, centre, scale)
    assert torch.allclose(img[1], (pts[1] - 64) * torch.tensor([1.0, 2.0]) + torch.tensor([30.0, 40.0]))
    assert torch.allclose(image_points_to_patch(img, centre, scale), pts, atol=1e-4)


def test_extract_disk_patches_maps_contours_both_ways():
    h, w = 160, 200
    contour_img = disk_outline(90.0, 70.0, 40.0, 16.0, 10.0, 8.0)
    image = np.zeros((1, h, w), np.float32)
    image[0] = contour_to_mask(contour_img, (h, w)) * 1.0 + 0.1
    spacing = (0.7, 0.9)
    patches = ExtractDiskPatches(patch_size=128, patch_spacing_mm=0.5)(image, contour_img[None], spacing, ["L4/L5"])
    assert len(patches) == 1
    p = patches[0]
    assert p["image"].shape == (1, 128, 128) and p["image"].dtype == np.float32
    assert p["points"].shape == (176, 2) and p["points"].dtype == np.float32
    assert p["mask"].shape == (1, 128, 128) and set(np.unique(p["mask"])) <= {0.0, 1.0}
    assert p["level"] == "L4/L5"
    assert 0.0 <= p["image"].min() and p["image"].max() <= 1.0
    # centred on the contour's area centroid
    assert np.allclose(contour_centroid(p["points"]), [64, 64], atol=1e-3)
    assert np.allclose(patch_points_to_image(p["points"], p["centre_px"], p["scale"]), contour_img, atol=1e-3)
    # the bright disk in the patch is where the patch mask is
    assert dice(p["image"][0] > 0.5, p["mask"][0] > 0.5) > 0.95


def test_extract_disk_patches_on_phantom_matches_label(tiny_phantom):
    from diskrobust.data.dataset_io import read_contours_json, read_image

    root = Path(tiny_phantom)
    entry = json.loads((root / "datalist.json").read_text())["validation"][0]
    image, meta = read_image(root / entry["image"])
    label, _ = read_image(root / entry["label"])
    doc = read_contours_json(root / entry["contours"])
    data = {
        "image": image[None],
        "contours": np.stack([d["points_px"] for d in doc["disks"]]),
        "levels": [d["level"] for d in doc["disks"]],
        "disk_labels": np.array([d["label"] for d in doc["disks"]]),
        "spacing_mm": meta["spacing_mm"],
        "subject": entry["subject"],
    }
    patches = ExtractDiskPatchesd()(data)
    assert [p["level"] for p in patches] == data["levels"]
    for p, disk in zip(patches, doc["disks"]):
        assert p["subject"] == entry["subject"] and "disk_labels" not in p and "contours" not in p
        # resample the label's disk region with the same geometry: it must agree with the patch mask
        label_patch, _ = extract_patch(label == disk["label"], p["centre_px"], meta["spacing_mm"], intensity=None)
        assert dice(label_patch[0] > 0.5, p["mask"][0] > 0.5) > 0.9, disk["level"]


# ------------------------------------------------------------------------------------------------
# PCA shape model
# ------------------------------------------------------------------------------------------------


def test_shape_pca_recovers_a_known_linear_model(tmp_path):
    rng = np.random.default_rng(0)
    mean = rng.normal(64, 10, (176, 2))
    basis = np.linalg.qr(rng.normal(size=(352, 2)))[0].T.reshape(2, 176, 2)
    coeffs = rng.normal(size=(50, 2)) * [5.0, 2.0]
    data = mean + np.tensordot(coeffs, basis, axes=(1, 0))
    model = ShapePCA.fit(data)
    assert model.num_modes == 2
    assert model.eigenvalues[0] > model.eigenvalues[1] > 0
    assert np.allclose(model.mean, data.mean(0))
    # the components span the generating basis
    proj = model.components.reshape(2, -1) @ basis.reshape(2, -1).T
    assert np.allclose(np.abs(np.linalg.det(proj)), 1.0, atol=1e-8)
    # coefficients are in units of sqrt(eigenvalue), bounded by c_max
    samples = model.sample(200, 2, c_max=2.0, generator=np.random.default_rng(1))
    c = (samples - model.mean).reshape(200, -1) @ model.components.reshape(2, -1).T / np.sqrt(model.eigenvalues)
    assert np.abs(c).max() <= 2.0 + 1e-9 and np.abs(c).max() > 1.8
    assert np.allclose(model.synthesize(np.zeros((1, 2)))[0], model.mean)

    path = tmp_path / "pca.npz"
    model.save(path)
    again = ShapePCA.load(path)
    assert np.allclose(again.components, model.components) and np.allclose(again.eigenvalues, model.eigenvalues)

    with pytest.raises(ValueError, match="n_modes=3 requested but this shape model has 2 modes"):
        model.sample(1, 3)
    with pytest.raises(DataError, match="missing.npz"):
        ShapePCA.load(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(DataError, match="junk.npz"):
        ShapePCA.load(tmp_path / "junk.npz")


def test_shape_pca_sampling_is_seeded(pca):
    a = pca.sample(4, 5, generator=np.random.default_rng(7))
    b = pca.sample(4, 5, generator=np.random.default_rng(7))
    c = pca.sample(4, 5, generator=np.random.default_rng(8))
    assert np.array_equal(a, b) and not np.allclose(a, c)
    assert a.shape == (4, 176, 2)


# ------------------------------------------------------------------------------------------------
# TPS warp
# ------------------------------------------------------------------------------------------------


def test_border_control_points():
    b = border_control_points(128, 128, 16)
    assert b.shape == (16, 2)
    assert {tuple(p) for p in b} >= {(0.0, 0.0), (127.0, 0.0), (127.0, 127.0), (0.0, 127.0)}
    on_border = (b[:, 0] == 0) | (b[:, 0] == 127) | (b[:, 1] == 0) | (b[:, 1] == 127)
    assert on_border.all()


def test_tps_warp_identity_and_translation_direction():
    img = torch.zeros(1, 1, 64, 64)
    img[0, 0, 20:30, 24:36] = 1.0
    src = torch.tensor([[[20.0, 20.0], [40.0, 20.0], [40.0, 40.0], [20.0, 40.0], [30.0, 30.0]]])
    same = tps_warp(img, src, src, border_points=0, grid_stride=1)
    assert torch.allclose(same, img, atol=1e-4)
    # moving all control points by (+5, +3) with no border anchors is a pure translation: content moves with them
    moved = tps_warp(img, src, src + torch.tensor([5.0, 3.0]), border_points=0, grid_stride=1)
    assert torch.allclose(moved[0, 0, 23:33, 29:41], torch.ones(10, 12), atol=1e-4)
    assert moved.sum().item() == pytest.approx(img.sum().item(), rel=1e-3)


def test_tps_warp_moves_the_disk_onto_the_new_contour(shape_set):
    src = shape_set[0]
    dst = (shape_set[5] - 64.0) * [1.1, 1.3] + [67.0, 62.0]  # taller, longer and shifted
    mask_img = torch.from_numpy(contour_to_mask(src, (S, S)).astype(np.float32))[None, None]
    exact = tps_warp(mask_img, torch.tensor(src)[None], torch.tensor(dst)[None], grid_stride=1)
    coarse = tps_warp(mask_img, torch.tensor(src)[None], torch.tensor(dst)[None], grid_stride=4)
    target = contour_to_mask(dst, (S, S))
    assert dice(exact[0, 0].numpy() > 0.5, target) > 0.97
    assert dice(coarse[0, 0].numpy() > 0.5, target) > 0.97
    assert (exact - coarse).abs().mean() < 0.01
    # the reverse direction would leave the mask where it was: make sure the shapes differ enough to tell
    assert dice(contour_to_mask(src, (S, S)), target) < 0.8


def test_tps_warp_batched_matches_single(shape_set):
    imgs = torch.stack([torch.from_numpy(textured_patch(shape_set[i], i)) for i in range(3)])
    src = torch.tensor(shape_set[:3], dtype=torch.float32)
    dst = torch.tensor(shape_set[3:6], dtype=torch.float32)
    batched = tps_warp(imgs, src, dst)
    single = torch.cat([tps_warp(imgs[i : i + 1], src[i : i + 1], dst[i : i + 1]) for i in range(3)])
    assert torch.allclose(batched, single, atol=1e-5)
    with pytest.raises(ValueError):
        tps_warp(imgs[0], src, dst)
    with pytest.raises(ValueError):
        tps_warp(imgs, src, dst[:2])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_tps_warp_on_cuda_matches_cpu(shape_set):
    imgs = torch.stack([torch.from_numpy(textured_patch(shape_set[i], i)) for i in range(2)])
    src = torch.tensor(shape_set[:2], dtype=torch.float32)
    dst = torch.tensor(shape_set[2:4], dtype=torch.float32)
    cpu = tps_warp(imgs, src, dst)
    gpu = tps_warp(imgs.cuda(), src.cuda(), dst.cuda())
    assert gpu.device.type == "cuda"
    assert torch.allclose(gpu.cpu(), cpu, atol=1e-4)
    filled = polygon_fill_torch(dst.cuda(), (S, S))
    assert torch.equal(filled.cpu(), polygon_fill_torch(dst, (S, S)))


# ------------------------------------------------------------------------------------------------
# shape augmentation
# ------------------------------------------------------------------------------------------------


def test_draw_new_shape_stays_inside_and_is_recentred(pca, shape_set):
    rng = np.random.default_rng(0)
    source = shape_set[3] + [4.0, -3.0]  # an off-centre source contour
    for _ in range(20):
        new = draw_new_shape(pca, 10, source, S, rng, c_max=2.0, margin=2.0)
        assert new.min() >= 2.0 and new.max() <= S - 3.0
        assert np.allclose(contour_centroid(new), contour_centroid(source), atol=1e-6)
    # absurd coefficients leave the patch: the rule shrinks them until the shape fits
    wild = draw_new_shape(pca, 10, source, S, rng, c_max=200.0, margin=2.0)
    assert wild.min() >= 2.0 and wild.max() <= S - 3.0


def test_rand_shape_augment_warps_image_onto_new_shape(pca, shape_set):
    src = shape_set[0]
    mask_img = contour_to_mask(src, (S, S)).astype(np.float32)[None]
    aug = RandShapeAugment(pca, n_modes=10).set_random_state(0)
    image, points, mask = aug(mask_img, src)
    assert image.shape == (1, S, S) and image.dtype == torch.float32
    assert points.shape == (176, 2) and points.dtype == np.float32
    assert mask.shape == (1, S, S)
    assert points.min() >= 0 and points.max() <= S - 1
    assert not np.allclose(points, src, atol=0.5)
    # the returned mask is the filled new contour, and the warped source mask lands on it
    assert torch.equal(mask, polygon_fill_torch(torch.from_numpy(points)[None], (S, S))[0])
    assert dice(image[0].numpy() > 0.5, mask[0].numpy() > 0.5) > 0.95


def test_rand_shape_augment_is_reproducible(pca, shape_set):
    img = textured_patch(shape_set[1])
    a = RandShapeAugment(pca, 5).set_random_state(42)(img, shape_set[1])
    b = RandShapeAugment(pca, 5).set_random_state(42)(img, shape_set[1])
    c = RandShapeAugment(pca, 5).set_random_state(43)(img, shape_set[1])
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.allclose(a[1], c[1])
    # prob=0 returns the input with its own mask
    same = RandShapeAugment(pca, 5, prob=0.0).set_random_state(0)(img, shape_set[1])
    assert torch.equal(same[0], torch.from_numpy(img)) and np.allclose(same[1], shape_set[1])
    with pytest.raises(ValueError, match="n_modes"):
        RandShapeAugment(pca, pca.num_modes + 1)


def test_rand_shape_augmentd_matches_array_twin(pca, shape_set):
    img = textured_patch(shape_set[2])
    arr = RandShapeAugment(pca, 3).set_random_state(5)(img, shape_set[2])
    d = RandShapeAugmentd(pca, 3).set_random_state(5)({"image": img, "points": shape_set[2], "subject": "s"})
    assert torch.equal(d["image"], arr[0]) and np.array_equal(d["points"], arr[1]) and torch.equal(d["mask"], arr[2])
    assert d["subject"] == "s"

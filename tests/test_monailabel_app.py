"""Unit tests of the MONAI Label app's inference logic (diskrobust.serving), without the server.

They run in the main environment: the app's infer task (app/lib/infers/disk_shape.py) is a thin shell
around these functions; tests/test_monailabel_server.py runs the real server.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from diskrobust import serving as S
from diskrobust.data.contours import contour_centroid, dice
from diskrobust.data.dataset_io import sagittal_affine, write_image_nifti
from diskrobust.data.errors import DataError
from diskrobust.data.phantom import PhantomConfig, generate_subject
from diskrobust.networks import DiskShapeNet
from diskrobust.transforms.patches import image_points_to_patch, patch_scale

# A small, fast phantom: 384 x 320 px at 0.6 x 0.55 mm (unequal spacings catch swapped axes).
_CFG = PhantomConfig(shape=(400, 320), spacing_mm=(0.6, 0.55), gibbs_probability=0.0)


@pytest.fixture(scope="module")
def subject():
    return generate_subject(7, _CFG)


@pytest.fixture(scope="module")
def image_2d(subject, tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "sub-0007.nii.gz"
    write_image_nifti(path, subject.image, subject.affine)
    return path


def _constant_shape_network(mean_shape_patch_px: np.ndarray) -> DiskShapeNet:
    """A real DiskShapeNet whose point head always returns ``mean_shape_patch_px`` (its last layer zeroed)."""
    net = DiskShapeNet(width=4, blocks=(1,), norm_groups=4, seg_head=False)
    with torch.no_grad():
        net.point_head[-1].weight.zero_()
        net.point_head[-1].bias.zero_()
    net.set_mean_shape(torch.as_tensor(mean_shape_patch_px, dtype=torch.float32))
    return net.eval()


# ---------------------------------------------------------------------------------------------------
# images in, labels out
# ---------------------------------------------------------------------------------------------------


def test_2d_project_image_is_its_own_slice_and_label_round_trips(subject, image_2d, tmp_path):
    sl = S.load_sagittal_slice(image_2d)
    np.testing.assert_array_equal(sl.image, subject.image)
    np.testing.assert_allclose(sl.spacing_mm, _CFG.spacing_mm, rtol=1e-6)
    assert sl.slice_index == 0 and sl.num_slices == 1

    label = np.zeros(sl.image.shape, dtype=np.uint16)
    label[10:20, 30:50] = 203
    out = S.write_label_image(tmp_path / "label.nii.gz", sl, label)
    back = nib.load(str(out))
    assert back.shape == subject.image.shape
    np.testing.assert_array_equal(np.asarray(back.dataobj), label)
    np.testing.assert_allclose(back.affine, nib.load(str(image_2d)).affine)


def test_3d_scan_mid_sagittal_slice_in_contract_orientation(subject, tmp_path):
    """A RAS-ordered volume (axes R, A, S): the slice comes back as the contract's (row I, col P) image."""
    img2d = subject.image
    n_r = 5
    # contract image[row, col] = vol[i, nA-1-col, nS-1-row]  (row -> inferior, col -> posterior)
    sagittal = img2d[::-1, ::-1].T
    vol = np.stack([sagittal * (0.1 * (i + 1)) for i in range(n_r)], axis=0).astype(np.float32)
    vol[n_r // 2] = sagittal
    spacing_r, spacing_a, spacing_s = 3.5, 0.55, 0.6
    affine = np.diag([spacing_r, spacing_a, spacing_s, 1.0])
    path = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(vol, affine), str(path))

    sl = S.load_sagittal_slice(path)
    assert sl.slice_index == n_r // 2 and sl.num_slices == n_r
    np.testing.assert_array_equal(sl.image, img2d)
    np.testing.assert_allclose(sl.spacing_mm, (spacing_s, spacing_a))

    other = S.load_sagittal_slice(path, slice_index=0)
    np.testing.assert_allclose(other.image, img2d * 0.1, rtol=1e-6)

    # a label drawn on the slice lands on the same voxels of the volume, other slices stay empty
    label2d = np.zeros(img2d.shape, dtype=np.uint16)
    label2d[100:110, 40:90] = 202
    out = S.write_label_image(tmp_path / "scan_label.nii.gz", sl, label2d)
    back = nib.load(str(out))
    assert back.shape == vol.shape
    np.testing.assert_allclose(back.affine, affine)
    expected = np.zeros(vol.shape, dtype=np.uint16)
    expected[n_r // 2] = label2d[::-1, ::-1].T
    np.testing.assert_array_equal(np.asarray(back.dataobj), expected)

    with pytest.raises(DataError, match="slice index 9 is outside 0..4"):
        S.load_sagittal_slice(path, slice_index=9)


def test_unreadable_images_raise_dataerror_naming_the_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        S.load_sagittal_slice(tmp_path / "missing.nii.gz")
    bad = tmp_path / "garbage.nii.gz"
    bad.write_bytes(b"not a nifti file")
    with pytest.raises(DataError, match="garbage.nii.gz"):
        S.load_sagittal_slice(bad)
    nan = tmp_path / "nan.nii.gz"
    arr = np.ones((70, 80), dtype=np.float32)
    arr[3, 4] = np.nan
    nib.save(nib.Nifti1Image(arr, sagittal_affine((0.5, 0.5))), str(nan))
    with pytest.raises(DataError, match="NaN"):
        S.load_sagittal_slice(nan)


# ---------------------------------------------------------------------------------------------------
# patches and points
# ---------------------------------------------------------------------------------------------------


def test_points_map_back_to_image_px_at_any_click(subject):
    """A network that always returns the true disk shape (patch px) puts it exactly at the click."""
    disk = subject.disks[2]
    truth = np.asarray(disk["points_px"])
    centre = contour_centroid(truth)
    scale = patch_scale(_CFG.spacing_mm, 0.5)
    net = _constant_shape_network(image_points_to_patch(truth, centre, scale))
    offset = np.array([5.0, -4.0])
    image = S.scale_intensity(subject.image)

    disks = S.predict_disks(net, image, _CFG.spacing_mm, (centre + offset)[None])
    assert len(disks) == 1
    np.testing.assert_allclose(disks[0].points_px, truth + offset, atol=1e-3)
    # the contour's centroid is the patch centre, so re-centring leaves the click where it was
    np.testing.assert_allclose(disks[0].centre_px, centre + offset, atol=1e-3)


def test_recentring_follows_the_contour_for_at_most_recentre_steps(subject):
    """A shape 10 patch px right of the patch centre pulls the centre 10 * scale_x image px per step."""
    truth = np.asarray(subject.disks[1]["points_px"])
    centre = contour_centroid(truth)
    scale = patch_scale(_CFG.spacing_mm, 0.5)
    shifted = image_points_to_patch(truth, centre, scale) + np.array([10.0, 0.0])
    net = _constant_shape_network(shifted)
    image = S.scale_intensity(subject.image)
    for steps in (0, 1, 2):
        (d,) = S.predict_disks(net, image, _CFG.spacing_mm, centre[None], recentre_steps=steps)
        expected_centre = centre + np.array([10.0 * scale[0] * steps, 0.0])
        np.testing.assert_allclose(d.centre_px, expected_centre, atol=1e-3)
        np.testing.assert_allclose(d.points_px, truth + expected_centre - centre + [10.0 * scale[0], 0.0], atol=1e-3)


def test_cut_patches_centres_the_click_and_scales_each_patch(subject):
    image = S.scale_intensity(subject.image)
    centre = contour_centroid(np.asarray(subject.disks[0]["points_px"]))
    patches, scale = S.cut_patches(image, np.stack([centre, centre + 30]), _CFG.spacing_mm)
    assert patches.shape == (2, 1, 128, 128) and patches.dtype == torch.float32
    np.testing.assert_allclose(scale, patch_scale(_CFG.spacing_mm, 0.5))
    for p in patches:
        assert float(p.min()) == pytest.approx(0.0, abs=1e-6) and float(p.max()) == pytest.approx(1.0, abs=1e-6)
    assert not torch.allclose(patches[0], patches[1])


# ---------------------------------------------------------------------------------------------------
# labels and JSON
# ---------------------------------------------------------------------------------------------------


def test_disks_are_labelled_from_the_bottom_and_json_has_px_and_mm(subject, image_2d):
    truths = [np.asarray(d["points_px"]) for d in subject.disks]
    centre0 = contour_centroid(truths[0])
    scale = patch_scale(_CFG.spacing_mm, 0.5)
    net = _constant_shape_network(image_points_to_patch(truths[0], centre0, scale))
    image = S.scale_intensity(subject.image)
    # clicks given top first: the labels must still count from the bottom of the image
    clicks = np.stack([contour_centroid(t) for t in truths])[::-1]
    disks = S.name_levels(net, image, _CFG.spacing_mm, S.predict_disks(net, image, _CFG.spacing_mm, clicks),
                          add_found=False)
    assert [d.label for d in disks] == [201, 202, 203, 204, 205]
    # without a segmentation head the column's end cannot be checked: every name says so
    assert all(any("assume" in f for f in d.flags) for d in disks)
    assert [d.level for d in disks] == ["L5/S1", "L4/L5", "L3/L4", "L2/L3", "L1/L2"]
    ys = [d.centre_px[1] for d in disks]
    assert ys == sorted(ys, reverse=True)

    label = S.disks_label_image(disks, image.shape)
    assert set(np.unique(label)) == {0, 201, 202, 203, 204, 205}
    # the L5/S1 disk is the one whose shape the network returns: it matches the phantom's truth mask
    assert dice(label == 201, subject.label == 201) > 0.97

    sl = S.load_sagittal_slice(image_2d)
    result = json.loads(json.dumps(S.disks_to_json(disks, sl)))
    assert result["shape"] == list(image.shape) and result["num_points"] == 176
    d0 = result["disks"][0]
    assert d0["level"] == "L5/S1" and d0["label"] == 201 and len(d0["points_px"]) == 176
    np.testing.assert_allclose(np.array(d0["points_mm"]), np.array(d0["points_px"]) * [0.55, 0.6], atol=2e-3)


def test_duplicate_clicks_on_one_disk_give_one_disk(subject):
    truth = np.asarray(subject.disks[3]["points_px"])
    centre = contour_centroid(truth)
    net = _constant_shape_network(image_points_to_patch(truth, centre, patch_scale(_CFG.spacing_mm, 0.5)))
    image = S.scale_intensity(subject.image)
    disks = S.predict_disks(net, image, _CFG.spacing_mm, np.stack([centre, centre + [2.0, 1.0]]))
    assert len(disks) == 1


def test_level_names_follow_spider_numbering():
    assert S.disk_level_name(201) == "L5/S1"
    assert S.disk_level_name(205) == "L1/L2"
    assert S.disk_level_name(206) == "T12/L1"
    with pytest.raises(ValueError):
        S.disk_level_name(200)


# ---------------------------------------------------------------------------------------------------
# the automatic search's component filter
# ---------------------------------------------------------------------------------------------------


def _ellipse(shape, centre, half_axes):
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    return ((cc - centre[0]) / half_axes[0]) ** 2 + ((rr - centre[1]) / half_axes[1]) ** 2 <= 1.0


def test_disk_components_keep_disk_sized_elongated_blobs_only():
    shape = (400, 300)
    prob = np.zeros(shape, dtype=np.float32)
    prob[_ellipse(shape, (80, 60), (30, 12))] = 0.9  # 30 x 12 mm half-axes 15 x 6 mm at 0.5 mm: a disk
    prob[_ellipse(shape, (200, 60), (4, 4))] = 0.9  # 13 mm^2: noise
    prob[_ellipse(shape, (150, 200), (20, 20))] = 0.9  # 314 mm^2 but round: a vertebral body
    prob[350:356, 20:280] = 0.9  # 390 mm^2, 43:1: a stripe
    prob[_ellipse(shape, (220, 300), (28, 10))] = 0.4  # disk-shaped but below the threshold
    centres = S.disk_components(prob, 0.5, threshold=0.5)
    np.testing.assert_allclose(centres, [[80.0, 60.0]], atol=0.5)
    np.testing.assert_allclose(S.disk_components(prob, 0.5, threshold=0.3)[:, 1], [60.0, 300.0], atol=0.5)


# ---------------------------------------------------------------------------------------------------
# request parsing
# ---------------------------------------------------------------------------------------------------


def test_parse_points_accepts_2d_3d_and_json_and_rejects_the_rest():
    np.testing.assert_array_equal(S.parse_points([[1, 2], [3.5, 4]]), [[1, 2], [3.5, 4]])
    np.testing.assert_array_equal(S.parse_points([[1, 2, 7]]), [[1, 2]])
    np.testing.assert_array_equal(S.parse_points("[[5, 6]]"), [[5, 6]])
    assert S.parse_points(None).shape == (0, 2) and S.parse_points([]).shape == (0, 2)
    for bad in ("abc", [[1]], [1, 2], [["a", "b"]], [[1, float("nan")]], {"x": 1}):
        with pytest.raises(ValueError, match="foreground"):
            S.parse_points(bad)


def test_parse_slice_index():
    assert S.parse_slice_index(None) is None and S.parse_slice_index("") is None
    assert S.parse_slice_index(-1) is None
    assert S.parse_slice_index("3") == 3 and S.parse_slice_index(4.0) == 4
    for bad in ("x", 2.5, True, [1], float("inf")):
        with pytest.raises(ValueError, match="slice_index"):
            S.parse_slice_index(bad)


def test_service_rejects_clicks_outside_the_image(image_2d):
    net = DiskShapeNet(width=4, blocks=(1,), norm_groups=4).eval()
    with pytest.raises(ValueError, match="outside the slice"):
        S.DiskShapeService(net).infer(image_2d, centres=np.array([[5000.0, 10.0]]))


# ---------------------------------------------------------------------------------------------------
# the bundle
# ---------------------------------------------------------------------------------------------------


def test_load_bundle_network_builds_the_shipped_model_from_its_description(repo_root, tmp_path):
    bundle = repo_root / "bundles" / "lumbar_disk_shape"
    net = S.load_bundle_network(bundle)
    assert isinstance(net, DiskShapeNet) and not net.training
    assert net.serving_patch == (128, 0.5)
    with pytest.raises(DataError, match="model.pt"):
        S.load_bundle_network(tmp_path)
    with pytest.raises(DataError):  # an override that disagrees with the checkpoint's description
        S.load_bundle_network(bundle, overrides={"width": 3})


# ---------------------------------------------------------------------------------------------------
# robustness score
# ---------------------------------------------------------------------------------------------------


def test_disk_robustness_is_zero_without_budget_and_grows_with_it(subject):
    torch.manual_seed(0)
    net = DiskShapeNet(width=4, blocks=(1,), norm_groups=4)
    with torch.no_grad():  # a point head that reacts to the image, so the attack has something to move
        net.point_head[-1].weight.normal_(std=0.05)
    net.eval()
    image = S.scale_intensity(subject.image)
    centres = np.stack([contour_centroid(np.asarray(d["points_px"])) for d in subject.disks[:2]])
    disks = S.predict_disks(net, image, _CFG.spacing_mm, centres, recentre_steps=0)
    before = {k: v.clone() for k, v in net.state_dict().items()}

    none = S.disk_robustness(net, image, _CFG.spacing_mm, disks, eps=0.0, steps=3)
    some = S.disk_robustness(net, image, _CFG.spacing_mm, disks, eps=0.1, steps=3)
    assert len(none) == len(some) == 2
    for a, b in zip(none, some):
        assert a["mean_displacement_px"] == 0.0 and a["max_displacement_mm"] == 0.0
        assert b["mean_displacement_px"] > 0.01 and b["max_displacement_px"] >= b["mean_displacement_px"]
        assert b["eps"] == 0.1 and b["steps"] == 3
    for k, v in net.state_dict().items():  # the attack leaves the network as it was
        torch.testing.assert_close(v, before[k])
    assert S.disk_robustness(net, image, _CFG.spacing_mm, [], eps=0.1) == []


def _synthetic_disk(x, y, agreement, tilt_deg=0.0, spacing=0.6):
    """A DiskPrediction with a 30 x 10 mm elliptic contour at (x, y) px, long axis tilted by tilt_deg."""
    t = np.linspace(0, 2 * np.pi, 176, endpoint=False)
    a, b, th = 15.0 / spacing, 5.0 / spacing, np.radians(tilt_deg)
    pts = np.stack([a * np.cos(t), b * np.sin(t)], 1) @ np.array([[np.cos(th), np.sin(th)], [-np.sin(th), np.cos(th)]])
    return S.DiskPrediction(label=0, level="", centre_px=np.array([x, y], float), points_px=pts + [x, y],
                            seg_agreement=agreement)


def test_column_is_the_anterior_disk_chain_not_the_posterior_elements_nor_texture():
    # five disks on a lordotic curve (x 121..141 px at 0.6 mm); the spinous processes 130 px further
    # back agree as well as the disks; two texture finds, one off the chain, one disk-shaped but upright
    column = [_synthetic_disk(136, 313, 0.9), _synthetic_disk(121, 251, 0.95), _synthetic_disk(121, 188, 0.9),
              _synthetic_disk(128, 123, 0.92), _synthetic_disk(141, 58, 0.9)]
    behind = [_synthetic_disk(x + 130, y, 0.97) for x, y in [(136, 313), (121, 251), (121, 188), (128, 123)]]
    texture = [_synthetic_disk(20, 220, 0.9), _synthetic_disk(125, 220, 0.95, tilt_deg=90)]
    found = column + behind + texture
    chain = S.best_column(found, (0.6, 0.6), min_agreement=0.8)
    assert [tuple(found[i].centre_px) for i in chain] == [tuple(d.centre_px) for d in column]
    # heads that disagree take no part; two disks are no column
    assert S.best_column(column[:2] + [_synthetic_disk(121, 188, 0.3)], (0.6, 0.6), 0.8) == []
    # the sacrum's segment below L5/S1 bends the other way than the lordosis: not part of the column
    sacral = _synthetic_disk(120, 375, 0.95)  # a 28 deg turn, under MAX_TURN_DEG, but against the bend
    chain = S.best_column([sacral] + column, (0.6, 0.6), 0.8)
    assert 0 not in chain and len(chain) == 5

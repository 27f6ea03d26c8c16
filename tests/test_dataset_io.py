"""dataset_io: round trips, determinism, and every bad input raising DataError that names the file and problem."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from diskrobust.data.dataset_io import (
    CONTOUR_FORMAT,
    load_datalist,
    read_contours_json,
    read_image,
    sagittal_affine,
    write_contours_json,
    write_datalist,
    write_image_nifti,
)
from diskrobust.data.errors import DataError


def _square_contour(x0: float, y0: float, size: float) -> np.ndarray:
    """A 176-point contour of an axis-aligned square in the contract's order (for file tests)."""
    t = np.arange(44) / 44.0
    sides = [
        np.stack([np.full(44, x0), y0 + t * size], 1),  # anterior side, downwards
        np.stack([x0 + t * size, np.full(44, y0 + size)], 1),  # inferior endplate, anterior -> posterior
        np.stack([np.full(44, x0 + size), y0 + size - t * size], 1),  # posterior side, upwards
        np.stack([x0 + size - t * size, np.full(44, y0)], 1),  # superior endplate, back to point 0
    ]
    return np.concatenate(sides)


def test_sagittal_affine_follows_the_contract():
    aff = sagittal_affine((0.5, 0.7), slice_thickness_mm=3.0)
    # column 0 (row) -> -S, column 1 (col) -> -A, column 2 -> +R (RAS = x, y, z)
    np.testing.assert_allclose(aff[:3, 0], [0, 0, -0.5])
    np.testing.assert_allclose(aff[:3, 1], [0, -0.7, 0])
    np.testing.assert_allclose(aff[:3, 2], [3.0, 0, 0])
    centred = sagittal_affine((0.5, 0.7), shape=(11, 21))
    np.testing.assert_allclose(centred @ np.array([5.0, 10.0, 0.0, 1.0]), [0, 0, 0, 1], atol=1e-12)


def test_image_round_trip_keeps_values_spacing_and_affine(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.random((40, 30)).astype(np.float32)
    aff = sagittal_affine((1.2, 0.8), shape=img.shape)
    path = write_image_nifti(tmp_path / "images" / "a.nii.gz", img, aff)
    back, meta = read_image(path)
    assert back.dtype == np.float32 and back.shape == (40, 30)
    np.testing.assert_array_equal(back, img)
    assert meta["spacing_mm"] == (1.2, 0.8)
    np.testing.assert_allclose(meta["affine"], aff, atol=1e-5)
    # uncompressed too, and integer labels keep their dtype on disk
    lab = (rng.random((40, 30)) * 300).astype(np.uint16)
    p2 = write_image_nifti(tmp_path / "b.nii", lab, aff)
    assert np.asarray(nib.load(str(p2)).dataobj).dtype == np.uint16
    np.testing.assert_array_equal(read_image(p2)[0], lab.astype(np.float32))


def test_nifti_bytes_are_deterministic_and_writes_leave_no_temp_files(tmp_path):
    img = np.arange(64 * 48, dtype=np.float32).reshape(64, 48)
    aff = sagittal_affine((1.0, 1.0))
    a = write_image_nifti(tmp_path / "a.nii.gz", img, aff).read_bytes()
    b = write_image_nifti(tmp_path / "b.nii.gz", img, aff).read_bytes()
    assert a == b
    assert gzip.decompress(a)[:4] == (348).to_bytes(4, "little")  # a NIfTI-1 header inside
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.nii.gz", "b.nii.gz"]
    mode = os.stat(tmp_path / "a.nii.gz").st_mode & 0o777
    assert mode & 0o044, f"written file is not readable by others: {oct(mode)}"


def test_read_image_accepts_3d_with_a_singleton_axis(tmp_path):
    img = np.random.default_rng(1).random((20, 16)).astype(np.float32)
    aff3 = np.diag([0.9, 0.6, 4.0, 1.0])
    path = tmp_path / "s.nii.gz"
    nib.save(nib.Nifti1Image(img[:, :, None], aff3), str(path))
    back, meta = read_image(path)
    np.testing.assert_array_equal(back, img)
    assert meta["spacing_mm"] == pytest.approx((0.9, 0.6))


@pytest.mark.parametrize(
    "make, problem",
    [
        (lambda p: None, "not found"),
        (lambda p: p.write_bytes(b"this is not a nifti file at all" * 20), "cannot read image"),
        (lambda p: p.write_bytes(gzip.compress(b"\x00" * 400)), "cannot read image"),
        (lambda p: nib.save(nib.Nifti1Image(np.zeros((4, 5, 3), np.float32), np.eye(4)), str(p)), "singleton"),
        (lambda p: nib.save(nib.Nifti1Image(np.zeros((4, 5, 2, 2), np.float32), np.eye(4)), str(p)), "got shape"),
        (lambda p: nib.save(nib.Nifti1Image(np.array([[0, np.nan], [1, 2]], np.float32), np.eye(4)), str(p)), "NaN/Inf"),
        (lambda p: nib.save(nib.Nifti1Image(np.array([[0, np.inf], [1, 2]], np.float32), np.eye(4)), str(p)), "NaN/Inf"),
    ],
    ids=["missing", "garbage", "bad-gzip-content", "3d-no-singleton", "4d", "nan", "inf"],
)
def test_read_image_bad_inputs_name_file_and_problem(tmp_path, make, problem):
    path = tmp_path / "bad.nii.gz"
    make(path)
    with pytest.raises(DataError) as err:
        read_image(path)
    assert str(path) in str(err.value) and problem in str(err.value)


def test_read_image_truncated_file(tmp_path):
    good = write_image_nifti(tmp_path / "g.nii.gz", np.random.default_rng(0).random((50, 50)).astype(np.float32), np.eye(4))
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    with pytest.raises(DataError, match="cannot read image") as err:
        read_image(cut)
    assert "cut.nii.gz" in str(err.value)


def test_read_image_rejects_other_formats(tmp_path):
    p = tmp_path / "x.png"
    p.write_bytes(b"\x89PNG")
    with pytest.raises(DataError, match="unsupported image format"):
        read_image(p)


def test_write_image_rejects_bad_arrays(tmp_path):
    with pytest.raises(DataError, match="2D"):
        write_image_nifti(tmp_path / "a.nii.gz", np.zeros((3, 4, 5)), np.eye(4))
    with pytest.raises(DataError, match="NaN/Inf"):
        write_image_nifti(tmp_path / "a.nii.gz", np.array([[np.nan, 1.0]]), np.eye(4))
    assert not (tmp_path / "a.nii.gz").exists()


def _write_contours(tmp_path: Path, name: str = "c.json") -> Path:
    disks = [{"level": "L5/S1", "label": 201, "points_px": _square_contour(10, 20, 15)}, {"level": "L4/L5", "label": 202, "points_px": _square_contour(12, 5, 10)}]
    return write_contours_json(tmp_path / name, "sub-0007", (64, 48), (0.5, 0.8), disks)


def test_contours_round_trip(tmp_path):
    path = _write_contours(tmp_path)
    doc = read_contours_json(path, image_shape=(64, 48))
    assert doc["format"] == CONTOUR_FORMAT and doc["subject"] == "sub-0007" and doc["shape"] == (64, 48)
    assert [d["label"] for d in doc["disks"]] == [201, 202]
    np.testing.assert_allclose(doc["disks"][0]["points_px"], _square_contour(10, 20, 15), atol=1e-4)
    # points_mm = points_px * [spacing_col, spacing_row]
    np.testing.assert_allclose(doc["disks"][0]["points_mm"], _square_contour(10, 20, 15) * [0.8, 0.5], atol=1e-4)
    raw = json.loads(path.read_text())
    assert raw["num_points"] == 176 and raw["spacing_mm"] == [0.5, 0.8]
    np.testing.assert_allclose(raw["disks"][1]["points_mm"], np.asarray(raw["disks"][1]["points_px"]) * [0.8, 0.5], atol=1e-3)


def _corrupt(path: Path, edit) -> None:
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize(
    "edit, problem",
    [
        (lambda d: d.update(format="other/2"), "unknown contour format"),
        (lambda d: d.pop("disks"), "missing key 'disks'"),
        (lambda d: d.update(disks=[]), "non-empty"),
        (lambda d: d["disks"][1].update(points_px=d["disks"][1]["points_px"][:175]), "disk 1 (L4/L5): expected 176 points"),
        (lambda d: d["disks"][0]["points_px"][3].__setitem__(0, float("nan")), "disk 0 (L5/S1): points_px has NaN/Inf"),
        (lambda d: d["disks"][0]["points_px"][100].__setitem__(1, 500.0), "disk 0 (L5/S1): 1 points lie outside the 64x48 image"),
        (lambda d: d["disks"][0].pop("points_px"), "disk 0 (L5/S1): needs"),
        (lambda d: d.update(shape=[32, 48]), "does not match the image shape"),
        (lambda d: d["disks"][1].update(points_px="abc"), "disk 1 (L4/L5)"),
    ],
    ids=["format", "no-disks-key", "empty", "175-points", "nan", "outside", "no-points", "shape-mismatch", "not-numeric"],
)
def test_read_contours_bad_inputs_name_file_disk_and_problem(tmp_path, edit, problem):
    path = _write_contours(tmp_path)
    _corrupt(path, edit)
    with pytest.raises(DataError) as err:
        read_contours_json(path, image_shape=(64, 48))
    assert str(path) in str(err.value) and problem in str(err.value)


def test_read_contours_missing_and_invalid_json(tmp_path):
    with pytest.raises(DataError, match="contour file not found"):
        read_contours_json(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON") as err:
        read_contours_json(bad)
    assert "bad.json" in str(err.value)


def test_write_contours_rejects_wrong_point_count(tmp_path):
    with pytest.raises(DataError, match="L1/L2"):
        write_contours_json(tmp_path / "c.json", "s", (64, 64), (1, 1), [{"level": "L1/L2", "label": 205, "points_px": np.zeros((170, 2))}])


def _dataset(tmp_path: Path) -> Path:
    for sub in ("sub-0000", "sub-0001"):
        write_image_nifti(tmp_path / "images" / f"{sub}.nii.gz", np.ones((8, 8), np.float32), np.eye(4))
        write_image_nifti(tmp_path / "labels" / f"{sub}.nii.gz", np.ones((8, 8), np.uint16), np.eye(4))
    entry = lambda s: {"subject": s, "image": f"images/{s}.nii.gz", "label": f"labels/{s}.nii.gz"}  # noqa: E731
    return write_datalist(tmp_path / "datalist.json", {"training": [entry("sub-0000")], "validation": [entry("sub-0001")], "test": []})


def test_load_datalist_resolves_paths(tmp_path):
    dl = _dataset(tmp_path)
    entries = load_datalist(dl, "training")
    assert len(entries) == 1 and entries[0]["subject"] == "sub-0000"
    assert Path(entries[0]["image"]).is_absolute() and Path(entries[0]["image"]) == (tmp_path / "images" / "sub-0000.nii.gz").resolve()
    assert json.loads(dl.read_text())["training"][0]["image"] == "images/sub-0000.nii.gz"  # stored relative


def test_load_datalist_errors_name_datalist_entry_and_path(tmp_path):
    with pytest.raises(DataError, match="datalist not found"):
        load_datalist(tmp_path / "missing.json", "training")
    dl = _dataset(tmp_path)
    with pytest.raises(DataError, match="unknown split 'train'") as err:
        load_datalist(dl, "train")
    assert str(dl) in str(err.value)
    with pytest.raises(DataError, match="split 'test' is empty"):
        load_datalist(dl, "test")
    (tmp_path / "labels" / "sub-0001.nii.gz").unlink()
    with pytest.raises(DataError) as err:
        load_datalist(dl, "validation")
    msg = str(err.value)
    assert str(dl) in msg and "sub-0001" in msg and "label file missing" in msg and str(tmp_path / "labels" / "sub-0001.nii.gz") in msg
    dl.write_text("[1, 2]")
    with pytest.raises(DataError, match="JSON object"):
        load_datalist(dl, "training")

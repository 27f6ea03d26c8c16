"""Real-data converters (SPIDER, MRSpineSeg, generic) on small datasets built from the project's phantom.

Each dataset stacks a 256 x 256 phantom slice (1.2 mm) into a 9-slice sagittal volume and stores it
with a different voxel-axis order and flipped direction cosines; the converted contours must match
the phantom's ground truth.
"""

from __future__ import annotations

import json
from pathlib import Path

import itk
import nibabel as nib
import numpy as np
import pytest
from scipy.ndimage import binary_erosion

from diskrobust.cli import main as cli_main
from diskrobust.data.contours import contour_to_mask, dice
from diskrobust.data.convert import (
    ConvertOptions,
    convert_dataset,
    disk_level,
    find_mrspineseg_series,
    find_sagittal_axes,
    find_spider_series,
    level_to_disk_label,
    split_patients,
)
from diskrobust.data.convert.common import convert_disks
from diskrobust.data.convert.generic import build_label_map, find_generic_series, parse_disk_labels
from diskrobust.data.dataset_io import load_datalist, read_contours_json, read_image
from diskrobust.data.errors import DataError
from diskrobust.datasets import build_patch_bank
from diskrobust.data.phantom import PhantomConfig, generate_subject

SHAPE = (256, 256)
SPACING = (1.2, 1.2)  # (row, col) mm
THICK = 3.5  # sagittal slice spacing, mm
N_SLICES, MID = 10, 4  # asymmetric, so a reversed sagittal axis changes the index
# Unit LPS direction of each project axis: k (L-R slice, towards +R), row (inferior), col (posterior).
LPS_OF_PROJECT = [np.array([-1.0, 0, 0]), np.array([0, 0, -1.0]), np.array([0, 1.0, 0])]
ORIGIN_PROJECT_LPS = np.array([12.0, -30.0, 85.0])  # world LPS of project voxel (0, 0, 0)
SPACING_PROJECT = np.array([THICK, SPACING[0], SPACING[1]])


@pytest.fixture(scope="module")
def phantoms():
    cfg = PhantomConfig(shape=SHAPE, spacing_mm=SPACING)
    return [generate_subject(seed, cfg) for seed in (0, 1)]


def stack(subject, canal_value: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """(K, R, C) image and label volumes: the phantom slice in the middle, the canal narrowing away
    from it (so the canal-centred slice is the largest) and no labels beyond 3 slices off."""
    img = np.stack([subject.image + 0.1 * abs(k - MID) for k in range(N_SLICES)]).astype(np.float32)
    lab = np.zeros((N_SLICES, *SHAPE), dtype=np.uint16)
    canal = subject.label == 100
    for k in range(N_SLICES):
        d = abs(k - MID)
        if d > 3:
            continue
        sl = subject.label.copy()
        sl[canal] = 0
        sl[binary_erosion(canal, iterations=2 * d) if d else canal] = canal_value
        lab[k] = sl
    return img, lab


def to_file_frame(vol: np.ndarray, axes_order, flips):
    """Project-frame (K, R, C) array -> (array in file index order, LPS direction (3, 3), spacing, LPS origin)."""
    arr = np.transpose(vol, axes_order)
    direction = np.zeros((3, 3))
    origin = ORIGIN_PROJECT_LPS.copy()
    for j, a in enumerate(axes_order):
        u = LPS_OF_PROJECT[a]
        if flips[j]:
            arr = np.flip(arr, j)
            origin += (vol.shape[a] - 1) * SPACING_PROJECT[a] * u
        direction[:, j] = -u if flips[j] else u
    spacing = SPACING_PROJECT[list(axes_order)]
    return np.ascontiguousarray(arr), direction, spacing, origin


def write_mha(path: Path, vol, axes_order, flips, dtype=None, origin_shift=(0.0, 0.0, 0.0)):
    arr, direction, spacing, origin = to_file_frame(vol, axes_order, flips)
    origin = origin + np.asarray(origin_shift)
    im = itk.image_from_array(np.ascontiguousarray(arr.transpose(2, 1, 0).astype(dtype or arr.dtype)))
    im.SetSpacing(spacing.tolist())
    im.SetOrigin(origin.tolist())
    im.SetDirection(itk.matrix_from_array(direction))
    path.parent.mkdir(parents=True, exist_ok=True)
    itk.imwrite(im, str(path))


def write_nifti(path: Path, vol, axes_order, flips):
    arr, direction, spacing, origin = to_file_frame(vol, axes_order, flips)
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    aff = np.eye(4)
    aff[:3, :3] = lps_to_ras @ direction @ np.diag(spacing)
    aff[:3, 3] = lps_to_ras @ origin
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, aff), str(path))


def write_dicom_series(folder: Path, vol, axes_order, flips):
    """One file per slice along file axis 2 (single-slice 3D images keep their full position/orientation)."""
    arr, direction, spacing, origin = to_file_frame(vol, axes_order, flips)
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(arr.shape[2]):
        sl = itk.image_from_array(np.ascontiguousarray(arr[:, :, k : k + 1].transpose(2, 1, 0)))
        sl.SetSpacing(spacing.tolist())
        sl.SetOrigin((origin + direction[:, 2] * spacing[2] * k).tolist())
        sl.SetDirection(itk.matrix_from_array(direction))
        md = sl.GetMetaDataDictionary()
        md["0008|0060"] = "MR"
        md["0020|0013"] = str(k + 1)
        md["0020|000d"] = "1.2.826.0.1.3680043.2.1125.77.1"
        md["0020|000e"] = "1.2.826.0.1.3680043.2.1125.77.2"
        io = itk.GDCMImageIO.New()
        io.KeepOriginalUIDOn()
        itk.imwrite(sl, str(folder / f"slice{k:03d}.dcm"), imageio=io)


def expected_affine_ras(header_cols_reversed: bool = False) -> np.ndarray:
    """Where the converted (row, col) grid must land: the mid project slice, row -> -S, col -> -A.

    With ``header_cols_reversed`` the file's header had A-P backwards: the converter follows the
    anatomy, so the affine (which follows the header) has col -> +A from the far end of the row."""
    to_ras = np.diag([-1.0, -1.0, 1.0])
    aff = np.eye(4)
    aff[:3, 0] = to_ras @ LPS_OF_PROJECT[1] * SPACING[0]
    aff[:3, 1] = to_ras @ LPS_OF_PROJECT[2] * SPACING[1]
    aff[:3, 2] = to_ras @ LPS_OF_PROJECT[0] * THICK
    aff[:3, 3] = to_ras @ (ORIGIN_PROJECT_LPS + MID * THICK * LPS_OF_PROJECT[0])
    if header_cols_reversed:
        aff[:3, 3] += (SHAPE[1] - 1) * aff[:3, 1]
        aff[:3, 1] *= -1
    return aff


def check_against_phantom(
    out: Path, subject_name: str, phantom, min_dice=0.95, max_err_px=1.5, check_image=True, header_cols_reversed=False,
    check_affine=True,
):
    """The converted files reproduce the phantom: image/labels/affine and every disk's contour."""
    img, meta = read_image(out / "images" / f"{subject_name}.nii.gz")
    assert img.shape == SHAPE
    if check_affine:
        np.testing.assert_allclose(meta["affine"], expected_affine_ras(header_cols_reversed), atol=1e-3)
    if check_image:
        np.testing.assert_allclose(img, phantom.image, atol=1e-3 * float(phantom.image.max()))
    doc = read_contours_json(out / "contours" / f"{subject_name}.json", image_shape=SHAPE)
    np.testing.assert_allclose(doc["spacing_mm"], SPACING, rtol=1e-5)
    by_level = {d["level"]: d for d in doc["disks"]}
    for gt in phantom.disks:
        assert gt["level"] in by_level, f"{subject_name}: {gt['level']} not converted"
        got = by_level[gt["level"]]
        assert got["label"] == gt["label"]
        d = dice(contour_to_mask(got["points_px"], SHAPE), contour_to_mask(gt["points_px"], SHAPE))
        err = float(np.linalg.norm(got["points_px"] - gt["points_px"], axis=1).mean())
        assert d >= min_dice, f"{gt['level']}: Dice {d:.3f}"
        assert err < max_err_px, f"{gt['level']}: mean point error {err:.2f} px"
    return doc


# ----------------------------------------------------------------------------- unit checks


def test_level_names_follow_spider_numbering():
    assert [disk_level(v) for v in (201, 202, 205, 206, 217)] == ["L5/S1", "L4/L5", "L1/L2", "T12/L1", "T1/T2"]
    assert level_to_disk_label("l4-l5") == 202 and level_to_disk_label("L5/S") == 201
    with pytest.raises(ValueError):
        level_to_disk_label("L9/L10")
    assert parse_disk_labels("L5/S1=11, L4/L5=12") == {11: 201, 12: 202}
    assert parse_disk_labels("201,203") == {201: 201, 203: 203}
    for bad in ("11", "L5/S1=11,L5/S1=12", "L5/S1=x"):
        with pytest.raises(ValueError):
            parse_disk_labels(bad)
    assert build_label_map("L5/S1=11", canal_label=7, vertebra_labels="L5=2") == {11: 201, 2: 1, 7: 100}


def test_sagittal_axis_from_direction_not_array_order():
    # file axis 1 is L-R (slightly oblique), axis 0 runs superior, axis 2 anterior (RAS affine)
    c, s = np.cos(np.radians(10)), np.sin(np.radians(10))
    aff = np.eye(4)
    aff[:3, 0] = [0, 0, 0.8]
    aff[:3, 1] = [3.0 * c, 3.0 * s, 0]
    aff[:3, 2] = [-0.8 * s, 0.8 * c, 0]
    ax = find_sagittal_axes(aff)
    assert (ax.sagittal, ax.superior_inferior, ax.anterior_posterior) == (1, 0, 2)
    assert ax.flip_rows and ax.flip_cols
    assert ax.obliquity_deg == pytest.approx(10, abs=1e-6)


def test_split_by_patient_is_seeded_and_complete():
    patients = [f"p{i}" for i in range(20)]
    a = split_patients(patients, (0.7, 0.15, 0.15), seed=3)
    assert a == split_patients(list(reversed(patients)), (0.7, 0.15, 0.15), seed=3)
    assert a != split_patients(patients, (0.7, 0.15, 0.15), seed=4)
    counts = {k: list(a.values()).count(k) for k in ("training", "validation", "test")}
    assert counts == {"training": 14, "validation": 3, "test": 3}
    small = split_patients(["a", "b", "c"], (0.7, 0.15, 0.15), seed=0)
    assert sorted(small.values()) == ["test", "training", "validation"]
    assert list(split_patients(["a"], (0.7, 0.15, 0.15), 0).values()) == ["training"]


def test_disk_skip_reasons(phantoms):
    lab = phantoms[0].label.astype(np.uint16).copy()
    rows, cols = np.nonzero(lab == 203)
    lab[rows.min() : rows.max() + 1, (cols.min() + cols.max()) // 2] = 0  # split L3/L4 in two
    lab[lab == 204] = 0
    lab[120:123, 60:63] = 204  # a 9-pixel speck
    lab[lab == 205] = 0
    lab[0:6, 100:140] = 205  # touches the top edge
    conv, skip = convert_disks(lab, SPACING, [201, 202, 203, 204, 205, 207], ConvertOptions(), "t")
    reasons = {d["level"]: d["reason"] for d in skip}
    assert {d["level"] for d in conv} >= {"L5/S1", "L4/L5"}
    assert "connected components" in reasons["L3/L4"]
    assert reasons["L2/L3"].startswith("too small")
    assert reasons["L1/L2"].startswith("partial")
    assert reasons["T11/T12"].startswith("not in the mid-sagittal slice")
    conv2, _ = convert_disks(lab, SPACING, [203], ConvertOptions(keep_largest_component=True), "t")
    l34 = [d for d in conv2 if d["level"] == "L3/L4"]
    assert l34 and "largest" in l34[0]["notes"][0]


# ----------------------------------------------------------------------------- SPIDER


def build_spider(root: Path, phantoms) -> None:
    img0, lab0 = stack(phantoms[0])
    img1, lab1 = stack(phantoms[1])
    # patient 1: two series with different axis orders and flipped direction cosines
    write_mha(root / "images/1_t1.mha", img0, (1, 0, 2), (True, False, False))
    write_mha(root / "masks/1_t1.mha", lab0, (1, 0, 2), (True, False, False))
    write_mha(root / "images/1_t2.mha", img0, (2, 1, 0), (False, True, True))
    write_mha(root / "masks/1_t2.mha", lab0, (2, 1, 0), (False, True, True))
    # patient 2: the header's A-P direction is wrong (array reversed along A-P, header not): the canal decides
    write_mha(root / "images/2_t2.mha", img1[:, :, ::-1], (0, 2, 1), (False, False, False))
    write_mha(root / "masks/2_t2.mha", lab1[:, :, ::-1], (0, 2, 1), (False, False, False))
    # ... and a series whose header swaps S-I and A-P (rows and cols of the data transposed)
    write_mha(root / "images/2_t1.mha", img1.transpose(0, 2, 1), (1, 0, 2), (False, True, False))
    write_mha(root / "masks/2_t1.mha", lab1.transpose(0, 2, 1), (1, 0, 2), (False, True, False))
    # patient 3: top disk cut by the field of view
    rows = np.nonzero((lab1 == 205).any(axis=(0, 2)))[0]
    cut = (rows.min() + rows.max()) // 2
    write_mha(root / "images/3_t2.mha", img1[:, cut:], (2, 0, 1), (True, True, False))
    write_mha(root / "masks/3_t2.mha", lab1[:, cut:], (2, 0, 1), (True, True, False))
    # patient 4: corrupt image; patient 5: a mask without disks; patient 6: no mask
    (root / "images/4_t1.mha").write_bytes(b"ObjectType = Image\nNDims = 3\nDimSize = 9 9 9\nElementType = MET_FLOAT\nElementDataFile = LOCAL\n" + b"\0" * 17)
    write_mha(root / "masks/4_t1.mha", lab0, (0, 1, 2), (False, False, False))
    no_disks = np.where(lab0 >= 200, 0, lab0).astype(np.uint16)
    write_mha(root / "images/5_t2.mha", img0, (0, 1, 2), (False, False, False))
    write_mha(root / "masks/5_t2.mha", no_disks, (0, 1, 2), (False, False, False))
    write_mha(root / "images/6_t2.mha", img0, (0, 1, 2), (False, False, False))


def test_spider_conversion(tmp_path, phantoms):
    root, out = tmp_path / "spider", tmp_path / "out"
    build_spider(root, phantoms)
    tasks, unpaired = find_spider_series(root)
    assert [t.subject for t in tasks] == ["1_t1", "1_t2", "2_t1", "2_t2", "3_t2", "4_t1", "5_t2"]
    assert [t.patient for t in tasks] == ["1", "1", "2", "2", "3", "4", "5"]
    assert len(unpaired) == 1 and unpaired[0]["path"].endswith("6_t2.mha")

    report = convert_dataset("spider", root, out, tasks, unpaired, seed=0, progress=False)
    series = {s["subject"]: s for s in report["series"]}
    for name in ("1_t1", "1_t2"):
        assert series[name]["status"] == "converted"
        assert series[name]["slice_index"] == (MID if name == "1_t1" else N_SLICES - 1 - MID)  # 1_t2's L-R axis is reversed
        check_against_phantom(out, name, phantoms[0])
        lab, _ = read_image(out / "labels" / f"{name}.nii.gz")
        np.testing.assert_array_equal(lab, phantoms[0].label)
    assert series["1_t1"]["sagittal_axis"] == 1 and series["1_t2"]["sagittal_axis"] == 2
    # lying header: the canal turns it round, and the report says so
    check_against_phantom(out, "2_t2", phantoms[1], header_cols_reversed=True)
    assert any("columns reversed" in n for n in series["2_t2"]["orientation_notes"])
    check_against_phantom(out, "2_t1", phantoms[1], check_affine=False)
    assert any("S-I and A-P axes swapped" in n for n in series["2_t1"]["orientation_notes"])
    assert any("confirmed by the canal" in n for n in series["1_t2"]["orientation_notes"])
    # field-of-view cut: L1/L2 skipped as partial, the others converted
    s3 = series["3_t2"]
    assert s3["status"] == "converted"
    assert {d["level"]: d["reason"] for d in s3["disks_skipped"]}["L1/L2"].startswith("partial")
    assert {"L5/S1", "L4/L5", "L3/L4", "L2/L3"} <= {d["level"] for d in s3["disks_converted"]}
    # corrupt file and a mask without disks: reported by name, nothing written
    assert series["4_t1"]["status"] == "failed" and "4_t1.mha" in series["4_t1"]["error"]
    assert series["5_t2"]["status"] == "skipped" and "no disk labels" in series["5_t2"]["reason"]
    assert not (out / "images/4_t1.nii.gz").exists() and not (out / "images/5_t2.nii.gz").exists()

    summary = report["summary"]
    assert (summary["series_converted"], summary["series_skipped"], summary["series_failed"], summary["files_unpaired"]) == (5, 1, 1, 1)
    # the split is by patient: both series of patient 1 together; every converted series in the datalist
    dl = json.loads((out / "datalist.json").read_text())
    split_of = {e["subject"]: name for name, entries in dl.items() for e in entries}
    assert set(split_of) == {"1_t1", "1_t2", "2_t1", "2_t2", "3_t2"}
    assert split_of["1_t1"] == split_of["1_t2"] and split_of["2_t1"] == split_of["2_t2"]
    # the bundles' data path reads the converted folder unchanged
    entries = [e for name in ("training", "validation", "test") for e in load_datalist(out / "datalist.json", name)]
    bank = build_patch_bank(entries, patch_size=64, patch_spacing_mm=1.0, progress=False)
    assert len(bank) == sum(len(series[e["subject"]]["disks_converted"]) for e in entries)
    assert bank.images.shape[1:] == (1, 64, 64) and np.isfinite(bank.points).all()
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["summary"] == summary and on_disk["seed"] == 0
    md = (out / "report.md").read_text()
    for needle in ("4_t1", "failed", "no disk labels", "6_t2.mha", "partial: cut by the edge"):
        assert needle in md


# ----------------------------------------------------------------------------- MRSpineSeg


def to_mrspineseg(lab: np.ndarray) -> np.ndarray:
    """SPIDER labels -> MRSpineSeg values (vertebra k and partial 100 + k -> k + 1, disk 200 + k -> 10 + k, no canal)."""
    out = np.zeros_like(lab)
    vert = (lab >= 1) & (lab <= 9)
    out[vert] = lab[vert] + 1
    partial = (lab >= 101) & (lab <= 109)
    out[partial] = lab[partial] - 99
    disk = (lab >= 201) & (lab <= 209)
    out[disk] = lab[disk] - 190
    return out


def test_mrspineseg_conversion(tmp_path, phantoms):
    root, out = tmp_path / "MRSpineSeg", tmp_path / "out"
    img, lab = stack(phantoms[0])
    order, flips = (2, 0, 1), (False, True, False)
    write_nifti(root / "train/MR/Case3.nii.gz", img, order, flips)
    write_nifti(root / "train/Mask/mask_case3.nii.gz", to_mrspineseg(lab), order, flips)
    # Case4: the header's A-P direction is wrong; the vertebrae's posterior elements correct it
    img1, lab1 = stack(phantoms[1])
    write_nifti(root / "train/MR/Case4.nii.gz", img1[:, :, ::-1], order, flips)
    write_nifti(root / "train/Mask/mask_case4.nii.gz", to_mrspineseg(lab1)[:, :, ::-1], order, flips)
    write_nifti(root / "train/Mask/mask_case9.nii.gz", to_mrspineseg(lab), order, flips)  # no image

    tasks, unpaired = find_mrspineseg_series(root)
    assert [t.subject for t in tasks] == ["Case3", "Case4"]
    assert [Path(u["path"]).name for u in unpaired] == ["mask_case9.nii.gz"]
    report = convert_dataset("mrspineseg", root, out, tasks, unpaired, seed=1, progress=False)
    series = {s["subject"]: s for s in report["series"]}
    assert series["Case3"]["status"] == "converted" and series["Case3"]["slice_index"] == N_SLICES - 1 - MID  # L-R reversed
    assert "no canal label" in series["Case3"]["orientation_notes"][0]
    check_against_phantom(out, "Case3", phantoms[0])
    lab_out, _ = read_image(out / "labels/Case3.nii.gz")
    expect = np.where(phantoms[0].label == 100, 0, phantoms[0].label)  # MRSpineSeg has no canal ...
    expect = np.where((expect > 100) & (expect < 200), expect - 100, expect)  # ... nor partial vertebrae
    np.testing.assert_array_equal(lab_out, expect)
    check_against_phantom(out, "Case4", phantoms[1], header_cols_reversed=True)
    assert any("columns reversed" in n and "posterior elements" in n for n in series["Case4"]["orientation_notes"])


# ----------------------------------------------------------------------------- generic


def test_generic_dicom_series_with_mask_via_cli(tmp_path, phantoms):
    root, out = tmp_path / "gen", tmp_path / "out"
    img, lab = stack(phantoms[0], canal_value=7)
    custom = lab.copy()
    for k in range(1, 7):
        custom[lab == 200 + k] = 50 + k
    # a typical sagittal DICOM: file axis 0 -> posterior, 1 -> inferior, 2 -> slices along L-R (reversed)
    order, flips = (2, 1, 0), (False, False, True)
    write_dicom_series(root / "dicom/subjA", (img * 1000).astype(np.int16), order, flips)
    write_mha(root / "seg/subjA_seg.mha", custom, order, flips)
    write_mha(root / "seg/subjB_seg.mha", custom, order, flips)  # no image
    rc = cli_main(
        [
            "convert", "generic", "--root", str(root), "--out", str(out), "--no-progress",
            "--image-pattern", "dicom/{subject}", "--mask-pattern", "seg/{subject}_seg.mha",
            "--disk-labels", "L5/S1=51,L4/L5=52,L3/L4=53,L2/L3=54,L1/L2=55,T12/L1=56", "--canal-label", "7",
            "--vertebra-labels", "L5=1,L4=2,L3=3,L2=4,L1=5",
        ]
    )
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    (s,) = report["series"]
    # GDCM sorts the slices along the normal of the row/column cosines, undoing the reversal the
    # .mha mask keeps: the mask is re-indexed onto the DICOM grid
    assert s["status"] == "converted" and s["slice_index"] == MID
    assert any("re-indexed onto the image grid" in n for n in s["orientation_notes"])
    assert any("confirmed by the canal" in n for n in s["orientation_notes"])
    assert [Path(u["path"]).name for u in report["unpaired"]] == ["subjB_seg.mha"]
    check_against_phantom(out, "subjA", phantoms[0], check_image=False)
    im_out, _ = read_image(out / "images/subjA.nii.gz")
    np.testing.assert_allclose(im_out, (phantoms[0].image * 1000).astype(np.int16), atol=0.5)
    # values not named on the command line become background and are listed in the report
    lab_out, _ = read_image(out / "labels/subjA.nii.gz")
    named = np.isin(phantoms[0].label, [1, 2, 3, 4, 5, 100, *range(201, 207)])
    np.testing.assert_array_equal(lab_out, np.where(named, phantoms[0].label, 0))
    assert set(s["ignored_labels"]) == set(np.unique(custom[~np.isin(custom, [0, 1, 2, 3, 4, 5, 7, *range(51, 57)])]).tolist())


def test_generic_world_contours(tmp_path, phantoms):
    root, out = tmp_path / "gen", tmp_path / "out"
    img, _ = stack(phantoms[1])
    order, flips = (1, 2, 0), (True, False, False)
    write_nifti(root / "img/s1.nii.gz", img, order, flips)
    disks = []
    for gt in phantoms[1].disks:
        x, y = gt["points_px"][:, 0], gt["points_px"][:, 1]
        lps = ORIGIN_PROJECT_LPS + MID * THICK * LPS_OF_PROJECT[0]
        pts = lps + np.outer(y * SPACING[0], LPS_OF_PROJECT[1]) + np.outer(x * SPACING[1], LPS_OF_PROJECT[2])
        disks.append({"level": gt["level"], "points": pts[::-1].tolist()})  # reversed order, any start works
    (root / "ctr").mkdir(parents=True)
    (root / "ctr/s1.json").write_text(json.dumps({"space": "LPS", "disks": disks}))
    tasks, unpaired = find_generic_series(root, "img/{subject}.nii.gz", contour_pattern="ctr/{subject}.json")
    assert not unpaired
    report = convert_dataset("generic", root, out, tasks, unpaired, progress=False)
    assert report["series"][0]["status"] == "converted"
    check_against_phantom(out, "s1", phantoms[1])


def test_cli_exit_code_when_nothing_converts(tmp_path, phantoms):
    root, out = tmp_path / "spider", tmp_path / "out"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "images/7_t2.mha").write_bytes(b"not an image")
    (root / "masks/7_t2.mha").write_bytes(b"not an image either")
    assert cli_main(["convert", "spider", "--root", str(root), "--out", str(out), "--no-progress"]) == 1
    report = json.loads((out / "report.json").read_text())
    assert report["series"][0]["status"] == "failed" and "7_t2.mha" in report["series"][0]["error"]
    assert cli_main(["convert", "spider", "--root", str(tmp_path / "nowhere"), "--out", str(out)]) == 2


def test_mask_grid_reindexed_or_reported(tmp_path, phantoms):
    root = tmp_path / "spider"  # the output folder must lie outside the input
    img, lab = stack(phantoms[0])
    write_mha(root / "images/8_t2.mha", img, (0, 1, 2), (False, False, False))
    # same physical grid stored mirrored and transposed: re-indexed onto the image grid
    write_mha(root / "masks/8_t2.mha", lab, (0, 2, 1), (True, False, True))
    # a grid shifted by 3 mm: a real mismatch
    write_mha(root / "images/9_t2.mha", img, (0, 1, 2), (False, False, False))
    write_mha(root / "masks/9_t2.mha", lab, (0, 1, 2), (False, False, False), origin_shift=(0, 3.0, 0))
    tasks, _ = find_spider_series(root)
    reps = {r["subject"]: r for r in convert_dataset("spider", root, tmp_path / "out", tasks, progress=False)["series"]}
    assert reps["8_t2"]["status"] == "converted"
    assert any("re-indexed onto the image grid" in n for n in reps["8_t2"]["orientation_notes"])
    check_against_phantom(tmp_path / "out", "8_t2", phantoms[0])
    assert reps["9_t2"]["status"] == "failed"
    assert "geometry differs" in reps["9_t2"]["error"] and "9_t2.mha" in reps["9_t2"]["error"]


# ----------------------------------------------------------------------------- refusals (issue 12)


def _last_lines(capsys, n: int = 3) -> str:
    cap = capsys.readouterr()
    return "\n".join((cap.out + cap.err).strip().splitlines()[-n:])


def test_convert_refuses_output_folder_in_or_around_input(tmp_path, phantoms, capsys):
    img, lab = stack(phantoms[0])
    root = tmp_path / "gen"
    write_nifti(root / "img/s1.nii.gz", img, (0, 1, 2), (False, False, False))
    write_nifti(root / "seg/s1.nii.gz", lab, (0, 1, 2), (False, False, False))
    (root / "MR").mkdir()  # also looks like an MRSpineSeg folder, and ...
    (root / "images").mkdir()  # ... a SPIDER one, so each converter gets past its folder check
    (root / "link").symlink_to(root, target_is_directory=True)
    before = {p: p.read_bytes() for p in root.rglob("*.nii.gz")}
    generic = ["--image-pattern", "img/{subject}.nii.gz", "--mask-pattern", "seg/{subject}.nii.gz", "--disk-labels", "201,202,203,204,205"]
    cases = [
        ("generic", root, root, "is the input folder"),
        ("generic", root, root / "link", "is the input folder"),  # the same folder through a symlink
        ("generic", root, root / "img" / "out", "lies inside the input folder"),
        ("generic", root / "img", root, "contains the input folder"),
        ("spider", root, root, "is the input folder"),
        ("mrspineseg", root, root / "converted", "lies inside the input folder"),
    ]
    for dataset, src, out, how in cases:
        argv = ["convert", dataset, "--root", str(src), "--out", str(out), "--no-progress"]
        rc = cli_main(argv + (generic if dataset == "generic" else []))
        tail = _last_lines(capsys)
        assert rc == 2, (dataset, out)
        assert how in tail and str(src) in tail and str(out) in tail, tail
    assert not (root / "img/out").exists() and not (root / "converted").exists()
    assert not (root / "datalist.json").exists() and not (root / "report.json").exists()
    assert not any((root / "images").iterdir())
    assert {p: p.read_bytes() for p in root.rglob("*.nii.gz") if "link" not in p.parts} == before
    with pytest.raises(DataError, match="is the input folder"):  # the library call refuses too
        convert_dataset("generic", root, root / "link", [], progress=False)
    # a sibling output folder is fine
    assert cli_main(["convert", "generic", "--root", str(root), "--out", str(tmp_path / "out"), "--no-progress", *generic]) == 0


def test_2d_image_is_reported_as_2d(tmp_path, phantoms, capsys):
    sub = phantoms[0]
    # MRSpineSeg with a 2D NIfTI and a plain affine
    root = tmp_path / "MRSpineSeg"
    (root / "train/MR").mkdir(parents=True)
    (root / "train/Mask").mkdir(parents=True)
    nib.save(nib.Nifti1Image(sub.image.astype(np.float32), np.eye(4)), str(root / "train/MR/Case5.nii.gz"))
    nib.save(nib.Nifti1Image(to_mrspineseg(sub.label[None])[0].astype(np.uint16), np.eye(4)), str(root / "train/Mask/mask_case5.nii.gz"))
    rc = cli_main(["convert", "mrspineseg", "--root", str(root), "--out", str(tmp_path / "out_m"), "--no-progress"])
    assert rc == 1
    printed = capsys.readouterr().err
    msg = f"a 2D image (shape {SHAPE}), the mrspineseg converter needs a 3D sagittal series"
    assert f"Case5.nii.gz: {msg}" in printed, printed
    rep = json.loads((tmp_path / "out_m/report.json").read_text())["series"][0]
    assert rep["status"] == "failed" and msg in rep["error"]
    # SPIDER: a single-slice .mha
    spider = tmp_path / "spider"
    write_mha(spider / "images/3_t2.mha", sub.image[None], (0, 1, 2), (False, False, False))
    write_mha(spider / "masks/3_t2.mha", sub.label[None], (0, 1, 2), (False, False, False))
    tasks, _ = find_spider_series(spider)
    rep = convert_dataset("spider", spider, tmp_path / "out_s", tasks, progress=False)["series"][0]
    assert rep["status"] == "failed" and "the spider converter needs a 3D sagittal series" in rep["error"], rep
    # generic: one sagittal slice is accepted, a 2D file whose plane is not sagittal is refused as such
    gen = tmp_path / "gen"
    write_nifti(gen / "img/sag.nii.gz", stack(sub)[0][MID : MID + 1], (0, 1, 2), (False, False, False))
    write_nifti(gen / "seg/sag.nii.gz", stack(sub)[1][MID : MID + 1], (0, 1, 2), (False, False, False))
    (gen / "img").mkdir(exist_ok=True)
    nib.save(nib.Nifti1Image(sub.image.astype(np.float32), np.eye(4)), str(gen / "img/ax.nii.gz"))
    nib.save(nib.Nifti1Image(sub.label.astype(np.uint16), np.eye(4)), str(gen / "seg/ax.nii.gz"))
    tasks, _ = find_generic_series(gen, "img/{subject}.nii.gz", "seg/{subject}.nii.gz", None, build_label_map("201,202,203,204,205", 100, None))
    reps = {r["subject"]: r for r in convert_dataset("generic", gen, tmp_path / "out_g", tasks, progress=False)["series"]}
    assert reps["sag"]["status"] == "converted", reps["sag"]
    assert reps["ax"]["status"] == "failed" and "a 2D image" in reps["ax"]["error"] and "not a sagittal slice" in reps["ax"]["error"]


def test_contour_point_order_is_checked_when_read(tmp_path, phantoms):
    from diskrobust.data.contours import point_order_problem
    from diskrobust.data.dataset_io import write_contours_json
    from diskrobust.data.phantom import PREVALENCE_DEFAULTS, subject_contours

    # every phantom contour follows the convention, pathological ones and tilted columns included
    cfg = PhantomConfig(prevalence={k: 1.0 for k in PREVALENCE_DEFAULTS}, max_rotation_deg=20.0)
    for seed in range(6):
        for d in subject_contours(seed, cfg)[0]:
            assert point_order_problem(d["points_px"]) is None, (seed, d["level"])
    sub = phantoms[0]
    good = [{**d, "points_px": np.asarray(d["points_px"])} for d in sub.disks]
    ok = write_contours_json(tmp_path / "ok.json", "s", SHAPE, SPACING, good)
    assert len(read_contours_json(ok, SHAPE)["disks"]) == len(good)
    for name, change, match in [
        ("reversed", lambda p: p[::-1], "clockwise"),
        ("reversed_same_start", lambda p: np.roll(p[::-1], 1, axis=0), "clockwise"),
        ("starts_inferior", lambda p: np.roll(p, -44, axis=0), "not the anterior-superior corner"),
        ("starts_posterior", lambda p: np.roll(p, -132, axis=0), "not the anterior-superior corner"),
    ]:
        disks = [dict(d) for d in good]
        disks[1] = {**disks[1], "points_px": change(disks[1]["points_px"])}
        path = write_contours_json(tmp_path / f"{name}.json", "s", SHAPE, SPACING, disks)
        with pytest.raises(DataError, match=match) as err:
            read_contours_json(path)
        assert f"{name}.json" in str(err.value) and "disk 1" in str(err.value)

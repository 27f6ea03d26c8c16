"""The lumbar MR phantom: population anatomy, pathologies, contour order, labels, contrast, noise, files, CLI, stats."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from skimage.draw import polygon as fill_polygon

from diskrobust.data.dataset_io import load_datalist, read_contours_json, read_image
from diskrobust.data.errors import DataError
from diskrobust.data.phantom import (
    DISK_LEVELS,
    PREVALENCE_DEFAULTS,
    PUBLISHED_DISK_GEOMETRY,
    PhantomConfig,
    sample_anatomy,
    subject_contours,
    ensure_phantom,
    generate_subject,
    render_subject_png,
    subject_seeds,
    write_phantom_dataset,
)

SMALL = PhantomConfig(shape=(256, 256), spacing_mm=(1.2, 1.2))


@pytest.fixture(scope="module")
def subjects_small():
    return [generate_subject(s, SMALL) for s in range(6)]


@pytest.fixture(scope="module")
def subject_full():
    return generate_subject(3)  # default 512 x 512 at 0.6 mm


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _disk_measures(p: np.ndarray) -> dict[str, float]:
    """Heights and length (mm) from a 176-point contour, as the paper measures them."""
    return {
        "anterior": float(np.linalg.norm(p[0] - p[44])),
        "posterior": float(np.linalg.norm(p[88] - p[132])),
        "middle": float(np.linalg.norm(p[66] - p[154])),  # mid-points of the two endplates
        "length": float(np.linalg.norm((p[0] + p[44]) / 2 - (p[88] + p[132]) / 2)),
    }


def _fill(points: np.ndarray, shape) -> np.ndarray:
    m = np.zeros(shape, bool)
    rr, cc = fill_polygon(points[:, 1], points[:, 0], shape)
    m[rr, cc] = True
    return m


# ------------------------------------------------------------------------------------------ config and API


def test_config_validation_messages():
    with pytest.raises(ValueError, match="weighting"):
        PhantomConfig(weighting="pd")
    with pytest.raises(ValueError, match="field of view"):
        PhantomConfig(shape=(256, 256), spacing_mm=(0.6, 0.6))
    with pytest.raises(ValueError, match="spacing_mm must be positive"):
        PhantomConfig(spacing_mm=(0.6, -1))
    with pytest.raises(ValueError, match="shape must have two values"):
        PhantomConfig(shape=(512,))
    with pytest.raises(ValueError, match="noise_sigma"):
        PhantomConfig(noise_sigma=(0.05, 0.01))
    with pytest.raises(ValueError, match="unknown PhantomConfig fields"):
        PhantomConfig.from_dict({"shape": [512, 512], "colour": "red"})
    assert PhantomConfig.from_dict(PhantomConfig(weighting="T1").to_dict()) == PhantomConfig(weighting="t1")
    with pytest.raises(ValueError, match="seed"):
        generate_subject(-1, SMALL)


def test_subject_layout(subject_full):
    s = subject_full
    assert s.image.shape == (512, 512) and s.image.dtype == np.float32 and np.isfinite(s.image).all()
    assert s.label.shape == (512, 512) and s.label.dtype == np.uint16
    assert s.spacing_mm == (0.6, 0.6) and s.affine.shape == (4, 4)
    assert [d["level"] for d in s.disks] == list(DISK_LEVELS)
    assert [d["label"] for d in s.disks] == [201, 202, 203, 204, 205]
    for d in s.disks:
        assert d["points_px"].shape == (176, 2)
        np.testing.assert_allclose(d["points_mm"], d["points_px"] * 0.6)
    json.dumps(s.params)  # JSON-serialisable
    assert {"sacral_slope_deg", "rotation_deg", "disks", "vertebrae", "noise_sigma"} <= set(s.params)


# ------------------------------------------------------------------------------------------ determinism


def test_same_seed_same_arrays_different_seed_different():
    a, b, c = generate_subject(11, SMALL), generate_subject(11, SMALL), generate_subject(12, SMALL)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.label, b.label)
    for da, db in zip(a.disks, b.disks):
        np.testing.assert_array_equal(da["points_px"], db["points_px"])
    assert a.params == b.params
    assert not np.array_equal(a.image, c.image)
    assert not np.allclose(a.disks[0]["points_px"], c.disks[0]["points_px"])


def test_subject_seeds_do_not_depend_on_the_count():
    assert subject_seeds(5, 3) == subject_seeds(5, 7)[:3]
    assert len(set(subject_seeds(5, 50))) == 50
    assert subject_seeds(5, 3) != subject_seeds(6, 3)


def test_dataset_files_are_byte_identical_for_the_same_seed(tmp_path):
    cfg = SMALL
    a = write_phantom_dataset(tmp_path / "a", subjects=2, seed=7, config=cfg, progress=False, workers=2).parent
    b = write_phantom_dataset(tmp_path / "b", subjects=2, seed=7, config=cfg, progress=False, workers=1).parent
    c = write_phantom_dataset(tmp_path / "c", subjects=1, seed=8, config=cfg, progress=False, workers=1).parent
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files) == 2 * 3 + 2
    assert sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file()) == files
    for rel in files:
        assert _sha(a / rel) == _sha(b / rel), f"{rel} differs between two runs with the same seed"
    assert _sha(a / "images/sub-0000.nii.gz") != _sha(c / "images/sub-0000.nii.gz")


# ------------------------------------------------------------------------------------------ anatomy


_SHAPE_FINDINGS = {"protrusion", "extrusion", "migration", "schmorl", "irregular_endplate", "spondylolisthesis"}


def test_params_match_the_contours(subjects_small):
    n = 0
    for s in subjects_small:
        for d, p in zip(s.disks, s.params["disks"]):
            if _SHAPE_FINDINGS & set(p["findings"]):
                continue
            m = _disk_measures(d["points_mm"])
            n += 1
            assert m["anterior"] == pytest.approx(p["height_anterior_mm"], abs=0.02)
            assert m["posterior"] == pytest.approx(p["height_posterior_mm"], abs=0.02)
            assert m["length"] == pytest.approx(p["length_mm"], abs=0.02)
            assert m["middle"] == pytest.approx(p["height_middle_mm"], abs=0.3)
    assert n >= 10


def test_column_is_lordotic_and_ordered(subjects_small):
    for s in subjects_small:
        centres = np.array([d["points_px"].mean(0) for d in s.disks])
        assert np.all(np.diff(centres[:, 1]) < 0), "disks from the bottom must go up the image"
        # endplate angles: L5/S1 tilts (posterior higher) more than L1/L2: the lordotic curve
        angle = [np.degrees(np.arctan2(-(p[88] - p[44])[1], (p[88] - p[44])[0])) for p in (d["points_px"] for d in s.disks)]
        assert angle[0] > angle[4] + 5.0
        assert angle[0] > 5.0  # the sacral endplate rises posteriorly
        assert 10.0 < s.params["lordosis_deg"] < 80.0


# ------------------------------------------------------------------------------------------ contour order


def test_contour_point_order(subjects_small, subject_full):
    for s in subjects_small + [subject_full]:
        for d, params in zip(s.disks, s.params["disks"]):
            p = d["points_px"]
            anterior, inferior, posterior, superior = (p[i * 44 : (i + 1) * 44] for i in range(4))
            assert anterior[:, 0].mean() < posterior[:, 0].mean()  # anterior is on the left
            assert superior[:, 1].mean() < inferior[:, 1].mean()  # superior is at the top
            # point 0 is the anterior-superior corner: left of the posterior corners, above the inferior ones
            assert p[0, 0] < min(p[88, 0], p[132, 0]) and p[0, 1] < p[44, 1]
            assert p[44, 0] < p[88, 0] and p[132, 1] < p[88, 1]
            # the four corners are where the outline turns most
            v_in, v_out = p - np.roll(p, 1, axis=0), np.roll(p, -1, axis=0) - p
            cross = v_in[:, 0] * v_out[:, 1] - v_in[:, 1] * v_out[:, 0]
            turn = np.degrees(np.abs(np.arctan2(cross, (v_in * v_out).sum(1))))
            assert turn[[0, 44, 88, 132]].min() > 15.0, d["level"]
            if not (_SHAPE_FINDINGS | {"collapse", "bulge"}) & set(params["findings"]):  # a herniation's tip may turn as sharply as a corner
                assert set(np.argsort(turn)[-4:]) == {0, 44, 88, 132}, d["level"]
            # each side equally spaced by arc length
            for k in range(4):
                side = np.concatenate([p[k * 44 : (k + 1) * 44], p[[((k + 1) * 44) % 176]]])
                step = np.linalg.norm(np.diff(side, axis=0), axis=1)
                assert step.std() / step.mean() < 0.05
            # same orientation for every disk (anterior down, inferior to the back, posterior up)
            area = 0.5 * np.sum(p[:, 0] * np.roll(p[:, 1], -1) - np.roll(p[:, 0], -1) * p[:, 1])
            assert area < 0


# ------------------------------------------------------------------------------------------ labels


@pytest.mark.parametrize("which", ["small", "full"])
def test_labels_and_contour_agree(which, subjects_small, subject_full):
    subjects = subjects_small[:3] if which == "small" else [subject_full]
    for s in subjects:
        present = set(np.unique(s.label).tolist())
        assert {1, 2, 3, 4, 5, 100, 201, 202, 203, 204, 205} <= present
        for d in s.disks:
            fill = _fill(d["points_px"], s.label.shape)
            mask = s.label == d["label"]
            dice = 2 * (fill & mask).sum() / (fill.sum() + mask.sum())
            assert dice >= 0.97, (d["level"], dice)
        # vertebrae from the bottom: L5 (1) lies below L1 (5), each between its disks
        rows = {k: np.nonzero(s.label == k)[0].mean() for k in (1, 5, 201, 202, 205)}
        assert rows[201] > rows[1] > rows[202] and rows[5] > rows[205] or rows[5] < rows[205]
        assert rows[1] > rows[5]
        # the canal lies posterior (right) of the disks
        assert np.nonzero(s.label == 100)[1].mean() > np.nonzero(s.label == 203)[1].mean()


# ------------------------------------------------------------------------------------------ contrast


def _csf_and_marrow(s) -> tuple[float, float]:
    """Median signal of CSF (canal between the L4/L5 and L2/L3 disks: below the conus) and of vertebral marrow."""
    from scipy import ndimage

    marrow = ndimage.binary_erosion(np.isin(s.label, [1, 2, 3, 4, 5]), iterations=3)
    canal = ndimage.binary_erosion(s.label == 100, iterations=1)
    rows = np.arange(s.label.shape[0])[:, None]
    canal &= (rows < s.disks[1]["points_px"][:, 1].mean()) & (rows > s.disks[3]["points_px"][:, 1].mean())
    return float(np.median(s.image[canal])), float(np.median(s.image[marrow]))


def _nucleus_and_annulus(image: np.ndarray, pts: np.ndarray) -> tuple[float, float]:
    """Mean signal of the disk's core (outline shrunk to 25 %) and of its outer ring (outside 80 %)."""
    c = pts.mean(0)
    core = _fill(c + 0.25 * (pts - c), image.shape)
    rim = _fill(pts, image.shape) & ~_fill(c + 0.8 * (pts - c), image.shape)
    return float(image[core].mean()), float(image[rim].mean())


def test_t2_and_t1_contrast(subjects_small):
    for seed in (0, 1, 2):
        t2 = subjects_small[seed]
        t1 = generate_subject(seed, PhantomConfig(shape=(256, 256), spacing_mm=(1.2, 1.2), weighting="t1"))
        # the anatomy is the same for both weightings
        np.testing.assert_array_equal(t1.label, t2.label)
        csf2, marrow2 = _csf_and_marrow(t2)
        csf1, marrow1 = _csf_and_marrow(t1)
        assert csf2 > 1.2 * marrow2, "CSF must be brighter than marrow on T2"
        assert csf1 < 0.6 * marrow1, "CSF must be darker than marrow on T1"
        assert 0.6 < csf2 < 1.5  # raw signal, CSF ~ 1
        for d, p in zip(t2.disks, t2.params["disks"]):
            if p["grade"] <= 2:
                nuc, ann = _nucleus_and_annulus(t2.image, d["points_px"])
                assert nuc > 1.5 * ann, f"seed {seed} {d['level']}: a healthy nucleus must be brighter than the annulus on T2"


def test_degenerated_nucleus_is_darker_on_t2(subjects_small):
    from diskrobust.data.phantom import NUCLEUS_T2_BY_GRADE

    assert NUCLEUS_T2_BY_GRADE[1] > NUCLEUS_T2_BY_GRADE[2] > NUCLEUS_T2_BY_GRADE[3] > NUCLEUS_T2_BY_GRADE[4]
    grades, ratio = [], []
    for s in subjects_small:
        for d, p in zip(s.disks, s.params["disks"]):
            nuc, ann = _nucleus_and_annulus(s.image, d["points_px"])
            grades.append(p["grade"])
            ratio.append(nuc / ann)
    grades, ratio = np.array(grades), np.array(ratio)
    assert {1, 2} <= set(grades.tolist()) and (grades >= 3).any()
    assert ratio[grades <= 2].mean() > ratio[grades >= 3].mean() + 0.3


# ------------------------------------------------------------------------------------------ files and CLI


def test_tiny_phantom_dataset_reads_back(tiny_phantom):
    datalist = tiny_phantom / "datalist.json"
    counts = {k: len(v) for k, v in json.loads(datalist.read_text()).items()}
    assert counts == {"training": 4, "validation": 1, "test": 1}
    meta_doc = json.loads((tiny_phantom / "phantom.json").read_text())
    assert meta_doc["seed"] == 0 and meta_doc["config"]["shape"] == [256, 256]
    entry = load_datalist(datalist, "validation")[0]
    img, meta = read_image(entry["image"])
    lab, _ = read_image(entry["label"])
    assert img.shape == (256, 256) and meta["spacing_mm"] == (1.2, 1.2)
    # the contract's affine: row -> -S, col -> -A, slice -> +R
    aff = meta["affine"]
    assert aff[2, 0] == pytest.approx(-1.2) and aff[1, 1] == pytest.approx(-1.2) and aff[0, 2] > 0
    contours = read_contours_json(entry["contours"], img.shape)
    assert [d["label"] for d in contours["disks"]] == [201, 202, 203, 204, 205]
    # what is on disk is what generate_subject makes for the subject's seed
    seed = next(r["seed"] for r in meta_doc["subject_params"] if r["subject"] == entry["subject"])
    s = generate_subject(seed, SMALL)
    np.testing.assert_array_equal(img, s.image)
    np.testing.assert_array_equal(lab, s.label.astype(np.float32))
    np.testing.assert_allclose(contours["disks"][2]["points_px"], s.disks[2]["points_px"], atol=1e-3)
    np.testing.assert_allclose(aff, s.affine, atol=1e-5)


def test_ensure_phantom(tmp_path, tiny_phantom, caplog):
    # an existing dataset is returned as is (with a warning when it was made with other settings)
    before = _sha(tiny_phantom / "datalist.json")
    with caplog.at_level("WARNING", logger="diskrobust.data.phantom"):
        assert ensure_phantom(tiny_phantom, subjects=6, seed=0, config=SMALL) == tiny_phantom / "datalist.json"
        assert not caplog.records
        assert ensure_phantom(tiny_phantom, subjects=2, seed=0, config=SMALL) == tiny_phantom / "datalist.json"
        assert "subjects differ" in caplog.text
    assert _sha(tiny_phantom / "datalist.json") == before
    # a missing folder is generated
    dl = ensure_phantom(tmp_path / "new", subjects=1, seed=1, config=SMALL, progress=False)
    assert dl.is_file() and len(list((tmp_path / "new" / "images").iterdir())) == 1
    # an empty folder is generated into
    (tmp_path / "empty").mkdir()
    assert ensure_phantom(tmp_path / "empty", subjects=1, seed=1, config=SMALL, progress=False).is_file()
    # a folder with other content is not touched
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty") as err:
        ensure_phantom(other, subjects=1, seed=1, config=SMALL)
    assert str(other) in str(err.value)
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]


def test_write_phantom_dataset_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="split"):
        write_phantom_dataset(tmp_path / "x", 3, 0, SMALL, split=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="subjects"):
        write_phantom_dataset(tmp_path / "x", 0, 0, SMALL)


def test_cli_end_to_end(tmp_path, capsys):
    from diskrobust.cli import main

    out = tmp_path / "cli"
    rc = main(["phantom", "--out", str(out), "--subjects", "3", "--seed", "4", "--weighting", "t1", "--shape", "256", "256", "--spacing", "1.2", "--no-progress", "--workers", "1"])
    assert rc == 0
    assert "wrote 3 subjects" in capsys.readouterr().out
    doc = json.loads((out / "phantom.json").read_text())
    assert doc["config"]["weighting"] == "t1" and doc["seed"] == 4 and doc["subjects"] == 3
    entries = load_datalist(out / "datalist.json", "training")
    img, meta = read_image(entries[0]["image"])
    assert img.shape == (256, 256) and meta["spacing_mm"] == (1.2, 1.2)
    # same output as the library call
    ref = write_phantom_dataset(tmp_path / "lib", 3, 4, PhantomConfig(shape=(256, 256), spacing_mm=(1.2, 1.2), weighting="t1"), progress=False, workers=1)
    assert _sha(ref.parent / "images/sub-0002.nii.gz") == _sha(out / "images/sub-0002.nii.gz")
    # refuses a non-empty folder and bad sizes, with a message
    assert main(["phantom", "--out", str(out), "--subjects", "1"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["phantom", "--out", str(tmp_path / "y"), "--shape", "100", "100"]) == 2
    assert "field of view" in capsys.readouterr().err
    assert main(["phantom", "--out", str(tmp_path / "y"), "--prevalence", "hernia=0.5"]) == 2
    assert "unknown pathologies ['hernia']" in capsys.readouterr().err
    assert main(["phantom", "--out", str(tmp_path / "y"), "--prevalence", "migration"]) == 2
    assert "NAME=PROBABILITY" in capsys.readouterr().err


def test_render_subject_png(tmp_path, subjects_small):
    path = render_subject_png(subjects_small[0], tmp_path / "look.png", title="seed 0")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


# ------------------------------------------------------------------------------------------ population anatomy

_MEAS = {"length": "length_mm", "anterior": "height_anterior_mm", "middle": "height_middle_mm", "posterior": "height_posterior_mm"}


def _anatomies(n: int, cfg: PhantomConfig, start: int = 0) -> list[dict]:
    return [sample_anatomy(np.random.default_rng(s), cfg) for s in range(start, start + n)]


def test_reference_population_follows_the_published_table():
    """Healthy reference subjects (no lower-height population, grades I-II, no pathology): per-level mean
    and SD of every dimension match the published ones (300 subjects: mean within 4 standard errors,
    SD within 20 %)."""
    an = _anatomies(300, PhantomConfig.healthy())
    for i, level in enumerate(DISK_LEVELS):
        for k, key in _MEAS.items():
            v = np.array([a["disks"][i][key] for a in an])
            mean, sd = PUBLISHED_DISK_GEOMETRY[level][k]
            # the grade factor (I: +3-6 %, II: +-2 %) shifts the mean a little; the middle height is kept
            # between 0.7 and 1 x of the mean of the other two plus 6 mm
            tol = 4 * sd / np.sqrt(len(v)) + 0.03 * mean
            assert abs(v.mean() - mean) < tol, (level, k, v.mean(), mean)
            assert 0.8 * sd < v.std() < 1.2 * sd, (level, k, v.std(), sd)


def test_default_population_reaches_lower_heights_and_correlates():
    an = _anatomies(300, PhantomConfig())
    low = [a for a in an if a["population"] == "lower_heights"]
    assert 0.2 < len(low) / len(an) < 0.4
    ant = {lv: np.array([a["disks"][i]["height_anterior_mm"] for a in an]) for i, lv in enumerate(DISK_LEVELS)}
    # the Brazilian / Nepalese heights are inside the population (not below its 5th percentile)
    assert np.percentile(ant["L3/L4"], 5) < 9.3 and np.percentile(ant["L4/L5"], 5) < 10.9 and np.percentile(ant["L1/L2"], 5) < 7.5
    # heights fall with the grade; grade V collapses
    grade = np.array([d["grade"] for a in an for d in a["disks"][:5]])
    ha = np.array([d["height_anterior_mm"] / PUBLISHED_DISK_GEOMETRY[d_lv]["anterior"][0] for a in an for d, d_lv in zip(a["disks"][:5], DISK_LEVELS)])
    assert set(grade.tolist()) == {1, 2, 3, 4, 5}
    assert ha[grade <= 2].mean() > ha[grade == 3].mean() > ha[grade == 4].mean() > ha[grade == 5].mean() + 0.2
    # lower disks are taller in front and higher than the upper ones (per level means)
    assert ant["L4/L5"].mean() > ant["L3/L4"].mean() > ant["L2/L3"].mean() > ant["L1/L2"].mean()
    # lordosis: the adult spread, and the disks' wedge goes with it
    lord = np.array([a["lordosis_target_deg"] for a in an])
    assert abs(lord.mean() - 44.5) < 2.0 and 8.5 < lord.std() < 11.5
    wedge = np.array([sum(d["height_anterior_mm"] - d["height_posterior_mm"] for d in a["disks"][:5]) for a in an])
    assert np.corrcoef(wedge, lord)[0, 1] > 0.3
    # the column meets the lordosis (vertebral wedges take the rest)
    _, info = subject_contours(5)
    assert info["lordosis_deg"] == pytest.approx(sample_anatomy(np.random.default_rng(5), PhantomConfig())["lordosis_target_deg"], abs=1.5)


_DISK_FINDING = {
    "bulge": "bulge", "protrusion": "protrusion", "extrusion": "extrusion", "migration": "migration", "schmorl": "schmorl",
    "irregular_endplate": "irregular_endplate", "osteophyte": "osteophyte", "vacuum": "vacuum", "modic": "modic_",
}


@pytest.mark.parametrize("name", sorted(PREVALENCE_DEFAULTS))
def test_each_pathology_present_at_prevalence_one_absent_at_zero(name):
    none = {k: 0.0 for k in PREVALENCE_DEFAULTS}
    grades = {"grade_probabilities_lower": (0, 0, 0, 0.5, 0.5), "grade_probabilities_upper": (0, 0, 0, 0.5, 0.5)} if name == "vacuum" else {}
    on = _anatomies(15, PhantomConfig(prevalence={**none, name: 1.0}, **grades))
    off = _anatomies(15, PhantomConfig(prevalence={**none, name: 0.0}, **grades))

    def has(a: dict) -> list[bool]:
        if name == "spondylolisthesis":
            return [any(d["slip_mm"] > 0 for d in a["disks"][:2])]
        if name == "fatty_marrow":
            return [bool(v["fatty_foci"]) for v in a["vertebrae"]]
        return [any(f.startswith(_DISK_FINDING[name]) for f in d["findings"]) for d in a["disks"]]

    assert all(x for a in on for x in has(a)), f"{name}: missing somewhere at prevalence 1"
    assert not any(x for a in off for x in has(a)), f"{name}: present at prevalence 0"


def _posterior_extent(points_mm: np.ndarray) -> tuple[float, float, float]:
    """(how far the posterior side reaches beyond the PI-PS line, below PI, above PS) in mm."""
    pi, ps = points_mm[88], points_mm[132]
    e_t = (ps - pi) / np.linalg.norm(ps - pi)
    e_n = np.array([e_t[1], -e_t[0]])
    side = points_mm[88:132] - pi
    t, n = side @ e_t, side @ e_n
    return float(np.abs(n).max()), float(max(0.0, -t.min())), float(max(0.0, t.max() - np.linalg.norm(ps - pi)))


@pytest.mark.parametrize("kind", ["protrusion", "extrusion", "migration"])
def test_herniations_change_the_contour(kind):
    """The contour follows the herniation: out of the posterior wall, past the endplate level for an
    extrusion or a migrated fragment; a protrusion stays between the corners."""
    none = {k: 0.0 for k in PREVALENCE_DEFAULTS}
    cfg = PhantomConfig(prevalence={**none, kind: 1.0})
    for seed in range(4):
        disks, info = subject_contours(seed, cfg)
        for d, p in zip(disks, info["disks"]):
            depth, below, above = _posterior_extent(d["points_mm"])
            assert depth > 0.8 * p["herniation_mm"] + 0.0, (kind, d["level"], depth, p["herniation_mm"])
            if kind == "protrusion":
                assert below < 0.05 and above < 0.05
            else:
                assert max(below, above) > 0.9 * max(p["herniation_down_mm"], p["herniation_up_mm"])
            assert _disk_measures(d["points_mm"])["posterior"] == pytest.approx(p["height_posterior_mm"], abs=0.02)  # corners stay


def test_schmorl_and_collapse_change_the_contour():
    none = {k: 0.0 for k in PREVALENCE_DEFAULTS}
    cfg = PhantomConfig.healthy(prevalence={**none, "schmorl": 1.0})
    disks, info = subject_contours(3, cfg)
    for d, p in zip(disks, info["disks"]):
        m = _disk_measures(d["points_mm"])
        node = p["schmorl"][0]
        # the node deepens the endplate: the outline reaches further from the chord than without it
        side = d["points_mm"][132:176] if node["endplate"] == "superior" else d["points_mm"][44:88]
        a, b = side[0], (d["points_mm"][0] if node["endplate"] == "superior" else d["points_mm"][88])
        e = (b - a) / np.linalg.norm(b - a)
        off = np.abs((side - a) @ np.array([e[1], -e[0]]))
        flat_bump = abs(p["height_middle_mm"] - 0.5 * (p["height_anterior_mm"] + p["height_posterior_mm"])) / 2
        assert off.max() > flat_bump + 0.6 * node["depth_mm"], (d["level"], off.max(), node)
        assert m["anterior"] == pytest.approx(p["height_anterior_mm"], abs=0.02)
    collapsed = PhantomConfig(grade_probabilities_lower=(0, 0, 0, 0, 1), grade_probabilities_upper=(0, 0, 0, 0, 1), low_height_fraction=0.0)
    h = [_disk_measures(d["points_mm"])["anterior"] / PUBLISHED_DISK_GEOMETRY[d["level"]]["anterior"][0] for s in range(3) for d in subject_contours(s, collapsed)[0]]
    assert max(h) < 0.75


def test_subject_contours_are_generate_subjects(subjects_small):
    disks, _ = subject_contours(0, SMALL)
    for a, b in zip(disks, subjects_small[0].disks):
        np.testing.assert_array_equal(a["points_px"], b["points_px"])


def test_mask_and_contour_agree_with_every_pathology():
    """Dice >= 0.97 per disk with every pathology switched on (prevalence 1) at the tests' and the default resolution."""
    heavy = {k: 1.0 for k in PREVALENCE_DEFAULTS}
    for cfg, seeds in ((PhantomConfig(shape=(256, 256), spacing_mm=(1.2, 1.2), prevalence=heavy), (0, 1, 2)), (PhantomConfig(prevalence=heavy), (3,))):
        for seed in seeds:
            s = generate_subject(seed, cfg)
            for d in s.disks:
                fill = _fill(d["points_px"], s.label.shape)
                mask = s.label == d["label"]
                assert 2 * (fill & mask).sum() / (fill.sum() + mask.sum()) >= 0.97, (seed, d["level"])
            assert {1, 2, 3, 4, 5, 100} <= set(np.unique(s.label).tolist())


# ------------------------------------------------------------------------------------------ borders, texture, noise


def test_soft_borders_and_marrow_texture():
    """Disk borders are not a step (partial volume widens them with the slice thickness); the marrow is
    textured unless switched off."""
    from scipy import ndimage

    def edge_profile(thick: float, texture: float = 1.0):
        cfg = PhantomConfig(shape=(256, 256), spacing_mm=(1.2, 1.2), slice_thickness_mm=thick, blur_sigma_px=(0, 0), noise_sigma=(0, 0),
                            gibbs_probability=0.0, bias_coeff=0.0, marrow_texture=texture)
        return generate_subject(2, cfg)

    thin, thick = edge_profile(1.0), edge_profile(8.0)
    np.testing.assert_array_equal(thin.label, thick.label)
    inner = ndimage.binary_erosion(thin.label == 203, iterations=1)
    ring = (thin.label == 203) & ~inner
    # the outermost pixels of the disk mix with what lies around more with a thick slice
    assert np.abs(thick.image[ring] - thin.image[ring]).mean() > 0.01
    flat = edge_profile(1.0, texture=0.0)
    marrow = ndimage.binary_erosion(np.isin(thin.label, [2, 3, 4]), iterations=4)
    cv = lambda im: im[marrow].std() / im[marrow].mean()  # noqa: E731
    assert cv(thin.image) > 2 * cv(flat.image) + 0.02


def test_annotation_noise_is_smooth_small_and_leaves_the_image(tmp_path):
    cfg = PhantomConfig(shape=(256, 256), spacing_mm=(1.2, 1.2), annotation_noise_mm=0.4)
    exact = generate_subject(4, SMALL)
    noisy = generate_subject(4, cfg)
    np.testing.assert_array_equal(exact.image, noisy.image)
    np.testing.assert_array_equal(exact.label, noisy.label)
    for e, n, d in zip(exact.disks, noisy.disks_noisy, noisy.disks):
        np.testing.assert_array_equal(e["points_px"], d["points_px"])  # the truth stays exact
        disp = n["points_mm"] - e["points_mm"]
        rms = np.sqrt((disp**2).sum(1).mean())
        assert 0.25 < rms < 0.65  # 0.4 mm normal + 0.2 mm tangential
        assert np.linalg.norm(np.diff(disp, axis=0), axis=1).mean() < 0.25 * rms * 2  # smooth along the contour
    assert exact.disks_noisy is None
    out = write_phantom_dataset(tmp_path / "n", subjects=4, seed=1, config=cfg, split=(0.5, 0.25, 0.25), progress=False, workers=1).parent
    dl = json.loads((out / "datalist.json").read_text())
    meta = json.loads((out / "phantom.json").read_text())
    for split, entries in dl.items():
        for e in entries:
            a = json.loads((out / e["contours"]).read_text())["disks"][0]["points_px"]
            b = json.loads((out / e["contours_exact"]).read_text())["disks"][0]["points_px"]
            assert (a != b) == (split == "training"), split
    assert [r["contours_noisy"] for r in meta["subject_params"]] == [True, True, False, False]


# ------------------------------------------------------------------------------------------ phantom-stats and the gate


def test_phantom_stats_command(tiny_phantom, tmp_path, capsys):
    from diskrobust.cli import main
    from diskrobust.data.phantom.stats import disk_measures

    out = tmp_path / "stats"
    assert main(["phantom-stats", str(tiny_phantom), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "go/no-go gate" in printed and ("HOLDS" in printed or "FAILS" in printed)
    doc = json.loads((out / "stats.json").read_text())
    assert (out / "stats.png").read_bytes()[:4] == b"\x89PNG" and "| L4/L5 |" in (out / "stats.md").read_text()
    # the table is the contours' own measures
    c = json.loads((tiny_phantom / "contours" / "sub-0000.json").read_text())
    l45 = [disk_measures(np.array(json.loads(p.read_text())["disks"][1]["points_mm"]))["anterior"] for p in sorted((tiny_phantom / "contours").glob("*.json"))]
    assert c["disks"][1]["level"] == "L4/L5"
    assert doc["per_level"]["L4/L5"]["anterior"]["mean"] == pytest.approx(np.mean(l45))
    assert doc["per_level"]["L4/L5"]["anterior"]["published_mean"] == 18.1
    res = [doc["heldout_residual"][str(k)]["median_px"] for k in (1, 3, 5, 10)]
    assert res == sorted(res, reverse=True)
    assert doc["lordosis"]["n"] == 6
    assert main(["phantom-stats", str(tmp_path / "nothing")]) == 2
    assert "datalist.json" in capsys.readouterr().err


def _population(n: int, cfg: PhantomConfig | None = None, seed: int = 0) -> list[dict]:
    disks = []
    for i, s in enumerate(subject_seeds(seed, n)):
        for d in subject_contours(s, cfg)[0]:
            disks.append({"split": "training" if i < 0.7 * n else "test", "subject": str(i), "level": d["level"], "points_mm": d["points_mm"]})
    return disks


def test_go_no_go_gate_holds_for_the_default_phantom_and_fails_without_variation():
    from diskrobust.data.phantom.stats import stats_from_disks

    st = stats_from_disks(_population(100))  # the default phantom's 100 subjects (seed 0), contours only
    assert st["gate"]["passes"], st["gate"]
    assert st["gate"]["residual_p3_median_px"] >= 1.0 and st["procrustes"]["beyond_mode3"] >= 0.12
    # one disk shape turned and shifted: all variation is tilt and position, the gate must fail
    base = _population(1)[2]["points_mm"]
    rng = np.random.default_rng(0)
    turned = []
    for i in range(60):
        a = np.radians(rng.uniform(-15, 15))
        r = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        turned.append({"split": "training" if i < 42 else "test", "subject": str(i), "level": "L3/L4", "points_mm": base @ r.T + rng.uniform(-5, 5, 2)})
    st = stats_from_disks(turned)
    assert not st["gate"]["passes"] and st["procrustes"]["mean_point_distance_mm"] < 1e-6


def test_an_interrupted_phantom_is_recognised_and_generated_again(tmp_path):
    """A run killed while writing its phantom leaves the project's in-progress marker and no datalist:
    the next run regenerates the folder (same seed, same bytes) instead of refusing it as foreign data."""
    import subprocess
    import sys
    import time

    from diskrobust.data.phantom.writer import IN_PROGRESS_MARKER

    folder = tmp_path / "killed"
    code = ("import sys; from diskrobust.data.phantom import write_phantom_dataset, PhantomConfig; "
            "write_phantom_dataset(sys.argv[1], subjects=40, seed=3, config=PhantomConfig(shape=(128, 128), "
            "spacing_mm=(2.4, 2.4)), progress=False, workers=1)")
    child = subprocess.Popen([sys.executable, "-c", code, str(folder)])
    deadline = time.time() + 120
    while not (folder / "images").is_dir() or not any((folder / "images").iterdir()):
        assert time.time() < deadline and child.poll() is None, "the generator never started writing"
        time.sleep(0.05)
    child.kill()
    child.wait()
    assert (folder / IN_PROGRESS_MARKER).is_file() and not (folder / "datalist.json").exists()
    dl = ensure_phantom(folder, subjects=2, seed=3, config=SMALL, progress=False)
    assert dl.is_file() and not (folder / IN_PROGRESS_MARKER).exists()
    assert len(list((folder / "images").iterdir())) == 2  # the killed run's extra subjects are gone
    fresh = ensure_phantom(tmp_path / "fresh", subjects=2, seed=3, config=SMALL, progress=False)
    assert _sha(dl) == _sha(fresh)

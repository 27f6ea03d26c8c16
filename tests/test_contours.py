"""Contour geometry: mask <-> 176-point contour, point order, resampling, units, Dice, polygon fill."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from diskrobust.data.contours import (
    contour_centroid,
    contour_to_mask,
    dice,
    mask_to_contour,
    mm_to_px,
    polygon_fill_torch,
    px_to_mm,
    resample_closed,
    resample_sides,
    signed_area,
    validate_contour,
)
from diskrobust.data.errors import DataError


def wedge_outline(centre=(64.0, 48.0), length=60.0, h_ant=18.0, h_post=10.0, angle_deg=0.0, n=400):
    """A dense disk-like outline (n, 2) (x, y): a rounded wedge, taller anteriorly (left), rotated."""
    th = np.linspace(0, 2 * np.pi, n, endpoint=False)
    x = np.sign(np.cos(th)) * np.abs(np.cos(th)) ** 0.3 * length / 2
    height = h_ant + (h_post - h_ant) * (x + length / 2) / length
    y = np.sign(np.sin(th)) * np.abs(np.sin(th)) ** 0.3 * height / 2
    a = np.deg2rad(angle_deg)
    return np.stack([centre[0] + x * np.cos(a) - y * np.sin(a), centre[1] + x * np.sin(a) + y * np.cos(a)], 1)


def wedge_mask(shape=(96, 128), **kw) -> np.ndarray:
    return contour_to_mask(wedge_outline(**kw), shape)


@pytest.mark.parametrize("angle", [-35.0, -10.0, 0.0, 20.0, 35.0])
def test_mask_to_contour_round_trip_and_point_order(angle):
    mask = wedge_mask(angle_deg=angle)
    pts = mask_to_contour(mask)
    assert pts.shape == (176, 2)
    assert dice(mask, contour_to_mask(pts, mask.shape)) >= 0.97
    # contract order AS -> AI -> PI -> PS: negative shoelace area in (x, y) with y down
    assert signed_area(pts) < 0
    # corners in the disk's own frame (rotated back): AS upper-left, AI lower-left, PI lower-right, PS upper-right
    a = np.deg2rad(angle)
    rot = np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]])
    local = (pts - pts.mean(0)) @ rot.T
    as_, ai, pi, ps = local[[0, 44, 88, 132]]
    assert as_[0] < 0 and as_[1] < 0
    assert ai[0] < 0 and ai[1] > 0
    assert pi[0] > 0 and pi[1] > 0
    assert ps[0] > 0 and ps[1] < 0
    # anterior side (side 0) taller than the posterior side (side 2), as built
    assert np.linalg.norm(ai - as_) > np.linalg.norm(ps - pi)


def test_sides_are_equally_spaced_by_arc_length():
    pts = mask_to_contour(wedge_mask(angle_deg=10.0))
    closed = np.concatenate([pts, pts[:1]])
    for side in range(4):
        seg = np.linalg.norm(np.diff(closed[side * 44 : side * 44 + 45], axis=0), axis=1)
        # equal arc-length steps along the traced outline; chords of curved parts are slightly shorter
        assert seg.std() / seg.mean() < 0.15


def test_anterior_direction_is_honoured():
    mask = wedge_mask()
    left = mask_to_contour(mask)  # default: anterior = left
    right = mask_to_contour(mask, anterior=(1.0, 0.0))
    assert left[0, 0] < left[88, 0]
    assert right[0, 0] > right[88, 0]
    assert signed_area(right) > 0  # the mirrored frame runs the other way round in image coordinates
    assert dice(mask, contour_to_mask(right, mask.shape)) >= 0.97


def test_num_points_parameter():
    pts = mask_to_contour(wedge_mask(), num_points=40)
    assert pts.shape == (40, 2)
    with pytest.raises(ValueError):
        mask_to_contour(wedge_mask(), num_points=42)


def test_mask_errors_name_the_source():
    with pytest.raises(DataError, match="sub-7.*empty"):
        mask_to_contour(np.zeros((32, 32), bool), source="sub-7")
    tiny = np.zeros((32, 32), bool)
    tiny[10:12, 10:13] = True
    with pytest.raises(DataError, match="too small"):
        mask_to_contour(tiny, source="sub-7")
    with pytest.raises(DataError, match="2D"):
        mask_to_contour(np.ones((4, 4, 4), bool))


def test_polygon_fill_torch_matches_contour_to_mask():
    shapes = [
        mask_to_contour(wedge_mask(angle_deg=a, centre=(60.0 + a / 5, 50.0)))
        for a in (-30.0, 0.0, 25.0)
    ]
    pts = torch.tensor(np.stack(shapes), dtype=torch.float32)
    filled = polygon_fill_torch(pts, (96, 128))
    assert filled.shape == (3, 1, 96, 128) and filled.dtype == torch.float32
    for i, p in enumerate(shapes):
        ref = contour_to_mask(p, (96, 128))
        got = filled[i, 0].numpy() > 0.5
        diff = got != ref
        # differences only on the outline: every differing pixel has a neighbour of the other class in ref
        assert diff.sum() <= 0.01 * ref.sum()
        edge = ref ^ np.roll(ref, 1, 0) | ref ^ np.roll(ref, -1, 0) | ref ^ np.roll(ref, 1, 1) | ref ^ np.roll(ref, -1, 1)
        assert not (diff & ~edge).any()
        assert dice(got, ref) > 0.99


def test_polygon_fill_torch_simple_square_exact():
    square = torch.tensor([[[2.5, 2.5], [2.5, 6.5], [7.5, 6.5], [7.5, 2.5]]], dtype=torch.float64)
    out = polygon_fill_torch(square, (10, 10))[0, 0]
    expected = torch.zeros(10, 10, dtype=torch.float64)
    expected[3:7, 3:8] = 1
    assert torch.equal(out, expected)
    with pytest.raises(ValueError):
        polygon_fill_torch(square[0], (10, 10))


def test_resample_closed_and_sides():
    th = np.linspace(0, 2 * np.pi, 50, endpoint=False) ** 1.3  # uneven sampling of a circle
    th = th / th.max() * 2 * np.pi * 49 / 50
    circle = np.stack([10 * np.cos(th), 10 * np.sin(th)], 1)
    out = resample_closed(circle, 64)
    steps = np.linalg.norm(np.diff(np.concatenate([out, out[:1]]), axis=0), axis=1)
    assert out.shape == (64, 2)
    assert np.allclose(out[0], circle[0])
    assert steps.std() / steps.mean() < 0.02

    pts = mask_to_contour(wedge_mask(angle_deg=15.0))
    again = resample_sides(pts, 44)
    assert np.allclose(again[[0, 44, 88, 132]], pts[[0, 44, 88, 132]])
    assert np.abs(again - pts).max() < 0.5  # re-spacing along chords moves points a little
    half = resample_sides(pts, 22)
    assert half.shape == (88, 2)
    assert np.allclose(half[[0, 22, 44, 66]], pts[[0, 44, 88, 132]])
    with pytest.raises(ValueError):
        resample_sides(pts[:-1])


def test_units_follow_the_contract():
    pts = np.array([[10.0, 20.0], [3.0, 4.0]])
    mm = px_to_mm(pts, (0.5, 0.8))  # (row, col) spacing
    assert np.allclose(mm, [[8.0, 10.0], [2.4, 2.0]])  # x * spacing_col, y * spacing_row
    assert np.allclose(mm_to_px(mm, (0.5, 0.8)), pts)


def test_centroid_is_the_area_centroid():
    # a rectangle with many points on one side: the point mean is pulled, the area centroid is not
    left = np.stack([np.zeros(40), np.linspace(0, 10, 40, endpoint=False)], 1)
    rest = np.array([[0, 10], [20, 10], [20, 0]], dtype=float)
    poly = np.concatenate([left, rest])
    assert np.allclose(contour_centroid(poly), [10, 5])
    assert poly.mean(0)[0] < 3


def test_dice():
    a = np.zeros((5, 5), bool)
    b = np.zeros((5, 5), bool)
    assert dice(a, b) == 1.0
    a[:2] = True
    b[1:3] = True
    assert dice(a, b) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        dice(a, b[:4])


def test_validate_contour_errors():
    good = mask_to_contour(wedge_mask())
    assert validate_contour(good, (96, 128), source="c.json").shape == (176, 2)
    with pytest.raises(DataError, match=r"c.json.*\(176, 2\)"):
        validate_contour(good[:100], source="c.json")
    bad = good.copy()
    bad[5, 1] = np.nan
    with pytest.raises(DataError, match="c.json.*NaN"):
        validate_contour(bad, source="c.json")
    with pytest.raises(DataError, match="leaves the image"):
        validate_contour(good + [100.0, 0.0], (96, 128), source="c.json")
    with pytest.raises(DataError, match="no area"):
        validate_contour(np.zeros((176, 2)), source="c.json")
    with pytest.raises(DataError, match="numeric"):
        validate_contour([["a", "b"]] * 176, source="c.json")


# ----------------------------------------------------------------------------------------------------
# against the phantom (labels and analytic contours)
# ----------------------------------------------------------------------------------------------------


def _check_disk(mask: np.ndarray, reference: np.ndarray, where: str, spacing_mm: float) -> None:
    pts = mask_to_contour(mask, source=where)
    assert dice(mask, contour_to_mask(pts, mask.shape)) >= 0.97, where
    dist = np.linalg.norm(pts - reference, axis=1)
    assert dist.mean() < 1.5, f"{where}: mean distance {dist.mean():.2f} px to the analytic contour"
    corners = np.linalg.norm(pts[[0, 44, 88, 132]] - reference[[0, 44, 88, 132]], axis=1)
    # corners are rounded, so "the" corner is ill-defined by a couple of mm: within 2.5 mm (at least 3 px)
    assert corners.max() < max(3.0, 2.5 / spacing_mm), f"{where}: corner distances {corners}"


def test_round_trip_on_every_tiny_phantom_disk(tiny_phantom):
    from diskrobust.data.dataset_io import read_contours_json, read_image

    datalist = json.loads((Path(tiny_phantom) / "datalist.json").read_text())
    entries = [e for split in datalist.values() for e in split]
    # the corner recipe assumes a disk-like outline: herniations reaching past an endplate, Schmorl nodes,
    # wavy or collapsed endplates, a bulging annulus move the outline's extreme points away from "the"
    # corner (phantom.json lists each disk's findings)
    meta = json.loads((Path(tiny_phantom) / "phantom.json").read_text())
    not_disk_like = {"bulge", "extrusion", "migration", "schmorl", "irregular_endplate", "collapse"}
    findings = {(r["subject"], d["level"]): set(d["findings"]) for r in meta["subject_params"] for d in r["params"]["disks"]}
    n_disks = 0
    for e in entries:
        label, _ = read_image(Path(tiny_phantom) / e["label"])
        doc = read_contours_json(Path(tiny_phantom) / e["contours"], image_shape=label.shape)
        for disk in doc["disks"]:
            if findings[(e["subject"], disk["level"])] & not_disk_like:
                continue
            _check_disk(label == disk["label"], disk["points_px"], f"{e['subject']} {disk['level']}", min(doc["spacing_mm"]))
            n_disks += 1
    assert n_disks >= 2 * len(entries)


@pytest.mark.parametrize("seed", [11, 12])
def test_round_trip_at_phantom_default_resolution(seed):
    from diskrobust.data.phantom import PhantomConfig, generate_subject

    subject = generate_subject(seed, PhantomConfig())
    assert subject.spacing_mm == (0.6, 0.6)
    for disk in subject.disks:
        where = f"seed {seed} {disk['level']}"
        _check_disk(subject.label == disk["label"], np.asarray(disk["points_px"]), where, 0.6)

"""Baseline rows: the constant mean-shape predictor and uniform noise of the attack's budget."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from diskrobust.data.contours import polygon_fill_torch
from diskrobust.robustness.baselines import baseline_markdown, mean_shape, mean_shape_rows, uniform_noise_rows
from diskrobust.robustness.results import ROW_COLUMNS, aggregate


def _circle(n=176, r=8.0, c=(16.0, 16.0)):
    t = -np.linspace(0, 2 * np.pi, n, endpoint=False)  # clockwise in image coordinates: negative area
    return np.stack([c[0] + r * np.cos(t), c[1] + r * np.sin(t)], 1)


def _test_set(n=4, size=32, shifts=None):
    shifts = shifts if shifts is not None else [(0.0, 0.0)] * n
    pts = torch.tensor(np.stack([_circle() + np.array(s) for s in shifts]), dtype=torch.float32)
    mask = polygon_fill_torch(pts, (size, size)).float().reshape(n, 1, size, size)
    images = torch.full((n, 1, size, size), 0.5)
    return SimpleNamespace(images=images, points=pts, mask=mask, subjects=[f"s{i}" for i in range(n)],
                           levels=["L4/L5"] * n, spacing_mm=0.5)


def test_mean_shape_rows_have_the_known_error():
    test = _test_set(3, shifts=[(0, 0), (3, 4), (-6, 8)])
    rows = mean_shape_rows(test, mean_shape(np.stack([_circle(), _circle()])))
    assert [r["point_error_px"] for r in rows] == pytest.approx([0.0, 5.0, 10.0], abs=1e-4)
    assert [r["point_error_mm"] for r in rows] == pytest.approx([0.0, 2.5, 5.0], abs=1e-4)
    assert rows[0]["polygon_dice"] == pytest.approx(1.0) and rows[2]["polygon_dice"] < rows[1]["polygon_dice"] < 1
    assert rows[1]["seg_dice"] == rows[1]["polygon_dice"]
    assert all(set(r) == set(ROW_COLUMNS) and r["sweep"] == "baseline" and r["attack"] == "mean_shape" for r in rows)
    with pytest.raises(ValueError, match="patch geometry"):
        mean_shape_rows(test, _circle(n=100))


class _ContrastNet(nn.Module):
    """Predicts a circle displaced by how far the image is from flat grey: noise moves its output."""

    def __init__(self):
        super().__init__()
        self.gain = nn.Parameter(torch.tensor(40.0))
        self.register_buffer("base", torch.tensor(_circle(), dtype=torch.float32))

    def forward(self, x):
        shift = self.gain * (x - 0.5).abs().flatten(1).mean(1)
        pred = self.base[None] + shift.view(-1, 1, 1)
        return {"pred": pred, "seg": (x - 0.5).abs() * 0 + 1.0}


def test_uniform_noise_rows_stay_in_the_budget_and_reach_the_network():
    test = _test_set(5)
    net = _ContrastNet().train()
    rows = uniform_noise_rows(net, test, [0.01, 0.1], norm="linf", seed=0, batch_size=2)
    assert net.training  # mode restored
    assert len(rows) == 10 and all(set(r) == set(ROW_COLUMNS) for r in rows)
    for eps in (0.01, 0.1):
        at = [r for r in rows if r["eps"] == eps]
        assert all(r["delta_linf"] <= eps + 1e-7 for r in at)
        assert all(r["delta_linf"] > 0.9 * eps for r in at)  # a full-budget draw, not a tiny one
        # mean |U[-eps, eps]| = eps / 2, times the gain, times sqrt(2) (x and y move): the error
        assert np.mean([r["point_error_px"] for r in at]) == pytest.approx(40 * eps / 2 * np.sqrt(2), rel=0.05)
    again = uniform_noise_rows(net, test, [0.01, 0.1], norm="linf", seed=0, batch_size=2)
    assert [(r["point_error_px"], r["delta_l2"]) for r in again] == [(r["point_error_px"], r["delta_l2"]) for r in rows]
    other = uniform_noise_rows(net, test, [0.1], norm="linf", seed=1, batch_size=2)
    assert [r["delta_l2"] for r in other] != [r["delta_l2"] for r in rows if r["eps"] == 0.1]


def test_uniform_l2_noise_lies_at_the_budget_radius():
    test = _test_set(3)
    rows = uniform_noise_rows(_ContrastNet(), test, [2.0], norm="l2", seed=0)
    # in 1024 dimensions a uniform draw in the ball lies within a fraction of a percent of its radius
    assert all(1.98 <= r["delta_l2"] <= 2.0 + 1e-5 for r in rows)
    with pytest.raises(ValueError, match="norm"):
        uniform_noise_rows(_ContrastNet(), test, [2.0], norm="l1")


def test_baseline_rows_aggregate_and_render_next_to_pgd():
    test = _test_set(2, shifts=[(0, 0), (3, 4)])
    base = mean_shape_rows(test, _circle()) + uniform_noise_rows(_ContrastNet(), test, [0.1], seed=0)
    groups = aggregate(base, tolerance_px=2.0)["groups"]
    assert {g["attack"] for g in groups} == {"mean_shape", "uniform_linf"}
    ind = [{**r, "sweep": "clean", "attack": "none", "head": "none", "eps": 0.0, "point_error_px": 1.0}
           for r in base[:2]] + [{**r, "sweep": "ind", "attack": "linf", "head": "points", "eps": 0.1,
                                  "point_error_px": 9.0} for r in base[:2]]
    lines = baseline_markdown(ind, base)
    assert lines[2].endswith("| 1.00 | 9.00 |")
    assert lines[4] == "| constant mean training shape | 2.50 | 2.50 |"

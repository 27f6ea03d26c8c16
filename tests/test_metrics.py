"""Metrics: per-sample functions against hand-computed values, and the Ignite metrics on MONAI-style outputs."""

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from ignite.exceptions import NotComputableError
from skimage.draw import polygon as sk_polygon

from diskrobust.metrics import (
    MeanPointDistance,
    PolygonDice,
    SegDice,
    lower_is_better,
    mean_point_distance,
    neg_mean_point_distance,
    negated_metric,
    polygon_dice,
    seg_dice,
)


def square(x0, y0, x1, y1):
    """Closed axis-aligned square polygon (4, 2) of (x, y) corners."""
    return torch.tensor([[x0, y0], [x0, y1], [x1, y1], [x1, y0]], dtype=torch.float32)


def box_mask(h, w, rows, cols):
    m = torch.zeros(1, h, w)
    m[0, rows[0]:rows[1], cols[0]:cols[1]] = 1
    return m


# ---- mean_point_distance -------------------------------------------------------------------------

def test_point_distance_shift_3_4_is_5():
    target = torch.rand(2, 176, 2) * 100
    pred = target + torch.tensor([3.0, 4.0])
    assert torch.allclose(mean_point_distance(pred, target), torch.tensor([5.0, 5.0]))


def test_point_distance_averages_over_points():
    target = torch.zeros(1, 4, 2)
    pred = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [0.0, 0.0], [3.0, 4.0]]])
    assert torch.allclose(mean_point_distance(pred, target), torch.tensor([(1 + 2 + 0 + 5) / 4]))


def test_point_distance_in_mm_scales_x_by_col_and_y_by_row_spacing():
    target = torch.zeros(2, 3, 2)
    pred = target + torch.tensor([3.0, 4.0])  # dx = 3 px (cols), dy = 4 px (rows)
    # spacing (row, col) = (0.5, 2.0): dx -> 6 mm, dy -> 2 mm
    expected = torch.tensor([np.hypot(6.0, 2.0)] * 2, dtype=torch.float32)
    assert torch.allclose(mean_point_distance(pred, target, spacing_mm=(0.5, 2.0)), expected)
    # per-sample spacing (B, 2)
    per_sample = torch.tensor([[0.5, 2.0], [1.0, 1.0]])
    got = mean_point_distance(pred, target, spacing_mm=per_sample)
    assert torch.allclose(got, torch.tensor([np.hypot(6.0, 2.0), 5.0], dtype=torch.float32))


def test_point_distance_bad_shapes():
    with pytest.raises(ValueError, match=r"\(B, N, 2\)"):
        mean_point_distance(torch.zeros(2, 3), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="differ"):
        mean_point_distance(torch.zeros(1, 3, 2), torch.zeros(1, 4, 2))
    with pytest.raises(ValueError, match="spacing_mm"):
        mean_point_distance(torch.zeros(1, 3, 2), torch.zeros(1, 3, 2), spacing_mm=(1.0, 1.0, 1.0))


# ---- polygon_dice --------------------------------------------------------------------------------

def test_polygon_dice_exact_square_is_one():
    mask = box_mask(12, 12, (2, 8), (3, 9))  # rows 2..7, cols 3..8
    pts_half = square(2.5, 1.5, 8.5, 7.5)  # corners between pixels
    assert torch.allclose(polygon_dice(pts_half[None], mask[None]), torch.tensor([1.0]))


def test_polygon_dice_shifted_square_hand_computed():
    mask = box_mask(16, 16, (2, 8), (2, 8))  # 6 x 6 = 36 px, rows/cols 2..7
    pts = square(4.5, 5.5, 10.5, 11.5)  # fills cols 5..10, rows 6..11: 36 px
    # overlap: cols 5..7 (3) x rows 6..7 (2) = 6 px -> Dice = 2 * 6 / 72
    got = polygon_dice(pts[None], mask[None])
    assert torch.allclose(got, torch.tensor([12.0 / 72.0]))


def test_polygon_dice_disjoint_and_outside_image():
    mask = box_mask(10, 10, (0, 3), (0, 3))
    far = square(50, 50, 60, 60)
    assert polygon_dice(far[None], mask[None]).item() == 0.0
    # a polygon partly outside the image is clipped: square covering cols/rows 0..2 and beyond
    big = square(-5.5, -5.5, 2.5, 2.5)
    assert torch.allclose(polygon_dice(big[None], mask[None]), torch.tensor([1.0]))


def test_polygon_dice_batched_matches_skimage_fill():
    rng = np.random.default_rng(3)
    theta = np.linspace(0, 2 * np.pi, 176, endpoint=False)
    pts, masks = [], []
    for _ in range(3):
        r = 8 + 2 * rng.random(176)
        p = np.stack([32 + 2 * r * np.cos(theta), 30 + r * np.sin(theta)], 1) + rng.random(2)
        rr, cc = sk_polygon(p[:, 1], p[:, 0], (64, 64))
        m = np.zeros((1, 64, 64), np.float32)
        m[0, rr, cc] = 1
        pts.append(p)
        masks.append(m)
    pts = torch.tensor(np.stack(pts), dtype=torch.float32)
    masks = torch.tensor(np.stack(masks))
    assert torch.allclose(polygon_dice(pts, masks), torch.ones(3))
    shifted = polygon_dice(pts + torch.tensor([3.0, 0.0]), masks)
    assert (shifted < 0.95).all() and (shifted > 0.5).all()


def test_polygon_dice_empty_cases():
    empty = torch.zeros(1, 1, 8, 8)
    assert polygon_dice(square(20, 20, 30, 30)[None], empty).item() == 1.0  # both empty agree
    assert polygon_dice(square(1.5, 1.5, 4.5, 4.5)[None], empty).item() == 0.0


# ---- seg_dice ------------------------------------------------------------------------------------

def test_seg_dice_hand_computed():
    mask = box_mask(8, 8, (0, 4), (0, 4))[None]  # 16 px
    logits = torch.full((1, 1, 8, 8), -3.0)
    logits[0, 0, 0:4, 2:6] = 2.0  # 16 px predicted, 8 overlap -> Dice 0.5
    assert torch.allclose(seg_dice(logits, mask), torch.tensor([0.5]))
    logits[0, 0, 0:4, 2:6] = 0.0  # logit 0 is not foreground
    assert seg_dice(logits, mask).item() == 0.0


def test_seg_dice_shape_mismatch():
    with pytest.raises(ValueError, match="differ"):
        seg_dice(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 9))


# ---- Ignite metrics ------------------------------------------------------------------------------

def _engine_outputs():
    """Two MONAI-style iterations: {"image", "label": {points, mask}, "pred": network dict}."""
    mask = box_mask(16, 16, (2, 8), (2, 8))
    pts = square(1.5, 1.5, 7.5, 7.5)  # Dice 1
    pts_shift = square(4.5, 5.5, 10.5, 11.5)  # Dice 1/6
    logits_good = mask * 10 - 5
    logits_bad = -logits_good
    batch1 = {
        "image": torch.rand(2, 1, 16, 16),
        "label": {"points": torch.stack([pts, pts]), "mask": torch.stack([mask, mask])},
        "pred": {"pred": torch.stack([pts + torch.tensor([3.0, 4.0]), pts]),  # distances 5, 0
                 "seg": torch.stack([logits_good, logits_bad])},  # Dice 1, 0
    }
    batch2 = {
        "image": torch.rand(1, 1, 16, 16),
        "label": {"points": pts[None], "mask": mask[None]},
        "pred": {"pred": pts_shift[None], "seg": logits_good[None]},
    }
    return [batch1, batch2]


def _run(metrics, outputs):
    engine = Engine(lambda e, b: b)
    for name, metric in metrics.items():
        metric.attach(engine, name)
    engine.run(outputs, max_epochs=1)
    return engine


def test_ignite_metrics_on_batched_output():
    outputs = _engine_outputs()
    engine = _run({"mpd": MeanPointDistance(), "pdice": PolygonDice(), "sdice": SegDice()}, outputs)
    # distance of the shifted square: corners move by (3, 4) from (1.5..7.5) to (4.5..10.5, 5.5..11.5)
    assert engine.state.metrics["mpd"] == pytest.approx((5.0 + 0.0 + 5.0) / 3)
    # the shifted square (samples 1 and 3) has Dice 1/6, the exact one 1
    assert engine.state.metrics["pdice"] == pytest.approx((1.0 / 6.0 + 1.0 + 1.0 / 6.0) / 3)
    assert engine.state.metrics["sdice"] == pytest.approx((1.0 + 0.0 + 1.0) / 3)
    assert neg_mean_point_distance(engine, "mpd") == pytest.approx(-10.0 / 3)
    assert negated_metric("mpd")(engine) == pytest.approx(-10.0 / 3)


def test_ignite_metrics_on_decollated_output():
    # MONAI engines decollate by default: engine.state.output is a list of per-sample dicts
    decollated = []
    for out in _engine_outputs():
        n = out["image"].shape[0]
        decollated.append([{"image": out["image"][i],
                            "label": {k: v[i] for k, v in out["label"].items()},
                            "pred": {k: v[i] for k, v in out["pred"].items()}} for i in range(n)])
    engine = _run({"mpd": MeanPointDistance(), "sdice": SegDice()}, decollated)
    assert engine.state.metrics["mpd"] == pytest.approx(10.0 / 3)
    assert engine.state.metrics["sdice"] == pytest.approx(2.0 / 3)


def test_mean_point_distance_metric_in_mm():
    outputs = _engine_outputs()[:1]
    engine = _run({"mpd": MeanPointDistance(spacing_mm=(0.5, 0.5))}, outputs)
    assert engine.state.metrics["mpd"] == pytest.approx(2.5 / 2)


def test_metric_with_absent_head_is_a_clear_error():
    out = _engine_outputs()[0]
    out["pred"] = {"seg": out["pred"]["seg"]}  # point head switched off
    metric = MeanPointDistance()
    with pytest.raises(ValueError, match="no 'pred'.*point head"):
        metric.update(metric._output_transform(out))
    out = _engine_outputs()[0]
    out["pred"] = {"pred": out["pred"]["pred"]}
    with pytest.raises(ValueError, match="no 'seg'.*segmentation head"):
        SegDice().update((out["pred"], out["label"]))


def test_metric_bad_output_and_empty_compute():
    metric = PolygonDice()
    with pytest.raises(ValueError, match="'pred'.*'label'"):
        metric.update(metric._output_transform({"y_pred": 1}))
    with pytest.raises(NotComputableError):
        metric.compute()


def test_reset_clears_state():
    metric = SegDice()
    out = _engine_outputs()[0]
    metric.update((out["pred"], out["label"]))
    assert metric.compute() == pytest.approx(0.5)
    metric.reset()
    out["pred"]["seg"] = out["pred"]["seg"][:1]
    out["label"]["mask"] = out["label"]["mask"][:1]
    metric.update((out["pred"], out["label"]))
    assert metric.compute() == pytest.approx(1.0)


def test_lower_is_better():
    assert lower_is_better(1.0, 2.0) and not lower_is_better(3.0, 2.0)


@pytest.mark.parametrize("decollate", [True, False])
def test_metrics_in_monai_supervised_evaluator(decollate):
    from monai.engines import SupervisedEvaluator

    from diskrobust.batch import prepare_disk_batch
    from diskrobust.networks import DiskShapeNet

    torch.manual_seed(0)
    net = DiskShapeNet(num_points=16, spatial_size=32, width=8, blocks=(1, 1, 1, 1))
    # targets = the untrained network's prediction shifted by (3, 4): distance 5 up to the tiny init noise
    points = net.mean_shape.expand(2, 16, 2) + torch.tensor([3.0, 4.0])
    data = [{"image": torch.rand(2, 1, 32, 32), "points": points, "mask": torch.zeros(2, 1, 32, 32)}
            for _ in range(2)]
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"), val_data_loader=data, network=net, prepare_batch=prepare_disk_batch,
        key_val_metric={"val_mean_point_distance": MeanPointDistance()},
        additional_metrics={"val_seg_dice": SegDice()}, decollate=decollate, metric_cmp_fn=lower_is_better)
    evaluator.run()
    assert evaluator.state.metrics["val_mean_point_distance"] == pytest.approx(5.0, abs=0.01)
    assert 0.0 <= evaluator.state.metrics["val_seg_dice"] <= 1.0
    assert evaluator.state.best_metric == pytest.approx(5.0, abs=0.01)

"""Losses: per-sample terms against hand-computed values, and DiskShapeLoss's heads, weights and errors."""

import math

import pytest
import torch
import torch.nn.functional as F

from diskrobust.losses import (
    DiskShapeLoss,
    bce_per_sample,
    point_mae_per_sample,
    point_sse_per_sample,
    seg_loss_per_sample,
    soft_dice_loss_per_sample,
)


def test_point_mae_and_sse_hand_computed():
    target = torch.zeros(2, 2, 2)
    pred = torch.tensor([[[1.0, -2.0], [3.0, 0.0]], [[0.0, 0.0], [0.0, 4.0]]])
    assert torch.allclose(point_mae_per_sample(pred, target), torch.tensor([6.0 / 4, 4.0 / 4]))
    assert torch.allclose(point_sse_per_sample(pred, target), torch.tensor([1 + 4 + 9.0, 16.0]))


def test_soft_dice_loss_hand_computed():
    mask = torch.zeros(1, 1, 2, 2)
    mask[0, 0, 0] = 1  # 2 foreground pixels
    # logits +-inf-like: sigmoid is exactly the mask -> Dice (2*2 + 1) / (2 + 2 + 1) = 1
    logits = (mask * 2 - 1) * 50
    assert soft_dice_loss_per_sample(logits, mask).item() == pytest.approx(0.0, abs=1e-6)
    # logits 0: prob 0.5 everywhere: inter = 1, sum prob = 2 -> 1 - (2 + 1) / (2 + 2 + 1) = 0.4
    assert soft_dice_loss_per_sample(torch.zeros(1, 1, 2, 2), mask).item() == pytest.approx(0.4)


def test_bce_and_seg_loss():
    mask = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    logits = torch.zeros(1, 1, 2, 2)
    assert bce_per_sample(logits, mask).item() == pytest.approx(math.log(2))
    expected = 0.5 * (math.log(2) + soft_dice_loss_per_sample(logits, mask).item())
    assert seg_loss_per_sample(logits, mask).item() == pytest.approx(expected)
    # matches torch's reduction per sample
    logits = torch.randn(3, 1, 4, 4)
    masks = (torch.rand(3, 1, 4, 4) > 0.5).float()
    ref = torch.stack([F.binary_cross_entropy_with_logits(logits[i], masks[i]) for i in range(3)])
    assert torch.allclose(bce_per_sample(logits, masks), ref, atol=1e-6)


def _batch():
    torch.manual_seed(0)
    outputs = {"pred": torch.randn(3, 5, 2), "seg": torch.randn(3, 1, 4, 4)}
    targets = {"points": torch.randn(3, 5, 2), "mask": (torch.rand(3, 1, 4, 4) > 0.5).float()}
    return outputs, targets


def test_disk_shape_loss_is_sum_of_terms():
    outputs, targets = _batch()
    loss_fn = DiskShapeLoss(point_weight=2.0, seg_weight=0.5)
    loss = loss_fn(outputs, targets)
    mae = point_mae_per_sample(outputs["pred"], targets["points"]).mean()
    seg = seg_loss_per_sample(outputs["seg"], targets["mask"]).mean()
    assert loss.item() == pytest.approx(2.0 * mae.item() + 0.5 * seg.item(), rel=1e-6)
    assert loss_fn.last_terms == pytest.approx({"point_mae": mae.item(), "seg": seg.item()})


@pytest.mark.parametrize("head", ["pred", "seg"])
def test_disk_shape_loss_with_one_head(head):
    outputs, targets = _batch()
    outputs = {head: outputs[head]}
    loss_fn = DiskShapeLoss()
    loss = loss_fn(outputs, targets)
    if head == "pred":
        expected = point_mae_per_sample(outputs["pred"], targets["points"]).mean()
    else:
        expected = seg_loss_per_sample(outputs["seg"], targets["mask"]).mean()
    assert loss.item() == pytest.approx(expected.item())
    assert set(loss_fn.last_terms) == {"point_mae" if head == "pred" else "seg"}


def test_disk_shape_loss_honours_sample_weight():
    outputs, targets = _batch()
    per_sample = (point_mae_per_sample(outputs["pred"], targets["points"])
                  + seg_loss_per_sample(outputs["seg"], targets["mask"]))
    weighted = DiskShapeLoss()(outputs, {**targets, "weight": torch.tensor([1.0, 0.0, 3.0])})
    assert weighted.item() == pytest.approx(((per_sample[0] + 3 * per_sample[2]) / 4).item(), rel=1e-6)
    # weight 1 everywhere equals the plain mean
    ones = DiskShapeLoss()(outputs, {**targets, "weight": torch.ones(3)})
    assert ones.item() == pytest.approx(DiskShapeLoss()(outputs, targets).item(), rel=1e-6)


def test_disk_shape_loss_gradient_flows_to_outputs():
    outputs, targets = _batch()
    outputs = {k: v.requires_grad_() for k, v in outputs.items()}
    DiskShapeLoss()(outputs, targets).backward()
    assert outputs["pred"].grad.abs().sum() > 0 and outputs["seg"].grad.abs().sum() > 0


def test_disk_shape_loss_errors():
    with pytest.raises(ValueError, match=">= 0"):
        DiskShapeLoss(point_weight=-1.0)
    outputs, targets = _batch()
    with pytest.raises(ValueError, match="no loss term"):
        DiskShapeLoss(seg_weight=0.0)({"seg": outputs["seg"]}, targets)

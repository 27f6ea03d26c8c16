"""APGD, the Square attack and RegressionAutoAttack on toy models whose worst case is known in closed form.

The linear toy: every contour point sits at s(x) = w . x + c, so the point SSE is 352 s^2 and with the
box inactive the worst case is analytic: L-inf s* = c + eps ||w||_1 at delta = eps sign(w); L2
s* = c + eps ||w||_2 at delta = eps w / ||w||_2.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from diskrobust.attacks import APGD, PGD, RegressionAutoAttack, SquareAttack
from diskrobust.attacks.apgd import checkpoints
from diskrobust.attacks.square import window_fraction
from diskrobust.losses import point_sse_per_sample
from diskrobust.networks import DiskShapeNet

SIZE = 8


class LinearToy(nn.Module):
    """pred: all 176 points at (s, s), s = w . x + c; seg: constant logits (so "both" has a seg term)."""

    def __init__(self, w: torch.Tensor, c: float, quantise_flagged: bool = False):
        super().__init__()
        self.register_buffer("w", w)
        self.c = c
        self.quantise_flagged = quantise_flagged

    def forward(self, x):
        if self.quantise_flagged:
            # a sample whose corner pixel is bright is seen through a staircase: zero gradient everywhere
            flagged = (x[:, :, 0, 0] > 0.9).view(-1, 1, 1, 1)
            x = torch.where(flagged, torch.round(x * 8) / 8, x)
        s = (x * self.w).flatten(1).sum(1) + self.c
        seg = torch.zeros_like(x[:, :1]) + 0 * s.view(-1, 1, 1, 1)
        return {"pred": s.view(-1, 1, 1).expand(-1, 176, 2), "seg": seg}


def toy(seed: int = 0, quantise_flagged: bool = False):
    gen = torch.Generator().manual_seed(seed)
    # signs in 2 x 2 blocks with random magnitudes; the corner pixel (the flag) has no weight
    signs = torch.randint(0, 2, (1, 1, SIZE // 2, SIZE // 2), generator=gen).float().mul(2).sub(1)
    w = signs.repeat_interleave(2, -1).repeat_interleave(2, -2) * (0.5 + torch.rand(1, 1, SIZE, SIZE, generator=gen))
    w[..., 0, 0] = 0
    image = 0.5 + 0.05 * torch.rand(2, 1, SIZE, SIZE, generator=gen)
    c = 0.3 - float((image[0] * w[0]).sum())  # s(clean) = 0.3 for sample 0
    targets = {"points": torch.zeros(2, 176, 2), "mask": torch.ones(2, 1, SIZE, SIZE)}
    return LinearToy(w, c, quantise_flagged), image, targets, w


def s_of(model, images):
    with torch.no_grad():
        return model(images)["pred"][:, 0, 0]


def optimum(model, image, w, eps, norm):
    s0 = s_of(model, image)
    gain = eps * (w.abs().sum() if norm == "linf" else w.norm())
    return torch.maximum(s0 + gain, (s0 - gain).abs())


def test_checkpoint_schedule_is_apgds():
    # w_1 = 0.22 N, then intervals shrinking by 0.03 N to at least 0.06 N (Croce & Hein 2020)
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert checkpoints(10) == [2, 3, 4, 5, 6, 7, 8, 9, 10]


@pytest.mark.parametrize("norm,eps", [("linf", 0.03), ("l2", 0.2)])
def test_apgd_reaches_the_analytic_optimum(norm, eps):
    model, image, targets, w = toy()
    result = APGD(model, eps=eps, steps=60, norm=norm, seed=0)(image, targets)
    best = optimum(model, image, w, eps, norm)
    torch.testing.assert_close(s_of(model, result.images).abs(), best, rtol=2e-3, atol=0)
    torch.testing.assert_close(result.losses, point_sse_per_sample(model(result.images)["pred"], targets["points"]))
    if norm == "linf":
        assert result.deltas.abs().max() <= eps + 1e-6
    else:
        assert (result.deltas.flatten(1).norm(dim=1) <= eps * (1 + 1e-5)).all()


def test_apgd_halves_the_step_when_the_loss_stops_rising():
    model, image, targets, _ = toy()
    attack = APGD(model, eps=0.03, steps=60, seed=0)
    attack(image, targets)
    # on a linear model the sign step reaches the vertex at once; from then on the loss never rises,
    # so every checkpoint before the end (8 of them for N = 60) halves the step: 2 eps / 2^8
    halvings = sum(1 for k in checkpoints(60) if k < 60)
    torch.testing.assert_close(attack.last_step_sizes, torch.full((2,), 2 * 0.03 / 2**halvings))


def test_apgd_keeps_the_best_iterate_and_targets():
    model, image, targets, w = toy()
    seen = []

    def spy(outputs, targets):
        loss = point_sse_per_sample(outputs["pred"], targets["points"])
        seen.append(loss.detach().clone())
        return loss

    result = APGD(model, eps=0.03, steps=20, restarts=2, seed=1, objective=spy)(image, targets)
    torch.testing.assert_close(result.losses, torch.stack(seen).amax(0))
    # targeted: towards a shape the budget can reach exactly
    goal = {"points": torch.full((2, 176, 2), 0.0)}
    goal["points"][:] = (s_of(model, image) + 0.5 * 0.03 * w.abs().sum()).view(-1, 1, 1)
    hit = APGD(model, eps=0.03, steps=60, targeted=True, seed=0)(image, goal)
    assert (hit.losses < 1e-3 * point_sse_per_sample(model(image)["pred"], goal["points"])).all()


def test_apgd_is_honest_on_a_real_network():
    torch.manual_seed(0)
    net = DiskShapeNet(width=8, spatial_size=16, blocks=(1, 1))
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    image = torch.rand(2, 1, 16, 16)
    targets = {"points": torch.full((2, 176, 2), 8.0), "mask": torch.zeros(2, 1, 16, 16)}
    a = APGD(net, eps=0.05, steps=5, objective="both", seed=3)(image, targets)
    b = APGD(net, eps=0.05, steps=5, objective="both", seed=3)(image, targets)
    assert torch.equal(a.images, b.images)
    assert net.training and all(m.training for m in net.modules())
    assert all(p.requires_grad and p.grad is None for p in net.parameters())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    clean = point_sse_per_sample(net.eval()(image)["pred"], targets["points"])
    assert (point_sse_per_sample(net(a.images)["pred"], targets["points"]) > clean).all()


@pytest.mark.parametrize("norm,eps,floor", [("linf", 0.03, 0.9), ("l2", 0.2, 0.8)])
def test_square_reaches_the_optimums_neighbourhood_without_gradients(norm, eps, floor):
    model, image, targets, w = toy()
    start = s_of(model, image).abs()
    result = SquareAttack(model, eps=eps, queries=600, norm=norm, seed=0)(image, targets)
    reached = s_of(model, result.images).abs()
    best = optimum(model, image, w, eps, norm)
    assert (reached >= floor * best).all() and (reached <= best * (1 + 1e-5)).all(), (start, reached, best)
    if norm == "linf":
        assert result.deltas.abs().max() <= eps + 1e-6
    else:
        assert (result.deltas.flatten(1).norm(dim=1) <= eps * (1 + 1e-5)).all()
    torch.testing.assert_close(result.losses, point_sse_per_sample(model(result.images)["pred"], targets["points"]))


def test_square_window_schedule():
    assert window_fraction(0.8, 0, 1000) == 0.8
    assert window_fraction(0.8, 2, 1000) == 0.4  # 20 of 10,000
    assert window_fraction(0.8, 999, 1000) == 0.8 / 2**9


def test_ensemble_takes_the_worst_member_per_sample():
    """Sample 1 is seen through a staircase (zero gradient): only Square moves it; sample 0 is linear,
    where APGD is exact. The ensemble reports each sample's worst case and who found it."""
    model, image, targets, w = toy(quantise_flagged=True)
    image = image.clone()
    image[1] = 0.55  # 8 x 0.55 = 4.4: a step of +0.0125 or more crosses the staircase's next edge
    image[1, :, 0, 0] = 0.95
    ensemble = RegressionAutoAttack(model, eps=0.03, steps=30, queries=300, seed=0)
    result = ensemble(image, targets)
    assert result.member[0].startswith("apgd") and result.member[1] == "square", result.member
    values = torch.stack([result.member_losses[name] for name in ensemble.member_names()])
    torch.testing.assert_close(result.losses, values.amax(0))
    distance = (model(result.images)["pred"] - targets["points"]).norm(dim=-1).mean(-1)
    torch.testing.assert_close(result.losses, distance)
    # each member alone is no stronger than the ensemble, sample by sample
    alone = APGD(model, eps=0.03, steps=30, seed=0)(image, targets)
    assert ((alone.images - image).abs().amax((1, 2, 3)) <= 0.03 + 1e-6).all()
    assert (distance >= (model(alone.images)["pred"] - targets["points"]).norm(dim=-1).mean(-1) - 1e-6).all()
    # the gradient attack cannot move the masked sample beyond its random start; the query attack can
    assert result.member_losses["square"][1] > 1.5 * result.member_losses["apgd-points-sse"][1]
    torch.testing.assert_close(s_of(model, result.images[:1]).abs(), optimum(model, image, w, 0.03, "linf")[:1],
                               rtol=2e-3, atol=0)
    assert result.deltas.abs().max() <= 0.03 + 1e-6
    assert ensemble.member_summary(result)["square"] == 1


def test_ensemble_is_at_least_as_strong_as_pgd_on_a_real_network():
    torch.manual_seed(0)
    net = DiskShapeNet(width=8, spatial_size=16, blocks=(1, 1)).eval()
    image = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        targets = {"points": net(image)["pred"] + 0.5, "mask": torch.zeros(3, 1, 16, 16)}
    ensemble = RegressionAutoAttack(net, eps=0.03, steps=10, queries=20, seed=0)(image, targets)
    pgd = PGD(net, eps=0.03, steps=10, seed=0)(image, targets)
    with torch.no_grad():
        pgd_distance = (net(pgd.images)["pred"] - targets["points"]).norm(dim=-1).mean(-1)
    assert ensemble.losses.mean() >= 0.98 * pgd_distance.mean()
    with pytest.raises(ValueError, match="criterion"):
        RegressionAutoAttack(net, criterion="dice")

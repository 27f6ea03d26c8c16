"""The attacks are strong, honest and reproducible (the usual checklist against gradient masking).

A small DiskShapeNet (width 8, 32 x 32 patches) is trained for a few seconds on synthetic ellipse
"disks" once per session; the attacks are then checked on held-out samples.
"""

from __future__ import annotations

import math
from datetime import timedelta

import pytest
import torch
from torch import nn

from diskrobust.attacks import (NATURAL_IMAGES, PGD, OODAttack, attack_context, box_noise, mean_point_distance,
                                natural_images, targets_from_model, uniform_noise, unwrap_model)
from diskrobust.attacks.pgd import project_, random_start
from diskrobust.losses import DiskShapeLoss, point_sse_per_sample, soft_dice_loss_per_sample
from diskrobust.networks import DiskShapeNet

SIZE = 32


def synthetic_disks(n: int, size: int, generator: torch.Generator):
    """Bright ellipses on a noisy background: image (n, 1, S, S), points (n, 176, 2), mask (n, 1, S, S)."""
    def u():
        return torch.rand(n, 1, generator=generator)
    cx, cy = size / 2 + (u() * 2 - 1) * size * 0.12, size / 2 + (u() * 2 - 1) * size * 0.12
    a, b = size * (0.2 + 0.1 * u()), size * (0.08 + 0.05 * u())
    theta = -math.pi / 4 + 2 * math.pi * torch.arange(176) / 176
    points = torch.stack([cx - a * torch.cos(theta), cy + b * torch.sin(theta)], dim=-1)
    grid = torch.arange(size, dtype=torch.float32)
    yy, xx = torch.meshgrid(grid, grid, indexing="ij")
    inside = ((xx - cx[..., None]) / a[..., None]) ** 2 + ((yy - cy[..., None]) / b[..., None]) ** 2 <= 1
    mask = inside.float()[:, None]
    image = (0.25 + 0.5 * mask + 0.05 * torch.randn(mask.shape, generator=generator)).clamp(0, 1)
    return image, points, mask


def small_net(seed: int = 0) -> DiskShapeNet:
    torch.manual_seed(seed)
    return DiskShapeNet(width=8, spatial_size=SIZE, blocks=(1, 1, 1))


@pytest.fixture(scope="module")
def trained():
    """(network trained ~150 steps, held-out images (8, 1, S, S), targets dict)."""
    gen = torch.Generator().manual_seed(0)
    net = small_net(0)
    image, points, mask = synthetic_disks(512, SIZE, gen)
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    loss_fn = DiskShapeLoss()
    for _ in range(150):
        idx = torch.randint(0, 512, (16,), generator=gen)
        loss = loss_fn(net(image[idx]), {"points": points[idx], "mask": mask[idx]})
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    net.zero_grad(set_to_none=True)
    net.eval()
    test_image, test_points, test_mask = synthetic_disks(8, SIZE, torch.Generator().manual_seed(99))
    return net, test_image, {"points": test_points, "mask": test_mask}


def point_error(net, images, targets):
    with torch.no_grad():
        return mean_point_distance(net(images)["pred"], targets["points"])


def sse_at(net, images, targets):
    with torch.no_grad():
        return point_sse_per_sample(net(images)["pred"], targets["points"])


def test_model_learned_the_task(trained):
    net, image, targets = trained
    assert point_error(net, image, targets).mean() < 1.0  # px; an untrained net is several px off


def test_error_grows_with_eps(trained):
    net, image, targets = trained
    errors = [point_error(net, PGD(net, eps=eps, steps=10, seed=0)(image, targets).images, targets).mean().item()
              for eps in (0.0, 0.01, 0.03, 0.07, 0.2)]
    assert all(b >= a for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] > 3 * errors[0]


def test_pgd_beats_random_noise_of_same_budget(trained):
    net, image, targets = trained
    eps = 0.05
    gen = torch.Generator().manual_seed(1)
    noisy = [sse_at(net, (image + random_start(image, eps, "linf", gen)).clamp(0, 1), targets) for _ in range(5)]
    noise_sse = torch.stack(noisy).amax(0)  # the best of 5 noise draws per sample
    pgd = PGD(net, eps=eps, steps=10, seed=0)(image, targets)
    assert (pgd.losses > 2 * noise_sse).all(), (pgd.losses, noise_sse)


@pytest.mark.parametrize("norm,update,eps", [("linf", "adamax", 0.05), ("l2", "sign", 1.0), ("l2", "adamax", 1.0)])
def test_variants_beat_random_noise(trained, norm, update, eps):
    net, image, targets = trained
    start = (image + random_start(image, eps, norm, torch.Generator().manual_seed(2))).clamp(0, 1)
    result = PGD(net, eps=eps, steps=8, norm=norm, update=update, seed=0)(image, targets)
    assert result.losses.mean() > 2 * sse_at(net, start, targets).mean()


def test_more_steps_are_not_worse(trained):
    net, image, targets = trained
    few = PGD(net, eps=0.03, steps=3, seed=5)(image, targets)
    many = PGD(net, eps=0.03, steps=12, seed=5)(image, targets)
    # same seed: the longer run passes through the shorter run's iterates, and keeps the best
    assert (many.losses >= few.losses * (1 - 1e-6)).all()
    assert many.losses.mean() > few.losses.mean()


def test_restarts_are_not_worse(trained):
    net, image, targets = trained
    one = PGD(net, eps=0.03, steps=3, restarts=1, seed=5)(image, targets)
    three = PGD(net, eps=0.03, steps=3, restarts=3, seed=5)(image, targets)
    assert (three.losses >= one.losses * (1 - 1e-6)).all()


def test_returned_losses_are_the_objective_at_the_returned_images(trained):
    net, image, targets = trained
    for keep_best in (True, False):
        result = PGD(net, eps=0.05, steps=4, seed=3, keep_best=keep_best)(image, targets)
        torch.testing.assert_close(result.losses, sse_at(net, result.images, targets), rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(result.deltas, result.images - image)


@pytest.mark.parametrize("norm,eps", [("linf", 0.05), ("l2", 1.5)])
def test_budget_and_range_hold(trained, norm, eps):
    net, image, targets = trained
    image = image.clone()
    image[:, :, :4] = 1.0  # saturated rows: the box constraint must bind there
    result = PGD(net, eps=eps, steps=6, norm=norm, seed=0)(image, targets)
    assert result.images.min() >= 0 and result.images.max() <= 1
    if norm == "linf":
        assert result.deltas.abs().max() <= eps + 1e-6
        # a full-size sign step from the clean image lands on the faces of the cube wherever the box allows
        fgsm = PGD(net, eps=eps, steps=1, step_size=eps, random_start=False)(image, targets)
        free = (image > eps) & (image < 1 - eps)
        assert (fgsm.deltas.abs()[free] > 0.99 * eps).float().mean() > 0.95
    else:
        norms = result.deltas.flatten(1).norm(dim=1)
        assert (norms <= eps * (1 + 1e-5)).all()
        assert (norms > 0.9 * eps).all()
    assert (result.deltas[:, :, :4] <= 0).all()


def test_projection_is_exact():
    gen = torch.Generator().manual_seed(0)
    images = torch.full((3, 1, 8, 8), 0.5)
    delta = torch.randn((3, 1, 8, 8), generator=gen)
    linf = project_(delta.clone(), images, 0.1, "linf", (0.0, 1.0))
    torch.testing.assert_close(linf, delta.clamp(-0.1, 0.1))
    # L2, box inactive: the closest point of the ball is the radial scaling
    l2 = project_(delta.clone(), images, 0.3, "l2", (0.0, 1.0))
    expected = delta * 0.3 / delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    torch.testing.assert_close(l2, expected)
    inside = project_(delta.clone() * 1e-3, images, 0.3, "l2", (0.0, 1.0))
    torch.testing.assert_close(inside, delta * 1e-3)  # points inside the ball do not move
    # box active: image + delta ends in [0, 1]
    boxed = project_(torch.full((1, 1, 2, 2), 0.4), torch.full((1, 1, 2, 2), 0.9), 1.0, "linf", (0.0, 1.0))
    torch.testing.assert_close(boxed, torch.full((1, 1, 2, 2), 0.1))


def test_l2_random_start_is_in_the_ball():
    images = torch.full((64, 1, 4, 4), 0.5)
    draw = random_start(images, 2.0, "l2", torch.Generator().manual_seed(0))
    norms = draw.flatten(1).norm(dim=1)
    assert (norms <= 2.0 + 1e-5).all()
    # uniform in a 16-dimensional ball: P(r < 0.9 R) = 0.9**16 = 0.185
    assert 0.05 < (norms < 1.8).float().mean() < 0.4


def test_large_budget_drives_error_far_above_clean(trained):
    net, image, targets = trained
    clean = point_error(net, image, targets).mean()
    adv = point_error(net, PGD(net, eps=0.5, steps=10, seed=0)(image, targets).images, targets).mean()
    assert adv > 10 * clean and adv > 5.0, (clean, adv)


def test_seg_objective_increases_dice_loss(trained):
    net, image, targets = trained
    with torch.no_grad():
        clean = soft_dice_loss_per_sample(net(image)["seg"], targets["mask"])
        noisy = (image + random_start(image, 0.2, "linf", torch.Generator().manual_seed(0))).clamp(0, 1)
        noise = soft_dice_loss_per_sample(net(noisy)["seg"], targets["mask"])
    result = PGD(net, eps=0.2, steps=10, objective="seg", seed=0)(image, targets)
    assert (result.losses > clean + 0.08).all(), (clean, result.losses)
    assert (result.losses - clean).mean() > 3 * (noise - clean).abs().mean(), (clean, noise, result.losses)
    both = PGD(net, eps=0.1, steps=4, objective="both", seed=0)(image, targets)
    with torch.no_grad():
        out = net(both.images)
    expected = point_sse_per_sample(out["pred"], targets["points"]) + soft_dice_loss_per_sample(out["seg"], targets["mask"])
    torch.testing.assert_close(both.losses, expected, rtol=1e-5, atol=1e-4)


def test_targeted_moves_output_towards_target(trained):
    net, image, targets = trained
    goal = {"points": targets["points"] + torch.tensor([3.0, -2.0])}
    before = point_error(net, image, goal)
    result = PGD(net, eps=0.2, steps=10, targeted=True, seed=0)(image, goal)
    after = point_error(net, result.images, goal)
    assert (after < 0.6 * before).all(), (before, after)
    torch.testing.assert_close(result.losses, sse_at(net, result.images, goal), rtol=1e-5, atol=1e-4)


def test_callable_objective(trained):
    net, image, targets = trained

    def left_shift(outputs, targets):  # maximise the mean x of the contour
        return outputs["pred"][..., 0].mean(1)

    result = PGD(net, eps=0.05, steps=5, objective=left_shift, seed=0)(image, targets)
    with torch.no_grad():
        before = net(image)["pred"][..., 0].mean(1)
    assert (result.losses > before).all()


class _Dropout(nn.Module):
    """A network with dropout and a buffer: dropout active during the attack would show up in the losses."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.drop = nn.Dropout(0.5)
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x):
        return {"pred": self.inner(self.drop(x))["pred"]}


def test_model_state_untouched(trained):
    net, image, targets = trained
    model = _Dropout(net)
    model.train()
    net.point_head.eval()  # a submodule deliberately in eval stays so
    frozen = net.stem.conv.weight
    frozen.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        result = PGD(model, eps=0.05, steps=3, seed=0)(image, targets)
        assert model.training and model.drop.training and net.stem.training and not net.point_head.training
        assert not frozen.requires_grad
        assert all(p.requires_grad for n, p in model.named_parameters() if p is not frozen)
        assert all(p.grad is None for p in model.parameters())
        after = model.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before)
        # eval mode during the attack: the reported loss is the deterministic (dropout-free) one
        torch.testing.assert_close(result.losses, sse_at(net, result.images, targets), rtol=1e-5, atol=1e-4)
    finally:
        frozen.requires_grad_(True)
        net.eval()


def test_state_restored_when_attack_fails(trained):
    net, image, targets = trained
    net.train()
    try:
        with pytest.raises(RuntimeError, match="boom"):
            with attack_context(net):
                assert not net.training and not any(p.requires_grad for p in net.parameters())
                raise RuntimeError("boom")
        assert net.training and all(p.requires_grad for p in net.parameters())
    finally:
        net.eval()


def test_existing_grads_untouched(trained):
    net, image, targets = trained
    for p in net.parameters():
        p.grad = torch.full_like(p, 0.25)
    try:
        PGD(net, eps=0.05, steps=2, seed=0)(image, targets)
        assert all(torch.equal(p.grad, torch.full_like(p, 0.25)) for p in net.parameters())
    finally:
        net.zero_grad(set_to_none=True)


def test_works_inside_no_grad_and_inference_mode(trained):
    net, image, targets = trained
    reference = PGD(net, eps=0.05, steps=2, seed=0)(image, targets)
    with torch.no_grad():
        inside = PGD(net, eps=0.05, steps=2, seed=0)(image, targets)
    torch.testing.assert_close(inside.images, reference.images)
    with torch.inference_mode():
        frozen_image = image.clone()
    torch.testing.assert_close(PGD(net, eps=0.05, steps=2, seed=0)(frozen_image, targets).images, reference.images)


def test_seeded_runs_reproduce(trained):
    net, image, targets = trained
    a = PGD(net, eps=0.05, steps=3, seed=11)(image, targets)
    b = PGD(net, eps=0.05, steps=3, seed=11)(image, targets)
    c = PGD(net, eps=0.05, steps=3, seed=12)(image, targets)
    assert torch.equal(a.images, b.images) and torch.equal(a.losses, b.losses)
    assert not torch.equal(a.images, c.images)


def test_ddp_wrapped_model_is_attacked_unwrapped(trained):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    net, image, targets = trained
    # An in-memory store, not a file under tmp_path: concurrent pytest runs prune each other's temp dirs,
    # and a vanished store file makes the rendezvous wait forever.
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1, timeout=timedelta(seconds=60))
    try:
        wrapped = DistributedDataParallel(net)
        assert unwrap_model(wrapped) is net
        result = PGD(wrapped, eps=0.05, steps=3, seed=4)(image, targets)
        plain = PGD(net, eps=0.05, steps=3, seed=4)(image, targets)
        assert torch.equal(result.images, plain.images)
        assert all(p.grad is None for p in net.parameters())
        # the reducer is still in a clean state: an ordinary DDP step works after the attack
        wrapped.train()
        out = wrapped(image)
        (out["pred"].sum() + out["seg"].sum()).backward()
        assert all(p.grad is not None for p in net.parameters() if p.requires_grad)
    finally:
        net.zero_grad(set_to_none=True)
        net.eval()
        dist.destroy_process_group()


def test_not_weaker_than_torchattacks(trained):
    """torchattacks' own PGD loop (3.5.1), fed the point SSE, finds no stronger attack than ours."""
    torchattacks = pytest.importorskip("torchattacks")

    class PointPGD(torchattacks.PGD):
        # Their loop maximises CrossEntropy(logits, label). With logits (0, SSE) and label 0 the loss is
        # softplus(SSE): per sample a positive multiple of d SSE / dx, so every sign step is the SSE's.
        def forward(self, images, targets):
            object.__setattr__(self, "_targets", targets)  # their __setattr__ would scan the tensors
            return super().forward(images, torch.zeros(images.shape[0], dtype=torch.long))

        def get_logits(self, inputs, labels=None, *args, **kwargs):
            sse = point_sse_per_sample(self.model(inputs)["pred"], self._targets["points"])
            return torch.stack([torch.zeros_like(sse), sse], dim=1)

    net, image, targets = trained
    ours, theirs = [], []
    for seed in range(3):
        torch.manual_seed(seed)
        theirs.append(sse_at(net, PointPGD(net, eps=0.03, alpha=0.006, steps=10)(image, targets), targets))
        ours.append(PGD(net, eps=0.03, step_size=0.006, steps=10, seed=seed)(image, targets).losses)
    ours, theirs = torch.stack(ours).mean(), torch.stack(theirs).mean()
    assert ours >= 0.99 * theirs, (ours, theirs)


# ---------------------------------------------------------------- OOD attack


def test_targets_from_model(trained):
    net, image, _ = trained
    net.train()
    try:
        targets = targets_from_model(net, image)
        assert net.training
    finally:
        net.eval()
    with torch.no_grad():
        out = net(image)
    torch.testing.assert_close(targets["points"], out["pred"])
    assert torch.equal(targets["mask"], (out["seg"] > 0).float())


def test_ood_attack_reaches_target_within_budget(trained):
    net, image, _ = trained
    targets = targets_from_model(net, image[:4])
    start = uniform_noise(4, SIZE, generator=torch.Generator().manual_seed(0))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        start_distance = mean_point_distance(net(start)["pred"], targets["points"])
    attack = OODAttack(net, eps=8.0, steps=60, lr=0.01, seed=0, progress=False)
    result = attack(start, targets)
    assert (result.deltas.flatten(1).norm(dim=1) <= 8.0 * (1 + 1e-5)).all()
    assert result.images.min() >= 0 and result.images.max() <= 1
    assert (result.point_distance < 0.5 * start_distance).all(), (start_distance, result.point_distance)
    with torch.no_grad():
        again = attack.loss(result.images, net(result.images), targets)
    torch.testing.assert_close(result.losses, again, rtol=1e-5, atol=1e-5)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert all(p.grad is None for p in net.parameters())


def test_ood_attack_with_detector_lowers_detector_score(trained):
    net, image, _ = trained
    targets = targets_from_model(net, image[:2])
    start = box_noise(2, SIZE, cells=4, generator=torch.Generator().manual_seed(0))

    class Roughness(nn.Module):
        """A stand-in OOD score with its own parameter: mean squared horizontal gradient of the image."""

        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.tensor(100.0))

        def forward(self, images, outputs):
            return self.scale * (images[..., 1:] - images[..., :-1]).pow(2).flatten(1).mean(1)

    detector = Roughness()
    plain = OODAttack(net, eps=6.0, steps=30, seed=0, progress=False)(start, targets)
    adaptive = OODAttack(net, eps=6.0, steps=30, seed=0, detector=detector, progress=False)(start, targets)
    with torch.no_grad():
        assert (detector(adaptive.images, {}) < detector(plain.images, {})).all()
    assert detector.scale.requires_grad and detector.scale.grad is None and detector.training


# ---------------------------------------------------------------- start images


def test_noise_sources_are_seeded_and_shaped():
    a = uniform_noise(3, 16, generator=torch.Generator().manual_seed(0))
    b = uniform_noise(3, 16, generator=torch.Generator().manual_seed(0))
    assert a.shape == (3, 1, 16, 16) and torch.equal(a, b) and 0 <= a.min() and a.max() <= 1
    boxes = box_noise(2, 32, cells=16, generator=torch.Generator().manual_seed(0))
    assert boxes.shape == (2, 1, 32, 32)
    blocks = boxes.unfold(2, 2, 2).unfold(3, 2, 2)  # (2, 1, 16, 16, 2, 2): each block constant
    assert torch.equal(blocks.amax((-1, -2)), blocks.amin((-1, -2)))
    assert boxes.unique().numel() > 100


def test_natural_images_load_offline():
    images, names = natural_images(size=SIZE)
    assert names == list(NATURAL_IMAGES)
    assert images.shape == (len(NATURAL_IMAGES), 1, SIZE, SIZE) and images.dtype == torch.float32
    assert images.amin((1, 2, 3)).eq(0).all() and images.amax((1, 2, 3)).eq(1).all()
    subset, used = natural_images(5, size=(16, 24), names=["camera", "moon"])
    assert used == ["camera", "moon", "camera", "moon", "camera"] and subset.shape == (5, 1, 16, 24)
    with pytest.raises(ValueError, match="unknown natural image"):
        natural_images(1, names=["ct_scan"])


# ---------------------------------------------------------------- input checks


def test_bad_arguments_are_rejected(trained):
    net, image, targets = trained
    with pytest.raises(ValueError, match="norm"):
        PGD(net, norm="l1")
    with pytest.raises(ValueError, match="objective"):
        PGD(net, objective="shape")
    with pytest.raises(ValueError, match="eps"):
        PGD(net, eps=-1)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        PGD(net)(image[0], targets)
    with pytest.raises(ValueError, match="batch size"):
        PGD(net, steps=1)(image[:2], targets)
    with pytest.raises(KeyError, match="mask"):
        PGD(net, steps=1, objective="seg")(image, {"points": targets["points"]})


# ---------------------------------------------------------------- base class, keep-best, projection in the loop


class _MeanCurve(nn.Module):
    """Every point at sin(12 * mean intensity): along the all-equal direction the loss has several bumps,
    so a large step oscillates between a good and a bad iterate (PGD's sign step moves every pixel alike)."""

    def forward(self, x):
        v = torch.sin(12 * x.flatten(1).mean(1))
        return {"pred": v.view(-1, 1, 1).expand(-1, 176, 2)}


def _spy_objective(record):
    def objective(outputs, targets):
        loss = point_sse_per_sample(outputs["pred"], targets["points"])
        record.append(loss.detach().clone())
        return loss
    return objective


@pytest.mark.parametrize("norm,step", [("linf", 0.15), ("l2", 0.15 * 4)])
def test_pgd_keeps_the_best_iterate_not_the_last(norm, step):
    image = torch.full((2, 1, 4, 4), 0.5)
    targets = {"points": torch.zeros(2, 176, 2)}
    seen = []
    result = PGD(_MeanCurve(), eps=0.2 if norm == "linf" else 0.8, steps=2, step_size=step, norm=norm,
                 random_start=False, objective=_spy_objective(seen))(image, targets)
    losses = torch.stack(seen)  # (steps + 1, B): iterates 0 (clean), 1, 2
    assert len(seen) == 3 and (losses[1] > losses[2] + 1.0).all() and (losses[1] > losses[0]).all(), losses
    torch.testing.assert_close(result.losses, losses[1])
    torch.testing.assert_close(result.losses, sse_at(_MeanCurve(), result.images, targets))
    last = PGD(_MeanCurve(), eps=0.2 if norm == "linf" else 0.8, steps=2, step_size=step, norm=norm,
               random_start=False, keep_best=False)(image, targets)
    torch.testing.assert_close(last.losses, losses[2])


def test_ood_keeps_the_best_iterate_not_the_last():
    """SGD with a large rate on the same bumpy curve: the loss goes down, then up again; the best is in the middle."""
    start = torch.full((2, 1, 4, 4), 0.45)
    targets = {"points": torch.zeros(2, 176, 2)}
    seen = []

    def spy(images, outputs):  # a zero "detector" that records the iterates the attack scores
        seen.append(images.detach().clone())
        return images.new_zeros(images.shape[0])

    attack = OODAttack(_MeanCurve(), eps=5.0, steps=6, lr=0.4, optimizer="sgd", random_start=False,
                       detector=spy, progress=False)
    result = attack(start, targets)
    assert len(seen) == 7
    iterates = list(seen)  # attack.loss calls the spy again
    with torch.no_grad():
        losses = torch.stack([attack.loss(im, _MeanCurve()(im), targets) for im in iterates])
    best = losses.argmin(0)
    assert ((best > 0) & (best < 6)).all() and (losses[-1] > losses.amin(0) + 1e-3).all(), losses
    torch.testing.assert_close(result.losses, losses.amin(0))
    for i in range(2):
        assert torch.equal(result.images[i], iterates[best[i]][i])


def test_l2_iterates_are_projected_onto_the_box():
    """PGD's L2 iterates follow the documented update exactly: step, scale into the ball, clip into [0, 1],
    on an image whose saturated pixels the gradient pushes further up (there the box binds every step)."""

    class Linear(nn.Module):
        def forward(self, x):
            return {"pred": x.flatten(1).sum(1).view(-1, 1, 1).expand(-1, 176, 2)}

    image = torch.full((2, 1, 8, 8), 0.5)
    image[:, :, :5] = 1.0
    eps, step, steps = 1.0, 0.2, 6
    objective = lambda outputs, targets: outputs["pred"][:, 0, 0]  # noqa: E731
    result = PGD(Linear(), eps=eps, steps=steps, step_size=step, norm="l2", random_start=False,
                 objective=objective, keep_best=False)(image, {"points": torch.zeros(2, 176, 2)})
    delta = torch.zeros_like(image)
    for _ in range(steps):
        d = delta.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad((image + d).clamp(0, 1).flatten(1).sum(), d)
        delta = delta + step * grad / grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        delta = delta * (eps / delta.flatten(1).norm(dim=1)).clamp(max=1).view(-1, 1, 1, 1)
        delta = (image + delta).clamp(0, 1) - image
    torch.testing.assert_close(result.deltas, delta, rtol=0, atol=1e-6)


def test_base_class_owns_the_honest_context(trained):
    """A new attack gets eval mode and frozen parameters from Attack.__call__ without asking for them."""
    from diskrobust.attacks import Attack, AttackResult

    net, image, targets = trained

    class Probe(Attack):
        def forward(self, images, targets):
            self.seen = (self.model.training, any(p.requires_grad for p in self.model.parameters()),
                         torch.is_grad_enabled())
            if getattr(self, "fail", False):
                raise RuntimeError("boom")
            return AttackResult(images=images, losses=images.new_zeros(len(images)), deltas=images * 0)

    net.train()
    try:
        probe = Probe(net)
        with torch.no_grad():
            probe(image, targets)
        assert probe.seen == (False, False, True)
        assert net.training and all(p.requires_grad for p in net.parameters())
        probe.fail = True
        with pytest.raises(RuntimeError, match="boom"):
            probe(image, targets)
        assert net.training and all(p.requires_grad for p in net.parameters())
    finally:
        net.eval()


# ---------------------------------------------------------------- points-only forward and chunking


def test_forward_heads_matches_forward_and_skips_the_decoder(trained):
    net, image, targets = trained
    calls = []
    hook = net.seg_out.register_forward_hook(lambda *a: calls.append(1))
    try:
        with torch.no_grad():
            full = net(image)
            assert len(calls) == 1
            points_only = net.forward_heads(image, ("pred",))
            assert set(points_only) == {"pred"} and torch.equal(points_only["pred"], full["pred"])
            assert len(calls) == 1  # the decoder did not run
            assert torch.equal(net.forward_heads(image, ("seg",))["seg"], full["seg"])
        # PGD on "points" skips the decoder in every pass, the final scoring one included
        calls.clear()
        fast = PGD(net, eps=0.05, steps=3, seed=0)(image, targets)
        assert calls == []

        def undeclared(outputs, targets):  # the same point SSE without `heads`: the full network runs
            return point_sse_per_sample(outputs["pred"], targets["points"])

        slow = PGD(net, eps=0.05, steps=3, seed=0, objective=undeclared)(image, targets)
        assert len(calls) == 4
        assert torch.equal(fast.images, slow.images) and torch.equal(fast.losses, slow.losses)
    finally:
        hook.remove()
    with pytest.raises(ValueError, match="unknown heads"):
        net.forward_heads(image, ("points",))


def test_ood_points_only_skips_the_decoder_bit_identically(trained):
    net, image, _ = trained
    targets = {"points": targets_from_model(net, image[:4])["points"]}
    start = uniform_noise(4, SIZE, generator=torch.Generator().manual_seed(3))
    calls = []
    hook = net.seg_out.register_forward_hook(lambda *a: calls.append(1))
    try:
        fast = OODAttack(net, eps=4.0, steps=5, seed=0, progress=False)(start, targets)
        assert calls == []
        # a detector without `heads` may read any output: the full network runs, the result is the same
        zero = lambda images, outputs: images.new_zeros(images.shape[0])  # noqa: E731
        slow = OODAttack(net, eps=4.0, steps=5, seed=0, detector=zero, progress=False)(start, targets)
        assert len(calls) == 6
    finally:
        hook.remove()
    assert torch.equal(fast.images, slow.images) and torch.equal(fast.point_distance, slow.point_distance)


def test_chunking_gives_the_same_adversarials(trained):
    net, image, targets = trained
    for kwargs in ({}, {"norm": "l2", "eps": 1.0, "update": "adamax", "restarts": 2}):
        kwargs = {"eps": 0.05, "steps": 4, "seed": 3, **kwargs}
        whole = PGD(net, **kwargs)(image, targets)
        chunked = PGD(net, chunk_size=4, **kwargs)(image, targets)
        assert torch.equal(whole.images, chunked.images) and torch.equal(whole.losses, chunked.losses), kwargs
    # odd chunks: the last one is short; the seg path's kernels may round differently per batch size
    whole = PGD(net, eps=0.1, steps=3, objective="seg", seed=1)(image, targets)
    chunked = PGD(net, eps=0.1, steps=3, objective="seg", seed=1, chunk_size=3)(image, targets)
    torch.testing.assert_close(chunked.losses, whole.losses, rtol=1e-3, atol=1e-4)
    targets_ood = targets_from_model(net, image[:4])
    start = uniform_noise(4, SIZE, generator=torch.Generator().manual_seed(3))
    a = OODAttack(net, eps=4.0, steps=4, seed=0, progress=False)(start, {"points": targets_ood["points"]})
    b = OODAttack(net, eps=4.0, steps=4, seed=0, progress=False, chunk_size=2)(start, {"points": targets_ood["points"]})
    torch.testing.assert_close(b.losses, a.losses, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="chunk_size"):
        PGD(net, chunk_size=0)


def test_pgd_in_bf16_runs_its_gradient_passes_in_bf16_and_reports_fp32(trained):
    net, images, targets = trained
    seen = []
    hook = net.stem.conv.register_forward_hook(lambda mod, args, out: seen.append((torch.is_grad_enabled(), out.dtype)))
    try:
        res = PGD(net, eps=0.05, steps=3, objective="points", seed=0, precision="bf16")(images, targets)
    finally:
        hook.remove()
    # the 3 gradient passes in bf16; the last iterate's scoring pass and the rescoring of the result in fp32
    assert [dtype for grad, dtype in seen if grad and dtype == torch.bfloat16] and \
        all(dtype == torch.float32 for grad, dtype in seen if not grad)
    assert len([1 for grad, dtype in seen if not grad]) == 2
    assert torch.equal(res.losses, sse_at(net, res.images, targets))  # reported in fp32, at the returned images
    assert res.losses.dtype == torch.float32
    assert (res.images - images).abs().max() <= 0.05 + 1e-6
    fp32 = PGD(net, eps=0.05, steps=3, objective="points", seed=0)(images, targets)
    # the same attack in either precision: far above the clean error, strength close to fp32's
    assert res.losses.mean() > 2 * sse_at(net, images, targets).mean()
    assert res.losses.mean().item() == pytest.approx(fp32.losses.mean().item(), rel=0.1)
    with pytest.raises(ValueError, match=r"precision: must be one of \('fp32', 'bf16'\), got 'fp16'"):
        PGD(net, precision="fp16")

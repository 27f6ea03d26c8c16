"""DiskShapeNet: shapes, heads, width scaling, gradients, determinism, state_dict round trip, overfit."""

import pytest
import torch
from torch import nn

from diskrobust.losses import DiskShapeLoss
from diskrobust.networks import DiskShapeNet, ellipse_mean_shape

S = 32  # tiny patches keep the tests fast; the network's default is 128
TINY = dict(num_points=16, spatial_size=S, width=8, blocks=(1, 1, 1, 1))


def test_both_heads_shapes():
    torch.manual_seed(0)
    net = DiskShapeNet(**TINY).eval()
    out = net(torch.rand(3, 1, S, S))
    assert set(out) == {"pred", "seg"}
    assert out["pred"].shape == (3, 16, 2)
    assert out["seg"].shape == (3, 1, S, S)


def test_default_network_shapes():
    net = DiskShapeNet().eval()
    with torch.no_grad():
        out = net(torch.rand(1, 1, 128, 128))
    assert out["pred"].shape == (1, 176, 2)
    assert out["seg"].shape == (1, 1, 128, 128)
    # untrained, the prediction is the default disk-like ellipse around the patch centre
    assert torch.allclose(out["pred"][0], ellipse_mean_shape(176, 128), atol=0.5)
    centre = out["pred"][0].mean(0)
    assert torch.allclose(centre, torch.tensor([64.0, 64.0]), atol=0.5)


@pytest.mark.parametrize("point_head,seg_head,keys", [(True, False, {"pred"}), (False, True, {"seg"})])
def test_single_head(point_head, seg_head, keys):
    net = DiskShapeNet(point_head=point_head, seg_head=seg_head, **TINY)
    out = net(torch.rand(2, 1, S, S))
    assert set(out) == keys
    # the absent head builds no parameters either
    names = {n.split(".")[0] for n, _ in net.named_parameters()}
    assert ("point_head" in names) == point_head
    assert ("decoder" in names) == seg_head


def test_no_head_is_an_error():
    with pytest.raises(ValueError, match="at least one head"):
        DiskShapeNet(point_head=False, seg_head=False, **TINY)


@pytest.mark.parametrize("shape", [(2, 1, S, S + 16), (2, 2, S, S), (1, S, S), (2, 1, 64, 64)])
def test_bad_input_shape_is_a_clear_error(shape):
    net = DiskShapeNet(**TINY)
    with pytest.raises(ValueError, match=r"expects input of shape \(B, 1, 32, 32\)"):
        net(torch.rand(*shape))


def test_bad_configuration_errors():
    with pytest.raises(ValueError, match="norm_groups"):
        DiskShapeNet(num_points=16, spatial_size=S, width=12, norm_groups=8)
    with pytest.raises(ValueError, match="multiple of"):
        DiskShapeNet(num_points=16, spatial_size=40, width=8)


def test_width_scales_parameter_count():
    counts = [sum(p.numel() for p in DiskShapeNet(width=w, **{k: v for k, v in TINY.items() if k != "width"})
                  .parameters()) for w in (8, 16, 32)]
    assert counts[0] < counts[1] < counts[2]
    # convolutions dominate: doubling the width roughly quadruples their weights
    assert counts[2] > 2.5 * counts[1]


def test_group_norm_only():
    net = DiskShapeNet(**TINY)
    kinds = {type(m) for m in net.modules()}
    assert nn.GroupNorm in kinds
    assert not any(issubclass(k, nn.modules.batchnorm._NormBase) for k in kinds)


def test_forward_does_not_change_state_in_train_mode():
    # attacks rely on a forward pass leaving the network untouched, even in train mode
    net = DiskShapeNet(**TINY).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    net(torch.rand(2, 1, S, S))
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("head", ["pred", "seg"])
def test_gradient_reaches_the_input(head):
    torch.manual_seed(0)
    net = DiskShapeNet(**TINY).eval()
    x = torch.rand(2, 1, S, S, requires_grad=True)
    net(x)[head].pow(2).sum().backward()
    assert x.grad is not None
    assert torch.isfinite(x.grad).all()
    assert x.grad.abs().sum() > 0
    # each sample's gradient is non-zero (GroupNorm keeps samples independent)
    assert (x.grad.flatten(1).abs().sum(1) > 0).all()


def test_samples_are_independent():
    # no batch statistics: a sample's output does not depend on the rest of the batch
    torch.manual_seed(0)
    net = DiskShapeNet(**TINY).train()
    x = torch.rand(3, 1, S, S)
    full = net(x)
    single = net(x[:1])
    assert torch.allclose(full["pred"][:1], single["pred"], atol=1e-5)
    assert torch.allclose(full["seg"][:1], single["seg"], atol=1e-5)


def test_eval_is_deterministic():
    torch.manual_seed(0)
    net = DiskShapeNet(**TINY).eval()
    x = torch.rand(2, 1, S, S)
    with torch.no_grad():
        a, b = net(x), net(x)
    assert torch.equal(a["pred"], b["pred"]) and torch.equal(a["seg"], b["seg"])


def test_state_dict_round_trip_weights_only(tmp_path):
    torch.manual_seed(0)
    net = DiskShapeNet(**TINY)
    mean = ellipse_mean_shape(16, S) + torch.tensor([1.5, -2.0])
    net.set_mean_shape(mean)
    assert "mean_shape" in net.state_dict()
    path = tmp_path / "net.pt"
    torch.save(net.state_dict(), path)

    torch.manual_seed(1)
    other = DiskShapeNet(**TINY)
    x = torch.rand(2, 1, S, S)
    with torch.no_grad():
        assert not torch.allclose(other.eval()(x)["seg"], net.eval()(x)["seg"])
        other.load_state_dict(torch.load(path, weights_only=True))
        a, b = net(x), other(x)
    assert torch.equal(other.mean_shape, mean)
    assert torch.equal(a["pred"], b["pred"]) and torch.equal(a["seg"], b["seg"])


def test_set_mean_shape_validates_and_shifts_prediction():
    net = DiskShapeNet(**TINY).eval()
    x = torch.rand(1, 1, S, S)
    with torch.no_grad():
        before = net(x)["pred"]
        net.set_mean_shape(net.mean_shape + torch.tensor([3.0, 4.0]))
        after = net(x)["pred"]
    assert torch.allclose(after - before, torch.tensor([3.0, 4.0]).expand_as(before), atol=1e-5)
    with pytest.raises(ValueError, match=r"expected shape \(16, 2\)"):
        net.set_mean_shape(torch.zeros(15, 2))
    with pytest.raises(ValueError, match="NaN"):
        net.set_mean_shape(torch.full((16, 2), float("nan")))


def test_ellipse_mean_shape_point_order():
    pts = ellipse_mean_shape(176, 128)
    corners = pts[[0, 44, 88, 132]]
    # anterior-superior (upper left), anterior-inferior, posterior-inferior, posterior-superior
    assert corners[0, 0] < 64 and corners[0, 1] < 64
    assert corners[1, 0] < 64 and corners[1, 1] > 64
    assert corners[2, 0] > 64 and corners[2, 1] > 64
    assert corners[3, 0] > 64 and corners[3, 1] < 64
    # side 0 runs down the anterior side
    assert (pts[1:44, 1].diff() > 0).all()


def _synthetic_patches(n: int, num_points: int, generator: torch.Generator):
    """Bright ellipses of random size and position: images (n,1,S,S), points (n,P,2), masks (n,1,S,S)."""
    yy, xx = torch.meshgrid(torch.arange(S).float(), torch.arange(S).float(), indexing="ij")
    images, points, masks = [], [], []
    for _ in range(n):
        a, b, cx, cy = (torch.rand(4, generator=generator) * torch.tensor([5.0, 3.0, 6.0, 6.0])
                        + torch.tensor([5.0, 2.5, S / 2 - 3, S / 2 - 3])).tolist()
        theta = -torch.pi / 4 + 2 * torch.pi * torch.arange(num_points) / num_points
        points.append(torch.stack([cx - a * torch.cos(theta), cy + b * torch.sin(theta)], 1))
        mask = (((xx - cx) / a) ** 2 + ((yy - cy) / b) ** 2 <= 1).float()
        masks.append(mask[None])
        images.append(0.2 + 0.6 * mask[None])
    return torch.stack(images), torch.stack(points), torch.stack(masks)


def test_tiny_overfit_lowers_the_loss():
    torch.manual_seed(0)
    images, points, masks = _synthetic_patches(4, 16, torch.Generator().manual_seed(0))
    net = DiskShapeNet(**TINY).train()
    # start far from the truth so the point head has to learn
    net.set_mean_shape(net.mean_shape + 3.0)
    loss_fn = DiskShapeLoss()
    optimiser = torch.optim.Adamax(net.parameters(), lr=2e-3)
    targets = {"points": points, "mask": masks}
    losses, terms = [], []
    for _ in range(40):
        loss = loss_fn(net(images), targets)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
        terms.append(dict(loss_fn.last_terms))
    assert losses[-1] < 0.5 * losses[0]
    assert terms[-1]["point_mae"] < 0.3 * terms[0]["point_mae"]
    assert terms[-1]["seg"] < terms[0]["seg"] - 0.1


def test_forward_is_torchscript_compatible_and_export_gives_channel_first_points():
    """ckpt_export scripts the network: both forwards must script and match the eager model."""
    from diskrobust.networks import DiskShapeNet

    torch.manual_seed(0)
    net = DiskShapeNet(spatial_size=32, width=8, blocks=(1, 1)).eval()
    export = DiskShapeNet(spatial_size=32, width=8, blocks=(1, 1), export=True).eval()
    export.load_state_dict(net.state_dict())  # the same parameters
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        eager = net(x)
        scripted = torch.jit.script(net)(x)
        points = torch.jit.script(export)(x)
    torch.testing.assert_close(scripted["pred"], eager["pred"])
    torch.testing.assert_close(scripted["seg"], eager["seg"])
    assert points.shape == (2, 2, 176)
    torch.testing.assert_close(points, eager["pred"].transpose(1, 2))
    with pytest.raises(Exception, match=r"expects input of shape \(B, 1, 32, 32\)"):
        torch.jit.script(net)(torch.rand(1, 1, 16, 16))
    with pytest.raises(ValueError, match="needs point_head"):
        DiskShapeNet(spatial_size=32, width=8, blocks=(1, 1), point_head=False, export=True)

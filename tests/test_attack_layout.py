"""The attack layout (diskrobust.attacks.layout): a channels_last copy that leaves the network alone,
and the autotune that times the candidates and keeps the fastest."""

from __future__ import annotations

import pytest
import torch

from diskrobust.attacks import PGD, AttackLayout, layout_model, tune_attack_layout
from diskrobust import compute
from diskrobust.attacks import layout as layout_mod
from diskrobust.networks import DiskShapeNet


def is_channels_last(net) -> bool:
    # every 4-D weight (a 1-channel stem is both layouts at once, the others are not)
    return all(p.is_contiguous(memory_format=torch.channels_last) for p in net.parameters() if p.ndim == 4)


def small_net() -> DiskShapeNet:
    torch.manual_seed(0)
    return DiskShapeNet(spatial_size=32, width=4, blocks=(1, 1), norm_groups=2)


def test_channels_last_copy_computes_the_same_and_leaves_the_network_alone():
    net = small_net().train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert layout_model(net, False) is net
    twin = layout_model(net, True)
    assert twin is not net and not twin.training and net.training
    assert is_channels_last(twin) and not is_channels_last(net)
    assert all(p.is_contiguous() for p in net.parameters())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    x = torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, out = net.eval()(x), twin(x)
    assert torch.allclose(out["pred"], ref["pred"], atol=1e-4) and torch.allclose(out["seg"], ref["seg"], atol=1e-4)


def test_fixed_settings_are_returned_untimed():
    net = small_net()
    x = torch.rand(6, 1, 32, 32)
    assert tune_attack_layout(net, x, channels_last=False, chunk_size=4) == (AttackLayout(False, 4), {})
    assert tune_attack_layout(net, x, channels_last="true", chunk_size=0) == (AttackLayout(True, None), {})
    with pytest.raises(ValueError, match="chunk_size: must be a positive integer"):
        tune_attack_layout(net, x, chunk_size=-1)
    with pytest.raises(ValueError, match="channels_last: must be true, false or 'auto'"):
        tune_attack_layout(net, x, channels_last="sometimes")


def test_autotune_times_every_candidate_and_keeps_the_fastest(monkeypatch):
    net = small_net().train()
    grads = [p.requires_grad for p in net.parameters()]
    x = torch.rand(10, 1, 32, 32)
    # a clock that makes NCHW in chunks of 4 the fastest candidate, whatever the machine does
    calls, clock = [], [0.0]
    real_step = layout_mod._attack_step

    def step(model, images, heads, chunk_size):
        channels_last = is_channels_last(model)
        calls.append((channels_last, chunk_size, heads))
        real_step(model, images, heads, chunk_size)
        clock[0] += 1.0 if (channels_last, chunk_size) == (False, 4) else 10.0

    monkeypatch.setattr(layout_mod, "_attack_step", step)
    monkeypatch.setattr(compute, "perf_counter", lambda: clock[0])  # the autotune's clock only
    chosen, timed = tune_attack_layout(net, x, heads=("pred",), repeats=3)
    # batch 10: both layouts x (whole batch, chunks of 4, chunks of 8); a warm-up round + 3 timed rounds
    assert sorted(timed) == sorted(f"{cl}, {c}" for cl in ("NCHW", "channels_last")
                                   for c in ("whole batch", "chunks of 4", "chunks of 8"))
    assert all(len(v) == 3 for v in timed.values()) and len(calls) == 6 * 4
    assert {c[2] for c in calls} == {("pred",)}
    assert chosen == AttackLayout(False, 4) and timed["NCHW, chunks of 4"] == [1.0, 1.0, 1.0]
    # the network is left as it was: mode, frozen flags, layout
    assert net.training and [p.requires_grad for p in net.parameters()] == grads
    assert not is_channels_last(net)


def test_pgd_on_the_channels_last_copy_is_as_strong():
    net = small_net().eval()
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(8, 1, 32, 32, generator=gen)
    targets = {"points": 16 + 4 * torch.randn(8, 176, 2, generator=gen)}
    ref = PGD(net, eps=0.05, steps=4, seed=0)(x, targets)
    cl = PGD(layout_model(net, True), eps=0.05, steps=4, seed=0, chunk_size=3)(x, targets)
    assert cl.losses.sum().item() == pytest.approx(ref.losses.sum().item(), rel=0.02)
    assert (cl.images - x).abs().max() <= 0.05 + 1e-6

"""The training step (channels_last, micro-batches, bf16) and the device-augmented loader."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.engines import SupervisedTrainer

from diskrobust.batch import prepare_disk_batch
from diskrobust.compute import channels_last_weight_grad_hazards
from diskrobust.data.contours import polygon_fill_torch
from diskrobust.datasets import PatchBank, ShapeAugmentedDataset
from diskrobust.handlers.adversarial import AdversarialTrainingHandler
from diskrobust.losses import DiskShapeLoss
from diskrobust.networks import DiskShapeNet, ellipse_mean_shape
from diskrobust.training import (DeviceAugmentedLoader, StepSettings, TrainingStep, augmentation_loader, autotune,
                                 forward_backward)
from diskrobust.transforms import ShapePCA

S = 32


def _net(seed=0, width=16):
    # width 16: with 8, channels_last training is refused on CPU (test_channels_last_refused_where_onednn_...)
    torch.manual_seed(seed)
    net = DiskShapeNet(width=width, spatial_size=S)
    # a non-trivial point head, so that its gradients are not ~0
    torch.nn.init.normal_(net.point_head[-1].weight, std=0.05)
    return net


def _batch(n, seed=1, weights=False):
    gen = torch.Generator().manual_seed(seed)
    image = torch.rand((n, 1, S, S), generator=gen)
    targets = {
        "points": ellipse_mean_shape(176, S) + torch.randn((n, 176, 2), generator=gen),
        "mask": (torch.rand((n, 1, S, S), generator=gen) > 0.5).float(),
    }
    if weights:
        targets["weight"] = torch.rand(n, generator=gen) * 2
    return image, targets


def _grads(net):
    return {k: p.grad.clone() for k, p in net.named_parameters()}


def test_samples_do_not_see_each_other_so_chunking_is_exact():
    # GroupNorm has no batch statistics: changing sample 0 leaves every other sample's output
    # bit-identical (same kernels, same batch shape), in train and eval mode. Across different batch
    # shapes the BLAS/oneDNN kernels may sum in another order, so chunked outputs are equal up to rounding.
    net = _net()
    image, _ = _batch(7)
    changed = image.clone()
    changed[0] = torch.rand_like(changed[0])
    for mode in (net.eval, net.train):
        mode()
        with torch.no_grad():
            whole, other = net(image), net(changed)
            parts = [net(image[s:s + 3]) for s in range(0, 7, 3)]
        for key in whole:
            assert not torch.equal(whole[key][0], other[key][0])
            assert torch.equal(whole[key][1:], other[key][1:]), key
            assert torch.allclose(whole[key], torch.cat([p[key] for p in parts]), rtol=1e-5, atol=1e-5), key


@pytest.mark.parametrize("weights", [False, True])
def test_micro_batch_gradient_is_the_whole_batch_gradient(weights):
    image, targets = _batch(7, weights=weights)
    grads, losses = [], []
    for settings in (StepSettings(), StepSettings(micro_batch=3), StepSettings(channels_last=True, micro_batch=2)):
        net = _net()
        pred, loss = forward_backward(net, DiskShapeLoss(), image, targets, settings)
        assert pred["pred"].shape == (7, 176, 2) and pred["seg"].shape == (7, 1, S, S)
        grads.append(_grads(net))
        losses.append(loss)
    for other, loss in zip(grads[1:], losses[1:]):
        assert torch.allclose(loss, losses[0], rtol=1e-5)
        # biases in front of a GroupNorm have a zero gradient in exact arithmetic: compare every tensor
        # against the scale of the whole gradient
        scale = max(g.abs().max().item() for g in grads[0].values())
        for key, g in grads[0].items():
            assert torch.allclose(other[key], g, rtol=1e-4, atol=1e-5 * scale), key


def _trainer(net, step=None, handler=None, iterations=2, batch=6, amp=False, optimiser=torch.optim.Adamax, lr=1e-3):
    image, targets = _batch(batch * iterations, seed=3)
    items = [{"image": image[i], "points": targets["points"][i], "mask": targets["mask"][i]}
             for i in range(len(image))]
    loader = torch.utils.data.DataLoader(items, batch_size=batch)
    trainer = SupervisedTrainer(device=torch.device("cpu"), max_epochs=1, train_data_loader=loader, network=net,
                                optimizer=optimiser(net.parameters(), lr=lr), loss_function=DiskShapeLoss(),
                                prepare_batch=prepare_disk_batch, decollate=False, iteration_update=step, amp=amp)
    if handler is not None:
        handler.attach(trainer)
    return trainer


@pytest.mark.parametrize("mode, iterations", [("std", 2), ("adv_rs", 1)])
def test_trainer_with_the_step_trains_like_monai_default(mode, iterations):
    # adv_rs puts non-uniform per-sample weights (0.5 / 0.25) in the tripled batch; one iteration only,
    # because the next PGD's sign(grad) flips on float noise. SGD, because Adamax turns the float noise
    # of the ~0 gradients (biases in front of GroupNorm) into steps of size lr.
    def run(step):
        net = _net()
        handler = AdversarialTrainingHandler(mode, eps=0.05, steps=1, step_size=0.02, ramp_epochs=0, seed=4)
        trainer = _trainer(net, step, handler, iterations=iterations, optimiser=torch.optim.SGD, lr=0.1)
        trainer.run()
        return net, trainer.state.output

    ref_net, ref_out = run(None)
    step = TrainingStep(channels_last=True, micro_batch=5)
    net, out = run(step)
    assert step.settings == StepSettings(True, 5, "fp32")
    assert torch.allclose(out["loss"], ref_out["loss"], rtol=1e-5)
    batch = 6 if mode == "std" else 18  # clean + two adversarial sets
    assert out["pred"]["pred"].shape == ref_out["pred"]["pred"].shape == (batch, 176, 2)
    # compare the updates (parameters - initial ones), not the parameters, so a wrong step shows
    init = dict(_net().named_parameters())
    ref = {k: p.detach() - init[k] for k, p in ref_net.named_parameters()}
    scale = max(u.abs().max().item() for u in ref.values())
    for key, p in net.named_parameters():
        assert torch.allclose(p.detach() - init[key], ref[key], rtol=1e-3, atol=1e-4 * scale), key
    conv = next(p for p in net.parameters() if p.ndim == 4 and p.shape[1] > 1)  # (C=1: both layouts coincide)
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()


def test_autotune_times_candidates_on_a_copy():
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    rng = torch.get_rng_state()
    image, _ = _batch(8)
    candidates = [StepSettings(False, None), StepSettings(True, 4)]
    best, timings = autotune(net, DiskShapeLoss(), image, candidates=candidates, repeats=2)
    assert best in candidates
    assert sorted(timings) == sorted(c.describe() for c in candidates)
    assert all(len(v) == 2 and min(v) > 0 for v in timings.values())
    assert torch.equal(torch.get_rng_state(), rng)
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key]) and value.is_contiguous(), key
    assert all(p.grad is None for p in net.parameters())

    step = TrainingStep(channels_last="auto", micro_batch="auto", autotune_repeats=1)
    trainer = _trainer(_net(), step, batch=8, iterations=1)
    trainer.run()
    assert trainer.state.training_step == {"channels_last": step.settings.channels_last,
                                           "micro_batch": step.settings.micro_batch, "precision": "fp32"}
    # whole batch and chunks of 4 (the chunk sizes below the batch of 8), in both layouts
    assert len(step.timings) == 4


def test_bf16_step_keeps_fp32_outputs_loss_and_weights():
    image, targets = _batch(4)
    results = {}
    for precision in ("fp32", "bf16"):
        net = _net()
        pred, loss = forward_backward(net, DiskShapeLoss(), image, targets, StepSettings(precision=precision))
        assert pred["pred"].dtype == pred["seg"].dtype == loss.dtype == torch.float32
        assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in net.parameters())
        results[precision] = (loss, _grads(net))
    loss32, grad32 = results["fp32"]
    loss16, grad16 = results["bf16"]
    assert not torch.equal(loss16, loss32)  # the forward really ran in bfloat16 ...
    assert torch.allclose(loss16, loss32, rtol=2e-2)  # ... and still computes the same loss
    cosine = torch.nn.functional.cosine_similarity(torch.cat([g.flatten() for g in grad16.values()]),
                                                   torch.cat([g.flatten() for g in grad32.values()]), dim=0)
    assert cosine > 0.95  # bfloat16 keeps 8 significant bits


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="precision: must be one of"):
        TrainingStep(precision="fp16")
    with pytest.raises(ValueError, match="micro_batch: must be"):
        TrainingStep(micro_batch=-2)
    with pytest.raises(ValueError, match="channels_last: must be"):
        TrainingStep(channels_last="yes")
    with pytest.raises(ValueError, match="amp=True"):
        _trainer(_net(), TrainingStep(), amp=True).run()
    net = _net()
    trainer = _trainer(net, TrainingStep(micro_batch=2))
    trainer.loss_function = lambda out, tgt: (out["pred"] - tgt["points"]).abs().sum()
    with pytest.raises(ValueError, match="mean over samples"):
        trainer.run()


def test_channels_last_refused_where_onednn_gets_weight_gradients_wrong(caplog):
    # DiskShapeNet(width=8) downsamples its first two stages' residuals with strided 1x1 convolutions of
    # 8 input channels: in channels_last, oneDNN's weight gradient for them crashes or is wrong (issue 6035)
    narrow = _net(width=8)
    hazards = channels_last_weight_grad_hazards(narrow, "cpu")
    assert [h.split()[0] for h in hazards] == ["encoder.0.0.conv3.conv", "encoder.1.0.conv3.conv"]
    assert "8 input channels, stride (2, 2)" in hazards[0]
    assert channels_last_weight_grad_hazards(_net(), "cpu") == []  # width 16 (the bundle's)
    assert channels_last_weight_grad_hazards(narrow, "cuda") == []  # cuDNN is not affected
    narrow.requires_grad_(False)  # the attacks' input gradients are not affected either
    assert channels_last_weight_grad_hazards(narrow, "cpu") == []

    image, targets = _batch(4)
    with pytest.raises(ValueError, match=r"channels_last: true cannot train this network.*encoder\.0\.0\.conv3\.conv"):
        forward_backward(_net(width=8), DiskShapeLoss(), image, targets, StepSettings(channels_last=True))
    with pytest.raises(ValueError, match=r"oneDNN issue 6035.*DiskShapeNet: width 16 or more"):
        _trainer(_net(width=8), TrainingStep(channels_last=True)).run()

    net = _net(width=8)
    step = TrainingStep(channels_last="auto", micro_batch="auto", autotune_repeats=1)
    with caplog.at_level("WARNING", logger="diskrobust.training.step"):
        _trainer(net, step, batch=8, iterations=1).run()
    assert step.settings.channels_last is False
    assert sorted(step.timings) == ["NCHW, micro-batches of 4, fp32", "NCHW, whole batch, fp32"]
    assert "channels_last 'auto' keeps NCHW" in caplog.text and "encoder.1.0.conv3.conv" in caplog.text
    assert all(p.is_contiguous() for p in net.parameters())


def _synthetic_bank(n=4, size=128):
    rng = np.random.default_rng(0)
    base = ellipse_mean_shape(176, size).numpy()
    points = np.stack([base * (1 + 0.05 * rng.standard_normal()) + rng.normal(0, 1.0, 2) for _ in range(n)])
    points = points.astype(np.float32)
    masks = polygon_fill_torch(torch.from_numpy(points), (size, size)).numpy().astype(np.uint8)
    images = (0.2 + 0.6 * masks + 0.05 * rng.random(masks.shape)).astype(np.float32)
    return PatchBank(images=images, points=points, masks=masks, levels=["L4-L5"] * n,
                     subjects=[f"s{i}" for i in range(n)], centres=np.zeros((n, 2), np.float32),
                     scales=np.ones((n, 2), np.float32), patch_size=size)


def test_device_augmented_loader_gives_the_dataset_samples_in_order():
    bank = _synthetic_bank()
    ds = ShapeAugmentedDataset(bank, ShapePCA.fit(bank.points), n_modes=2, samples_per_epoch=5, seed=2)
    loader = DeviceAugmentedLoader(ds, batch_size=2, device="cpu")
    assert len(loader) == 3 and len(DeviceAugmentedLoader(ds, 2, "cpu", drop_last=True)) == 2
    ds.set_epoch(3)
    batches = list(loader)
    assert [b["image"].shape[0] for b in batches] == [2, 2, 1]
    for i in range(5):
        item, batch = ds[i], batches[i // 2]
        assert torch.equal(batch["points"][i % 2], item["points"])
        assert torch.allclose(batch["image"][i % 2], item["image"], atol=1e-4)
    ds.set_epoch(4)  # read at iteration time: a new epoch gives new samples
    assert not torch.equal(next(iter(loader))["points"], batches[0]["points"])
    assert isinstance(augmentation_loader(ds, 2, "cpu"), torch.utils.data.DataLoader)
    # a sampler's indices (a DDP rank's shard) are kept
    shard = DeviceAugmentedLoader(ds, 2, "cpu", indices=[4, 1, 3])
    assert len(shard) == 2
    assert torch.equal(next(iter(shard))["points"][1], ds[1]["points"])
    with pytest.raises(ValueError, match="needs a CUDA device"):
        augmentation_loader(ds, 2, "cpu", gpu_augment=True)
    with pytest.raises(TypeError, match="ShapeAugmentedDataset"):
        DeviceAugmentedLoader([1, 2], 2, "cpu")

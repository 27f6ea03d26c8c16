"""AdversarialTrainingHandler inside a real MONAI SupervisedTrainer, for every arm."""

from __future__ import annotations

import math
from datetime import timedelta

import pytest
import torch
from ignite.engine import Events
from monai.engines import SupervisedTrainer
from torch.utils.data import DataLoader

from diskrobust.batch import prepare_disk_batch
from diskrobust.handlers.adversarial import AdversarialTrainingHandler
from diskrobust.losses import DiskShapeLoss, point_sse_per_sample, soft_dice_loss_per_sample
from diskrobust.networks import DiskShapeNet

SIZE = 16
BATCH = 4


def synthetic_items(n: int, seed: int = 0) -> list[dict]:
    """n dataset items {"image" (1, S, S), "points" (176, 2), "mask" (1, S, S), "subject" str} of bright ellipses."""
    gen = torch.Generator().manual_seed(seed)
    grid = torch.arange(SIZE, dtype=torch.float32)
    yy, xx = torch.meshgrid(grid, grid, indexing="ij")
    theta = -math.pi / 4 + 2 * math.pi * torch.arange(176) / 176
    items = []
    for i in range(n):
        cx, cy, a, b = (SIZE / 2 + torch.rand(2, generator=gen) * 2 - 1).tolist() + \
            (SIZE * torch.tensor([0.25, 0.12]) * (1 + 0.3 * torch.rand(2, generator=gen))).tolist()
        points = torch.stack([cx - a * torch.cos(theta), cy + b * torch.sin(theta)], dim=-1)
        mask = ((((xx - cx) / a) ** 2 + ((yy - cy) / b) ** 2) <= 1).float()[None]
        image = (0.25 + 0.5 * mask + 0.05 * torch.randn(mask.shape, generator=gen)).clamp(0, 1)
        items.append({"image": image, "points": points, "mask": mask, "subject": f"sub-{i:04d}"})
    return items


def make_trainer(max_epochs: int = 1, n: int = 8, seed: int = 0, network=None, **trainer_kwargs):
    torch.manual_seed(seed)
    if network is None:
        network = DiskShapeNet(width=8, spatial_size=SIZE, blocks=(1, 1))
    loader = DataLoader(synthetic_items(n), batch_size=BATCH, shuffle=False)
    optimizer = torch.optim.Adamax(network.parameters(), lr=1e-2)
    trainer = SupervisedTrainer(device=torch.device("cpu"), max_epochs=max_epochs, train_data_loader=loader,
                                network=network, optimizer=optimizer, loss_function=DiskShapeLoss(),
                                prepare_batch=prepare_disk_batch, decollate=False, **trainer_kwargs)
    return trainer


def record_batches(trainer) -> list[dict]:
    """Capture each iteration's batch, as the trainer will see it, with the loss formula's terms."""
    seen = []

    @trainer.on(Events.ITERATION_STARTED)
    def _record(engine):
        seen.append({"batch": dict(engine.state.batch), "epoch": engine.state.epoch,
                     "eps": getattr(engine.state, "adv_eps", None),
                     "state": {k: v.clone() for k, v in engine.network.state_dict().items()}})
    return seen


def terms(network, image, points, mask):
    """DiskShapeLoss's two per-sample terms, unweighted means, in the network's current mode."""
    loss = DiskShapeLoss()
    with torch.no_grad():
        loss(network(image), {"points": points, "mask": mask})
    return sum(loss.last_terms.values())


SETS = {"rand": 1, "adv_r": 1, "adv_s": 1, "adv_rs": 2, "fast_r": 1}


@pytest.mark.parametrize("mode", ["rand", "adv_r", "adv_s", "adv_rs", "fast_r"])
def test_batch_holds_clean_and_adversarial_with_paper_weights(mode):
    trainer = make_trainer()
    handler = AdversarialTrainingHandler(mode, eps=0.05, steps=3, ramp_epochs=0, seed=1)
    handler.attach(trainer)
    seen = record_batches(trainer)
    losses = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(e.state.output["loss"].item()))
    trainer.run()

    assert len(seen) == 2
    k = SETS[mode]
    for record in seen:
        batch = record["batch"]
        clean = batch["image"][:BATCH]
        assert batch["image"].shape == (BATCH * (1 + k), 1, SIZE, SIZE)
        assert batch["subject"] == [f"sub-{i:04d}" for i in range(BATCH)] * (1 + k) or \
            batch["subject"] == [f"sub-{i:04d}" for i in range(BATCH, 2 * BATCH)] * (1 + k)
        for key in ("points", "mask"):
            torch.testing.assert_close(batch[key], torch.cat([batch[key][:BATCH]] * (1 + k)))
        expected_weight = [0.5] * BATCH + [0.5 / k] * (BATCH * k)
        torch.testing.assert_close(batch["weight"], torch.tensor(expected_weight))
        adv = batch["image"][BATCH:]
        assert adv.min() >= 0 and adv.max() <= 1
        assert (adv - clean.repeat(k, 1, 1, 1)).abs().max() <= 0.05 + 1e-6
        assert (adv - clean.repeat(k, 1, 1, 1)).abs().max() > 0.04
    # the trainer's weighted loss is exactly the paper's formula, with the weights of that iteration
    net = DiskShapeNet(width=8, spatial_size=SIZE, blocks=(1, 1))
    for record, loss in zip(seen, losses):
        net.load_state_dict(record["state"])
        b = record["batch"]
        parts = [terms(net, b["image"][i * BATCH:(i + 1) * BATCH], b["points"][:BATCH], b["mask"][:BATCH])
                 for i in range(1 + k)]
        formula = (parts[0] + parts[1]) / 2 if k == 1 else (parts[0] + 0.5 * parts[1] + 0.5 * parts[2]) / 2
        assert loss == pytest.approx(formula, rel=1e-4)
    assert trainer.state.adv_eps == pytest.approx(0.05)
    if mode == "rand":
        assert trainer.state.adv_loss == 0.0
    else:
        assert trainer.state.adv_loss > 0 and math.isfinite(trainer.state.adv_loss)


@pytest.mark.parametrize("mode,objective", [("adv_r", "points"), ("adv_s", "seg"), ("fast_r", "points")])
def test_adversarial_samples_are_worse_than_clean(mode, objective):
    trainer = make_trainer()
    AdversarialTrainingHandler(mode, eps=0.1, steps=4, ramp_epochs=0, seed=1).attach(trainer)
    seen = record_batches(trainer)
    trainer.run()
    net = DiskShapeNet(width=8, spatial_size=SIZE, blocks=(1, 1)).eval()
    net.load_state_dict(seen[0]["state"])
    b = seen[0]["batch"]
    with torch.no_grad():
        out = net(b["image"])
    per_sample = point_sse_per_sample(out["pred"], b["points"]) if objective == "points" else \
        soft_dice_loss_per_sample(out["seg"], b["mask"])
    assert (per_sample[BATCH:] > per_sample[:BATCH]).all()
    assert getattr(trainer.state, f"adv_loss_{objective}") > 0


def test_eps_ramps_linearly_over_epochs():
    trainer = make_trainer(max_epochs=3, n=4)
    AdversarialTrainingHandler("rand", eps=0.08, ramp_epochs=4, seed=0).attach(trainer)
    seen = record_batches(trainer)
    trainer.run()
    assert [r["eps"] for r in seen] == pytest.approx([0.02, 0.04, 0.06])
    for r in seen:
        diff = (r["batch"]["image"][BATCH:] - r["batch"]["image"][:BATCH]).abs().max()
        assert 0.9 * r["eps"] < diff <= r["eps"] + 1e-6
    handler = AdversarialTrainingHandler("adv_r", eps=0.07, ramp_epochs=100)
    assert handler.current_eps(1) == pytest.approx(0.0007) and handler.current_eps(100) == pytest.approx(0.07)
    assert handler.current_eps(250) == pytest.approx(0.07)


def _weights(trainer):
    return {k: v.clone() for k, v in trainer.network.state_dict().items()}


def test_std_arm_is_identical_to_no_handler():
    plain = make_trainer(max_epochs=2)
    plain.run()
    std = make_trainer(max_epochs=2)
    AdversarialTrainingHandler("std", seed=3).attach(std)
    std.run()
    a, b = _weights(plain), _weights(std)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_seeded_runs_reproduce_and_seeds_matter():
    runs = []
    for seed in (5, 5, 6):
        trainer = make_trainer()
        AdversarialTrainingHandler("adv_r", eps=0.05, steps=2, ramp_epochs=0, seed=seed).attach(trainer)
        trainer.run()
        runs.append(_weights(trainer))
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert not all(torch.equal(runs[0][k], runs[2][k]) for k in runs[0])


def test_attack_leaves_weights_grads_and_mode_alone_with_gradient_accumulation():
    trainer = make_trainer(n=16, accumulation_steps=2)
    snapshots = []

    def snapshot(engine):
        net = engine.network
        snapshots.append(({k: v.clone() for k, v in net.state_dict().items()},
                          [None if p.grad is None else p.grad.clone() for p in net.parameters()],
                          [m.training for m in net.modules()]))

    trainer.network.train()
    trainer.add_event_handler(Events.ITERATION_STARTED, snapshot)
    AdversarialTrainingHandler("adv_rs", eps=0.05, steps=2, ramp_epochs=0).attach(trainer)
    trainer.add_event_handler(Events.ITERATION_STARTED, snapshot)
    trainer.run()
    assert len(snapshots) == 8
    for before, after in zip(snapshots[::2], snapshots[1::2]):
        assert all(torch.equal(before[0][k], after[0][k]) for k in before[0])
        assert before[1] == [None] * len(before[1]) or all(
            torch.equal(g0, g1) for g0, g1 in zip(before[1], after[1]))
        assert before[2] == after[2]
    # accumulation: iterations 2 and 4 start with the gradients of 1 and 3 in place, and keep them
    assert all(g is not None for g in snapshots[2][1])


def test_adversarial_training_lowers_the_loss():
    trainer = make_trainer(max_epochs=6, n=16)
    AdversarialTrainingHandler("adv_r", eps=0.05, steps=2, ramp_epochs=3, seed=0).attach(trainer)
    per_epoch = {}
    trainer.add_event_handler(Events.ITERATION_COMPLETED,
                              lambda e: per_epoch.setdefault(e.state.epoch, []).append(e.state.output["loss"].item()))
    trainer.run()
    first, last = sum(per_epoch[1]) / 4, sum(per_epoch[6]) / 4
    assert all(math.isfinite(v) for vs in per_epoch.values() for v in vs)
    assert last < 0.7 * first, (first, last)


def test_logs_eps_and_losses_to_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(tmp_path))
    trainer = make_trainer(max_epochs=2, n=4)
    AdversarialTrainingHandler("adv_rs", eps=0.06, steps=1, ramp_epochs=2, summary_writer=writer).attach(trainer)
    trainer.run()
    writer.close()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert {"adversarial/eps", "adversarial/loss_points", "adversarial/loss_seg"} <= set(events.Tags()["scalars"])
    assert [e.value for e in events.Scalars("adversarial/eps")] == pytest.approx([0.03, 0.06])
    assert [e.step for e in events.Scalars("adversarial/loss_seg")] == [1, 2]


def test_ddp_wrapped_network_trains_like_the_plain_one():
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    plain = make_trainer()
    AdversarialTrainingHandler("adv_r", eps=0.05, steps=2, ramp_epochs=0, seed=2).attach(plain)
    plain.run()

    # An in-memory store, not a file under tmp_path: concurrent pytest runs prune each other's temp dirs,
    # and a vanished store file makes the rendezvous wait forever.
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1, timeout=timedelta(seconds=60))
    try:
        torch.manual_seed(0)
        net = DiskShapeNet(width=8, spatial_size=SIZE, blocks=(1, 1))
        wrapped = make_trainer(network=DistributedDataParallel(net))
        AdversarialTrainingHandler("adv_r", eps=0.05, steps=2, ramp_epochs=0, seed=2).attach(wrapped)
        wrapped.run()
    finally:
        dist.destroy_process_group()
    a = _weights(plain)
    b = net.state_dict()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6)


def test_bad_configuration_is_rejected():
    with pytest.raises(ValueError, match="mode"):
        AdversarialTrainingHandler("adv_x")
    with pytest.raises(ValueError, match="eps"):
        AdversarialTrainingHandler("adv_r", eps=-0.1)
    trainer = make_trainer(n=4)
    AdversarialTrainingHandler("adv_r", steps=1).attach(trainer)
    trainer.state.batch = [torch.zeros(1)]
    with pytest.raises(ValueError, match="dict batches"):
        AdversarialTrainingHandler("adv_r", steps=1)(trainer)


def test_incoming_per_sample_weight_is_multiplied_into_every_copy():
    """A batch that already weights its samples keeps those weights on the clean and on every adversarial
    copy, and the trainer's loss is the weighted mean with them."""
    items = synthetic_items(4)
    incoming = torch.tensor([1.0, 2.0, 0.5, 4.0])
    for item, w in zip(items, incoming):
        item["weight"] = w
    torch.manual_seed(0)
    network = DiskShapeNet(width=8, spatial_size=SIZE, blocks=(1, 1))
    trainer = SupervisedTrainer(device=torch.device("cpu"), max_epochs=1,
                                train_data_loader=DataLoader(items, batch_size=BATCH, shuffle=False),
                                network=network, optimizer=torch.optim.Adamax(network.parameters(), lr=1e-2),
                                loss_function=DiskShapeLoss(), prepare_batch=prepare_disk_batch, decollate=False)
    AdversarialTrainingHandler("adv_rs", eps=0.05, steps=2, ramp_epochs=0, seed=1).attach(trainer)
    seen = record_batches(trainer)
    losses = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(e.state.output["loss"].item()))
    trainer.run()
    batch = seen[0]["batch"]
    torch.testing.assert_close(batch["weight"], torch.cat([0.5 * incoming, 0.25 * incoming, 0.25 * incoming]))
    net = DiskShapeNet(width=8, spatial_size=SIZE, blocks=(1, 1))
    net.load_state_dict(seen[0]["state"])
    loss_fn = DiskShapeLoss()
    with torch.no_grad():
        expected = loss_fn(net(batch["image"]), {"points": batch["points"], "mask": batch["mask"],
                                                 "weight": batch["weight"]})
    assert losses[0] == pytest.approx(expected.item(), rel=1e-5)
    # the weights matter: the unweighted loss of the same batch differs
    with torch.no_grad():
        unweighted = loss_fn(net(batch["image"]), {"points": batch["points"], "mask": batch["mask"]})
    assert abs(unweighted.item() - expected.item()) > 1e-3 * expected.item()


def test_fast_arm_is_one_step_of_fgsm_with_random_start():
    """fast_r: U[-eps, eps] start, one sign step of 1.25 eps, projected: a pixel ends on the cube's face
    unless its start lay more than eps / 4 on the other side (P = 5/8), and the handler runs one gradient
    pass per iteration (plus the scoring pass), whatever `steps` says."""
    trainer = make_trainer()
    handler = AdversarialTrainingHandler("fast_r", eps=0.05, steps=20, ramp_epochs=0, seed=1)
    handler.attach(trainer)
    calls = []
    hook = trainer.network.stem.register_forward_hook(lambda m, i, o: calls.append(torch.is_grad_enabled()))
    seen = record_batches(trainer)
    trainer.run()
    hook.remove()
    batch = seen[0]["batch"]
    delta = (batch["image"][BATCH:] - batch["image"][:BATCH]).abs()
    free = (batch["image"][:BATCH] > 0.05) & (batch["image"][:BATCH] < 0.95)
    on_face = (delta[free] > 0.0499).float().mean()
    assert delta.max() <= 0.05 + 1e-6 and 0.55 < on_face < 0.7, on_face
    # per iteration: the attack's forward with a graph, its scoring forward without, the training forward
    assert calls == [True, False, True] * 2, calls


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_adversarials_are_generated_in_the_handlers_precision(precision):
    trainer = make_trainer()
    dtypes = set()
    trainer.network.stem.conv.register_forward_hook(
        lambda mod, args, out: dtypes.add(out.dtype) if torch.is_grad_enabled() and not mod.training else None)
    AdversarialTrainingHandler("adv_r", eps=0.1, steps=2, ramp_epochs=0, seed=1, precision=precision).attach(trainer)
    trainer.run()
    # the attack's gradient passes (eval mode, autograd on) ran in bf16 only when asked; training stayed fp32
    assert dtypes == ({torch.bfloat16} if precision == "bf16" else {torch.float32})
    assert getattr(trainer.state, "adv_loss_points") > 0
    with pytest.raises(ValueError, match="precision: must be one of"):
        AdversarialTrainingHandler("adv_r", precision="half")

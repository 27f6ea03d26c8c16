"""The adaptive-margin (IMA-style) adversarial-training arm: per-sample PGD budgets, the budget rule on a
network whose robustness the test controls, the checkpointed state, and a tiny bundle run with resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ignite.engine import Events
from monai.engines import SupervisedTrainer
from torch import nn
from torch.utils.data import DataLoader

from diskrobust.attacks import PGD
from diskrobust.batch import prepare_disk_batch
from diskrobust.handlers import AdaptiveMarginTrainingHandler, AdversarialTrainingHandler
from diskrobust.losses import DiskShapeLoss
from diskrobust.networks import DiskShapeNet

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundles" / "lumbar_disk_shape" / "configs"
SIZE = 16


# ------------------------------------------------------------------ PGD with one budget per sample


def test_pgd_takes_one_budget_per_sample():
    torch.manual_seed(0)
    net = DiskShapeNet(width=8, spatial_size=SIZE, blocks=(1, 1))
    x = torch.rand(4, 1, SIZE, SIZE) * 0.8 + 0.1
    targets = {"points": torch.rand(4, 176, 2) * SIZE}
    eps = torch.tensor([0.0, 0.01, 0.03, 0.06])
    kw = dict(steps=3, norm="linf", objective="points")
    res = PGD(net, eps=eps, step_size=eps / 4, seed=3, **kw)(x, targets)
    linf = res.deltas.flatten(1).abs().max(1).values
    assert (linf <= eps + 1e-6).all() and (linf[1:] > 0.9 * eps[1:]).all() and linf[0] == 0
    # sample i is exactly the attack at the scalar budget eps_i (the starts are drawn alike, only scaled)
    for i in (1, 3):
        alone = PGD(net, eps=float(eps[i]), step_size=float(eps[i]) / 4, seed=3, **kw)(x, targets)
        torch.testing.assert_close(res.images[i], alone.images[i], rtol=0, atol=1e-6)
    chunked = PGD(net, eps=eps, step_size=eps / 4, seed=3, chunk_size=3, **kw)(x, targets)
    torch.testing.assert_close(chunked.images, res.images, rtol=0, atol=1e-6)
    l2 = PGD(net, eps=eps * 10, steps=2, norm="l2", objective="points", seed=1)(x, targets)
    assert (l2.deltas.flatten(1).norm(dim=1) <= eps * 10 + 1e-5).all()
    with pytest.raises(ValueError, match=r"per-sample eps must have shape \(3,\)"):
        PGD(net, eps=eps, **kw)(x[:3], {"points": targets["points"][:3]})
    with pytest.raises(ValueError, match="per-sample step_size needs update='sign'"):
        PGD(net, eps=eps, step_size=eps, update="adamax")


# ------------------------------------------------------------------ the budget rule


def test_budget_rule_on_given_outcomes():
    h = AdaptiveMarginTrainingHandler(eps=0.05, eps_step=0.02, shrink_step=0.01, eps_init=0.02, eps_min=0.005)
    assert h.update_budgets(["a", "b", "c", "c"], [True, False, False, True]) == {"a": True, "b": False, "c": False}
    # a grows by the step, b and c (one of c's two copies was fooled) shrink
    assert h.budgets == pytest.approx({"a": 0.04, "b": 0.01, "c": 0.01})
    h.update_budgets(["a", "b", "b"], [True, False, False])
    assert h.budgets == pytest.approx({"a": 0.05, "b": 0.005, "c": 0.01})  # capped at eps_max, floored at eps_min
    h.update_budgets(["a", "b"], [True, False])
    assert h.budgets["a"] == pytest.approx(0.05) and h.budgets["b"] == pytest.approx(0.005)
    stay = AdaptiveMarginTrainingHandler(eps=0.05, eps_step=0.01, shrink_step=0.0)
    stay.update_budgets(["a"], [False])
    assert stay.budgets == pytest.approx({"a": 0.01})
    s = h.summary()
    assert s["budget_mean"] == pytest.approx((0.05 + 0.005 + 0.01) / 3) and s["budget_min"] == pytest.approx(0.005)
    assert s["budget_max"] == pytest.approx(0.05) and s["budget_at_max"] == pytest.approx(1 / 3)


class GatedNet(nn.Module):
    """Points = base + 1000 * gate * (x[0, 0] - 0.5), gate = x[1, 1] > 0.5: a sample whose gate pixel is 1
    moves by 1000 px per unit of one pixel (fooled by any budget), one whose gate is 0 cannot move at all."""

    def __init__(self, base: torch.Tensor):
        super().__init__()
        self.register_buffer("base", base)
        self.bias = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        gate = (x[:, 0, 1, 1] > 0.5).to(x.dtype)
        shift = 1000.0 * gate * (x[:, 0, 0, 0] - 0.5)
        return {"pred": self.base + shift[:, None, None] + 0.0 * self.bias}


def test_budgets_grow_for_robust_disks_only_and_each_sample_gets_its_own(tmp_path):
    base = torch.rand(176, 2, generator=torch.Generator().manual_seed(0)) * SIZE
    items = []
    for i in range(8):
        image = torch.full((1, SIZE, SIZE), 0.5)
        image[0, 1, 1] = float(i % 2)  # odd subjects are sensitive
        items.append({"image": image, "points": base.clone(), "mask": torch.zeros(1, SIZE, SIZE),
                      "subject": f"sub-{i}"})
    net = GatedNet(base)
    trainer = SupervisedTrainer(device=torch.device("cpu"), max_epochs=3,
                                train_data_loader=DataLoader(items, batch_size=4, shuffle=False), network=net,
                                optimizer=torch.optim.Adamax(net.parameters(), lr=1e-3), loss_function=DiskShapeLoss(),
                                prepare_batch=prepare_disk_batch, decollate=False)
    handler = AdaptiveMarginTrainingHandler(eps=0.035, steps=3, step_size=0.01, eps_step=0.01, shrink_step=0.005,
                                            eps_init=0.01, eps_min=0.005, tolerance_px=1.0, identity=("subject",),
                                            seed=0)
    handler.attach(trainer)
    seen = []

    @trainer.on(Events.ITERATION_STARTED)
    def _record(engine):
        b = engine.state.batch
        seen.append((list(b["subject"][:4]), (b["image"][4:] - b["image"][:4]).flatten(1).abs().max(1).values,
                     engine.state.adv_robust_fraction))

    trainer.run()
    robust = [f"sub-{i}" for i in range(0, 8, 2)]
    fooled = [f"sub-{i}" for i in range(1, 8, 2)]
    assert handler.budgets == pytest.approx({**{k: 0.035 for k in robust}, **{k: 0.005 for k in fooled}})
    # every adversarial copy used its own disk's budget of that moment
    expected = {k: [0.01, 0.02, 0.03] for k in robust} | {k: [0.01, 0.005, 0.005] for k in fooled}
    for n, (subjects, linf, fraction) in enumerate(seen):
        epoch = n // 2
        want = torch.tensor([expected[s][epoch] for s in subjects])
        assert (linf <= want + 1e-6).all() and (linf > 0.8 * want).all(), (n, linf, want)
        assert fraction == 0.5
    assert trainer.state.adv_budget_disks == 8 and trainer.state.adv_budget_at_max == 0.5


def test_a_batch_without_the_identity_keys_is_refused():
    h = AdaptiveMarginTrainingHandler()
    with pytest.raises(ValueError, match=r"no \['level'\]"):
        h.sample_keys({"image": torch.zeros(2, 1, 4, 4), "subject": ["a", "b"]}, 2)
    with pytest.raises(ValueError, match="AdaptiveMarginTrainingHandler"):
        AdversarialTrainingHandler("ima")
    with pytest.raises(ValueError, match="runs adv_mode 'ima'"):
        AdaptiveMarginTrainingHandler("adv_r")
    from diskrobust.run_time_estimate import adversarial_work

    assert adversarial_work("ima", 20) == (1, 20)  # the bundle's up-front run-time estimate knows the arm


# ------------------------------------------------------------------ checkpointed state


def test_budgets_survive_a_checkpoint_round_trip(tmp_path):
    h = AdaptiveMarginTrainingHandler(eps=0.07, eps_step=0.01)
    h.update_budgets(["sub-0/L4/L5", "sub-1/L5/S1", "sub-0/L4/L5"], [True, False, True])
    h.update_budgets(["sub-0/L4/L5"], [True])
    torch.save({"adversarial": h.state_dict()}, tmp_path / "c.pt")
    state = torch.load(tmp_path / "c.pt", weights_only=True)["adversarial"]
    again = AdaptiveMarginTrainingHandler(eps=0.07, eps_step=0.01)
    again.load_state_dict(state)
    assert again.budgets == pytest.approx({"sub-0/L4/L5": 0.03, "sub-1/L5/S1": 0.0})
    with pytest.raises(ValueError, match="other adaptive-margin settings.*tolerance_px"):
        AdaptiveMarginTrainingHandler(eps=0.07, eps_step=0.01, tolerance_px=3.0).load_state_dict(state)
    with pytest.raises(ValueError, match="not adaptive-margin budgets"):
        again.load_state_dict({"keys": []})


# ------------------------------------------------------------------ the bundle


TINY = {"width": 8, "samples_per_epoch": 8, "batch_size": 4, "shape_modes": 3, "progress_bar": False,
        "tb_images": 1, "log_every": 2, "patch_size": 64, "patch_spacing_mm": 1.0, "ckpt": "", "adv_steps": 2,
        "ima_eps_step": 0.02, "ima_tolerance_px": 3.0}


def _checkpoint(folder: Path, epoch: int) -> dict:
    return torch.load(folder / "models" / f"checkpoint_epoch={epoch}.pt", weights_only=True)


def test_bundle_ima_arm_logs_budgets_and_resumes_them(tiny_phantom, tmp_path, tensorboard_scalars):
    out = tmp_path / "ima"
    files = json.dumps([str(CONFIGS / f) for f in ("train.json", "train_adversarial.json", "train_ima.json")])
    args = [a for k, v in {**TINY, "dataset_dir": tiny_phantom, "output_dir": out, "epochs": 1}.items()
            for a in (f"--{k}", str(v))]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", files, *args],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]

    first = _checkpoint(out, 1)["adversarial"]
    keys, eps = first["keys"], first["eps"]
    assert len(keys) >= 2 and all(k.startswith("sub-") and k.count("/") >= 1 for k in keys), keys
    assert ((eps >= 0) & (eps <= 0.07 + 1e-9)).all()
    tags = tensorboard_scalars(out / "logs")
    for name, value in (("mean", eps.mean()), ("min", eps.min()), ("max", eps.max()), ("disks", len(keys))):
        (logged,) = tags[f"adversarial/budget_{name}"]
        assert logged[1] == pytest.approx(float(value), abs=1e-6), name
    assert len(tags["adversarial/eps"]) == 2 and len(tags["adversarial/robust_fraction"]) == 2

    # resume for a second epoch: the loader restores the budgets before the first iteration
    from monai.bundle import ConfigWorkflow

    wf = ConfigWorkflow(config_file=json.loads(files), workflow_type="train",
                        **{**TINY, "dataset_dir": str(tiny_phantom), "output_dir": str(out), "epochs": 2, "resume": True})
    wf.initialize()
    handler = wf.parser.get_parsed_content("adversarial#handler")
    assert isinstance(handler, AdaptiveMarginTrainingHandler)
    restored = {}
    wf.parser.get_parsed_content("train#trainer").add_event_handler(
        Events.EPOCH_STARTED, lambda: restored.update(handler.budgets))
    wf.run()
    wf.finalize()
    assert restored == pytest.approx(dict(zip(keys, eps.tolist())))
    second = _checkpoint(out, 2)["adversarial"]
    assert set(second["keys"]) >= set(keys)


def test_study_arms_fast_r_and_ima_reach_the_bundle_with_their_configs(tmp_path):
    from diskrobust.study.grid import load_study_config
    from diskrobust.study.stages import train_stage

    path = tmp_path / "grid.json"
    path.write_text(json.dumps({"name": "g", "shape_modes": [3], "methods": ["std", "fast_r", "ima"],
                                "adversarial": {"adv_steps": 2, "ima_tolerance_px": 1.5}}))
    cfg = load_study_config(path, tmp_path / "out")
    commands = {arm.method: train_stage(cfg, arm)[0] for arm in cfg.arms}
    files = {m: json.loads(c[c.index("--config_file") + 1]) if "[" in c[c.index("--config_file") + 1]
             else [c[c.index("--config_file") + 1]] for m, c in commands.items()}
    assert [Path(f).name for f in files["ima"]] == ["train.json", "train_adversarial.json", "train_ima.json"]
    assert [Path(f).name for f in files["fast_r"]] == ["train.json", "train_adversarial.json"]
    ima, fast = commands["ima"], commands["fast_r"]
    assert ima[ima.index("--adv_mode") + 1] == "ima" and ima[ima.index("--ima_tolerance_px") + 1] == "1.5"
    assert fast[fast.index("--adv_mode") + 1] == "fast_r" and "--ima_tolerance_px" not in fast
    # the default grid stays the paper's five arms
    path.write_text(json.dumps({"name": "g", "shape_modes": [3]}))
    assert [a.method for a in load_study_config(path, tmp_path / "out").arms] == \
        ["std", "rand", "adv_r", "adv_s", "adv_rs"]

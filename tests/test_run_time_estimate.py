"""The up-front run-time estimate: measured on a copy (the run is untouched), scaled by the work, and
a warning with the expected time and what to do when it exceeds a few minutes."""

import io

import pytest
import torch

from diskrobust.networks import DiskShapeNet
from diskrobust.run_time_estimate import (StepCosts, adversarial_work, estimate_training_seconds, format_duration,
                                          measure_step_costs, run_time_message, warn_if_slow)


def _tiny_net():
    torch.manual_seed(0)
    return DiskShapeNet(in_channels=1, num_points=176, spatial_size=32, width=8)


def test_measuring_changes_neither_the_network_nor_the_random_state():
    net = _tiny_net().eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}  # BatchNorm running stats included
    rng = torch.get_rng_state()
    costs = measure_step_costs(net, (2, 1, 32, 32), "cpu", repeats=1)
    assert costs.train > 0 and costs.attack > 0
    assert not net.training
    assert all(p.grad is None and p.requires_grad for p in net.parameters())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert torch.equal(rng, torch.get_rng_state())


def test_estimate_is_epochs_times_samples_times_train_plus_pgd_steps():
    costs = StepCosts(train=0.01, attack=0.005)
    assert estimate_training_seconds(costs, 2, 10) == pytest.approx(0.2)
    assert estimate_training_seconds(costs, 2, 10, adv_steps=20) == pytest.approx(2 * 10 * (2 * 0.01 + 20 * 0.005))  # clean + one copy
    # adv_rs: the clean batch plus two PGD copies (points, seg) are trained on
    assert estimate_training_seconds(costs, 2, 10, adv_steps=20, adv_sets=2) == \
        pytest.approx(2 * 10 * (3 * 0.01 + 2 * 20 * 0.005))
    with pytest.raises(ValueError, match="epochs"):
        estimate_training_seconds(costs, -1, 10)


@pytest.mark.parametrize("seconds, text", [(0.2, "1 s"), (40, "40 s"), (720, "12 min"), (3 * 3600, "3.0 h"),
                                           (30 * 3600, "30 h")])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_adversarial_work_follows_the_handler_modes():
    assert adversarial_work("std", 20) == (0, 0)
    assert adversarial_work("rand", 20) == (1, 0)
    assert adversarial_work("adv_r", 20) == (1, 20)
    assert adversarial_work("adv_rs", 20) == (2, 20)
    assert adversarial_work("fast_r", 20) == (1, 1)
    with pytest.raises(ValueError, match="adv_mode"):
        adversarial_work("adv_x", 20)


def test_message_warns_with_time_and_remedy_only_above_the_threshold():
    slow = run_time_message(3 * 3600, "cpu", adv_steps=20)
    assert slow.startswith("WARNING: expected about 3.0 h on cpu (PGD-20 inside each iteration)")
    assert "--device cuda" in slow and "--epochs" in slow
    quick = run_time_message(40, "cpu")
    assert quick == "run-time estimate: expected about 40 s on cpu"
    assert "--device cuda" not in run_time_message(3 * 3600, "cuda:0")
    assert "(PGD-20 x 2 inside each iteration)" in run_time_message(3 * 3600, "cpu", adv_steps=20, adv_sets=2)


def test_warn_if_slow_measures_the_real_network_and_prints_one_line():
    net = _tiny_net()
    out = io.StringIO()
    line = warn_if_slow(net, epochs=10**6, samples_per_epoch=256, batch_size=16, patch_size=32, adv_mode="adv_rs",
                        adv_steps=20, device="cpu", stream=out)
    assert out.getvalue() == line + "\n"
    assert line.startswith("WARNING: expected about ") and "PGD-20 x 2" in line
    quiet = warn_if_slow(net, epochs=0, samples_per_epoch=256, batch_size=16, patch_size=32, device="cpu",
                         stream=io.StringIO())
    assert quiet == "run-time estimate: expected about 1 s on cpu"


def test_bad_shape_is_a_clear_error():
    with pytest.raises(ValueError, match="input_shape"):
        measure_step_costs(_tiny_net(), (0, 1, 32, 32), "cpu")

"""lumbar_disk_shape's adversarial fine-tuning config (train.json + train_adversarial.json) through monai.bundle.

A tiny standard run (1 epoch) is fine-tuned for 2 epochs with adv_rs; eps ramps over the epochs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

CONFIGS = Path(__file__).resolve().parents[1] / "bundles" / "lumbar_disk_shape" / "configs"
TINY = {"width": 8, "samples_per_epoch": 8, "batch_size": 4, "shape_modes": 3, "progress_bar": False,
        "tb_images": 1, "log_every": 2}


def _run(configs, **override):
    from monai.bundle import ConfigWorkflow

    wf = ConfigWorkflow(config_file=[str(CONFIGS / c) for c in configs], workflow_type="train", **override)
    wf.initialize()
    wf.run()
    wf.finalize()
    return wf


def test_adversarial_fine_tuning_from_the_standard_model(tiny_phantom, tmp_path, tensorboard_scalars):
    torch.set_num_threads(1)
    std_dir, adv_dir = tmp_path / "std", tmp_path / "adv"
    _run(["train.json"], dataset_dir=str(tiny_phantom), output_dir=str(std_dir), epochs=1, **TINY)
    std = torch.load(std_dir / "models" / "model.pt", weights_only=True)["model"]

    wf = _run(["train.json", "train_adversarial.json"], dataset_dir=str(tiny_phantom), output_dir=str(adv_dir),
              ckpt=str(std_dir / "models" / "model.pt"), epochs=2, adv_steps=2, **TINY)
    handler = wf.parser.get_parsed_content("adversarial#handler")
    assert handler.mode == "adv_rs" and handler.ramp_epochs == 2 and handler.eps == pytest.approx(0.07)

    tags = tensorboard_scalars(adv_dir / "logs")
    iterations = 2 * 8 // 4
    eps = [v for _, v in sorted(tags["adversarial/eps"])]
    assert eps == pytest.approx([0.035] * (iterations // 2) + [0.07] * (iterations // 2))
    for tag in ("adversarial/loss_points", "adversarial/loss_seg", "train/loss"):
        assert len(tags[tag]) == iterations and all(v == v for _, v in tags[tag]), tag
    assert "val_mean_point_distance_px" in tags

    # the fine-tuning continues the standard run's steps (1 epoch of 2 iterations) instead of overlapping them
    assert sorted(s for s, _ in tags["train/loss"]) == [3, 4, 5, 6]
    assert sorted(s for s, _ in tags["val_mean_point_distance_px"]) == [2, 3]
    assert [s for s, _ in sorted(tags["adversarial/eps"])] == [3, 4, 5, 6]

    tuned = torch.load(adv_dir / "models" / "model.pt", weights_only=True)["model"]
    assert tuned.keys() == std.keys()
    # fine-tuned from the standard weights: 4 Adamax steps (lr 1e-3) move no weight by more than a few lr
    drift = max((tuned[k] - std[k]).abs().max().item() for k in std if std[k].is_floating_point())
    assert 0 < drift < 0.02, drift

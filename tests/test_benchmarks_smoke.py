"""Every benchmark behind a figure in docs/ still runs: each script with its work shrunk, on the CPU.

The figures themselves come from the commands in docs/performance.md and the other docs; these runs
only check that those commands have not rotted (a renamed option, a moved function). The scripts
of benchmarks/gpu_profile.sh are covered by test_gpu_profile_smoke.py, study_cost.py by
test_study_cost.py. Left out: tensorboard_screenshots.py (needs a Chromium) and
attack_bundle_cpu_quick.py (it times the attack bundle's whole cpu-quick evaluation, about 4 min even
with `--train_steps 2`; that bundle's runs are tested in test_bundle_attack.py).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# script, shrinking arguments, a line only a complete run prints
CASES = [
    ("train_step_profile", ["--width", "16", "--batch", "2", "--size", "32", "--steps", "1"], "| channels_last |"),
    ("fast_adversarial_cost", ["--size", "32", "--batch", "2", "--pgd-steps", "2", "--iterations", "2",
                               "--rounds", "1"], "| ima |"),
    ("convert_speed", ["--series", "1"], "machine: "),
    ("phantom_speed", ["--subjects", "2", "--workers", "1", "--shape", "256", "256", "--spacing", "1.2",
                       "--in-memory", "1"], "write_phantom_dataset: 2 subjects"),
    ("adversarial_training_effect", ["--subjects", "6", "--patch-size", "32", "--spacing-mm", "2.0", "--batch", "4",
                                     "--pretrain-iters", "3", "--finetune-iters", "2", "--train-steps", "1",
                                     "--eval-steps", "2", "--threads", "1", "--seeds", "0"],
     "| mean_shape (constant baseline) |"),
    ("autoattack_strength", ["--subjects", "6", "--patch-size", "32", "--batch", "4", "--train-iters", "3",
                             "--adv-iters", "2", "--test-patches", "2", "--eps", "0.01", "--pgd-steps", "2",
                             "--pgd-restarts", "1", "--apgd-steps", "2", "--apgd-restarts", "1", "--queries", "5"],
     "ensemble >= best PGD on every eps:"),
]


def _run(repo_root, script, args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, f"benchmarks/{script}.py", *args], cwd=repo_root, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (script, proc.stdout[-3000:] + proc.stderr[-3000:])
    return proc.stdout


@pytest.mark.parametrize("script, args, line", CASES, ids=[c[0] for c in CASES])
def test_benchmark_runs_shrunk(repo_root, script, args, line):
    assert line in _run(repo_root, script, args)


def test_phantom_gallery_draws_its_figures(repo_root, tmp_path):
    _run(repo_root, "phantom_gallery", ["--seeds", "0", "--weightings", "t2", "--out", str(tmp_path)])
    assert {p.name for p in tmp_path.glob("*.png")} >= {"phantom_disks_t2.png", "phantom_t2_0.png"}


def test_ood_detector_benchmarks_run_shrunk(repo_root, tmp_path):
    # the adaptive benchmark trains and saves the network the budget benchmark and the strong-attack check attack
    data, ckpt = tmp_path / "phantom", tmp_path / "net.pt"
    out = _run(repo_root, "ood_detector_adaptive", [
        "--subjects", "6", "--patch-size", "32", "--spacing-mm", "2.0", "--batch", "4", "--train-iters", "3",
        "--fit-augmented", "4", "--n-starts", "1", "--steps", "2", "--weights", "0", "1", "--threads", "1",
        "--data", str(data), "--save-ckpt", "--ckpt", str(ckpt)])
    assert "w=1 (strongest adaptive)" in out and ckpt.is_file()
    out = _run(repo_root, "ood_detector_budget", [
        "--data", str(data), "--ckpt", str(ckpt), "--patch-size", "32", "--spacing-mm", "2.0", "--fit-augmented", "4",
        "--n-targets", "1", "--steps", "2", "--iterations", "1", "--weights", "1", "--oe-iters", "2",
        "--fixed-rms", "0.1", "--out", str(tmp_path / "budget")])
    assert "| ensemble |" in out and (tmp_path / "budget_seed0.png").is_file()
    # the budget benchmark wrote the calibration phantom <data>_calib the strong-attack check reads
    out = _run(repo_root, "ood_stats_strong_attack", [
        str(data), str(ckpt), "--patch-size", "32", "--spacing-mm", "2.0", "--fit-augmented", "4", "--n-targets", "1",
        "--steps", "2", "--lrs", "0.01", "--weights", "1"])
    assert "start scores" in out and "2 0.01 (1.0,) [(" in out

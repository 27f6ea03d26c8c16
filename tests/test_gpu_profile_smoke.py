"""benchmarks/gpu_profile.sh still runs: its commands, shrunk, on the CPU (a GPU session gets one try at it)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

# each part's output file and a line only a complete run of that benchmark prints
PARTS = {
    "train_step": "| today (NCHW, whole batch, fp32) |",
    "augment": "augmentation / training throughput:",
    "attacks": "adv_r / clean per round:",
    "attack_layout": "| points-only, channels_last, chunks of 2 |",
    "precision": "bf16-generated attacks: strength",
}


def _run(repo_root, out, smoke: bool):
    env = {**os.environ, "PYTHON": sys.executable, "GPU_PROFILE_SMOKE": "1" if smoke else "0", "OMP_NUM_THREADS": "1"}
    return subprocess.run(["bash", "benchmarks/gpu_profile.sh", str(out)], cwd=repo_root, env=env,
                          capture_output=True, text=True, timeout=600)


def test_gpu_profile_commands_run_shrunk_on_cpu(repo_root, tmp_path):
    proc = _run(repo_root, tmp_path, smoke=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "gpu_profile: done" in proc.stdout.strip().splitlines()[-1]
    for name, line in PARTS.items():
        text = (tmp_path / f"{name}.txt").read_text()
        assert line in text, (name, text[-2000:])
        assert any(row.startswith("machine: ") for row in text.splitlines()), (name, text[-500:])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_gpu_profile_without_cuda_says_so_and_runs_nothing(repo_root, tmp_path):
    proc = _run(repo_root, tmp_path, smoke=False)
    assert proc.returncode == 1
    assert "sees no CUDA device" in proc.stderr.strip().splitlines()[-1]
    assert not any(tmp_path.iterdir())

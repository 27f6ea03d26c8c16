"""multi_gpu_train.json really trains with DDP: torchrun, 2 CPU processes, gloo, on a tiny phantom."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

CONFIGS = "bundles/lumbar_disk_shape/configs"


def _digests(path: Path) -> dict[str, str]:
    return {rec["stage"]: rec["sha256"] for rec in map(json.loads, path.read_text().splitlines())}


def test_torchrun_two_processes_train_one_model(tiny_phantom, tmp_path, repo_root):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    assert torchrun, "torchrun not found next to the Python interpreter"
    out = tmp_path / "ddp"
    cmd = [
        # --standalone: a local rendezvous on a free port, so parallel test runs do not collide
        torchrun, "--standalone", "--nproc_per_node=2", "-m", "monai.bundle", "run", "training",
        "--config_file", f"['{CONFIGS}/train.json','{CONFIGS}/multi_gpu_train.json']",
        "--dataset_dir", str(tiny_phantom), "--output_dir", str(out),
        "--epochs", "1", "--samples_per_epoch", "8", "--batch_size", "2", "--width", "8", "--shape_modes", "3",
        "--progress_bar", "false", "--weights_digest_file", str(out / "digest_rank{rank}.jsonl"),
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(cmd, cwd=repo_root, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]

    rank0, rank1 = _digests(out / "digest_rank0.jsonl"), _digests(out / "digest_rank1.jsonl")
    assert rank0["init"] == rank1["init"]
    assert rank0["final"] == rank1["final"], "the two processes ended with different weights"
    assert rank0["final"] != rank0["init"], "training did not change the weights"

    # only rank 0 writes: one TensorBoard event file, one set of checkpoints
    assert len(list((out / "logs").glob("events.out.tfevents.*"))) == 1
    ckpt = torch.load(out / "models" / "checkpoint_epoch=1.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in ckpt["model"])  # saved unwrapped from DDP
    assert (out / "models" / "model.pt").is_file()
    # each process ran half of the 8 samples per epoch: 2 iterations of batch 2
    assert ckpt["trainer"]["iteration"] == 2

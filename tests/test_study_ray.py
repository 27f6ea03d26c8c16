"""The study on a real local Ray instance (127.0.0.1): the same results as the local engine, a worker
killed mid-arm retried, a killed driver resumed. One Ray instance for the module."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

# the optional [cluster] extra; .ci/run installs it, so CI always runs these
ray = pytest.importorskip("ray", reason='the Ray engine needs pip install -e ".[cluster]"')

from diskrobust.study.grid import Arm, load_study_config  # noqa: E402
from diskrobust.study.runner import run_study  # noqa: E402

pytestmark = pytest.mark.slow

TINY = {
    "train": {"epochs": 1, "samples_per_epoch": 8, "batch_size": 4, "width": 8, "num_workers": 0},
    "adversarial": {"adv_steps": 2, "adv_ramp_epochs": 1},
    "evaluation": {"sweep_overrides": {"num_samples": 3, "batch_size": 3, "tensorboard_images": 1,
                                       "ind": {"eps": {"linf": [0.02]}, "heads": ["points"], "steps": 2},
                                       "ood": {"starts": ["uniform_noise"], "steps": 2, "num_samples": 2}}},
}


@pytest.fixture(scope="module")
def ray_address():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             _node_ip_address="127.0.0.1")
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def _config(tmp_path: Path, phantom: Path, name: str, methods: list[str], **extra) -> Path:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"name": name, "shape_modes": [3], "methods": methods,
                                "dataset": {"dataset_dir": str(phantom)}, **TINY, **extra}))
    return path


def _children(pid: int) -> list[int]:
    kids = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids += [int(k) for k in (task / "children").read_text().split()]
        except OSError:
            pass
    return kids


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _running_stage(arm_dir: Path, stage: str = "train") -> tuple[int, int]:
    """(pid of the process running the stage, pid of its bundle child), once both exist."""
    running = arm_dir / f"{stage}.running.json"

    def both():
        try:
            pid = json.loads(running.read_text())["pid"]
        except (OSError, ValueError, KeyError):
            return None
        kids = _children(pid)
        return (pid, kids[0]) if kids else None

    return _wait_for(both, 120, f"{arm_dir.name} {stage} to start")


def _rows(arm_dir: Path) -> list[dict]:
    with open(arm_dir / "eval" / "per_sample.csv") as f:
        return list(csv.DictReader(f))


def test_ray_study_equals_local_and_a_killed_worker_is_retried(tmp_path, tiny_phantom, ray_address):
    import threading

    local = load_study_config(_config(tmp_path, tiny_phantom, "tiny", ["std"]), tmp_path / "local")
    assert [o.status for o in run_study(local, progress=False)] == ["done"]

    study = load_study_config(_config(tmp_path, tiny_phantom, "tiny", ["std"], retries=1), tmp_path / "ray")
    arm_dir = study.arm_dir(Arm(3, "std"))
    killed: dict[str, int] = {}

    def kill_worker_mid_training():
        worker, bundle = _running_stage(arm_dir)
        killed.update(worker=worker, bundle=bundle)
        os.kill(worker, signal.SIGKILL)

    killer = threading.Thread(target=kill_worker_mid_training, daemon=True)
    killer.start()
    [outcome] = run_study(study, progress=False, engine="ray")
    killer.join(timeout=1)
    assert killed, "the worker was never killed"
    assert outcome.status == "done", outcome.error
    assert outcome.attempts == {"train": 2, "evaluate": 1}
    assert _gone(killed["bundle"])  # the killed worker's bundle child died with it
    assert "| P3-std | done |" in (study.output_dir / "report.md").read_text()

    assert _rows(arm_dir) == _rows(local.arm_dir(Arm(3, "std")))
    import torch

    ours = torch.load(arm_dir / "models" / "model.pt", weights_only=True)
    theirs = torch.load(local.arm_dir(Arm(3, "std")) / "models" / "model.pt", weights_only=True)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_killed_driver_leaves_no_orphan_and_the_study_resumes(tmp_path, tiny_phantom, ray_address):
    # a finished standard arm from an earlier run: only the fine-tuned arm has work left
    first = load_study_config(_config(tmp_path, tiny_phantom, "resume", ["std"]), tmp_path / "study")
    run_study(first, progress=False, engine="ray")
    std_model = first.arm_dir(Arm(3, "std")) / "models" / "model.pt"
    mtime = std_model.stat().st_mtime_ns

    config = _config(tmp_path, tiny_phantom, "resume", ["std", "adv_r"])
    driver = subprocess.Popen([sys.executable, "-m", "diskrobust", "study", "--config", str(config), "--out",
                               str(first.output_dir), "--engine", "ray", "--address", ray_address, "--no-progress"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    adv_dir = first.arm_dir(Arm(3, "adv_r"))
    try:
        worker, bundle = _running_stage(adv_dir)
    finally:
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
    # Ray ends a dead driver's tasks; the bundle child dies with its worker
    _wait_for(lambda: _gone(bundle), 60, "the bundle child of the killed driver's task to die")

    study = load_study_config(config, first.output_dir)
    outcomes = {o.arm.name: o for o in run_study(study, progress=False, engine="ray")}
    assert outcomes["P3-std"].status == "skipped" and std_model.stat().st_mtime_ns == mtime
    assert outcomes["P3-adv_r"].status == "done" and outcomes["P3-adv_r"].attempts == {"train": 1, "evaluate": 1}
    assert list((adv_dir / "previous").glob("*")), "the interrupted training was not set aside"

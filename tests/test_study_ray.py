"""The study on a real local Ray instance: the same results as the local engine, a worker killed
mid-arm retried, a killed driver resumed, an evaluation split across workers. One Ray instance
for the module; the local engine's results come from the session's `tiny_study` (conftest)."""

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

from diskrobust.study.grid import Arm, StudyConfig, load_study_config  # noqa: E402
from diskrobust.study.runner import run_study  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_address():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def _config(folder: Path, local: StudyConfig, methods: list[str], **extra) -> Path:
    """The local tiny study's grid (tests/conftest.py) on P3 only: its arms must equal the local P3 arms."""
    path = folder / f"ray_{'_'.join(methods)}.json"
    path.write_text(json.dumps({**local.to_dict(), "shape_modes": [3], "methods": methods, **extra}))
    return path


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory) -> Path:
    """One study folder for the module: the second test resumes what the first one left."""
    return tmp_path_factory.mktemp("ray_study")


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


def _same_as_local(ours: Path, local: Path) -> None:
    import torch

    assert _rows(ours) == _rows(local)
    a = torch.load(ours / "models" / "model.pt", weights_only=True)
    b = torch.load(local / "models" / "model.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_ray_study_equals_local_and_a_killed_worker_is_retried(study_dir, tiny_study, ray_address):
    import threading

    local, _ = tiny_study
    study = load_study_config(_config(study_dir, local, ["std"], retries=1), study_dir / "out")
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
    assert "| P3-std | done | " in (report := (study.output_dir / "report.md").read_text()) and "| 2, 1 |" in report
    _same_as_local(arm_dir, local.arm_dir(Arm(3, "std")))


def test_killed_driver_leaves_no_orphan_and_the_study_resumes(study_dir, tiny_study, ray_address):
    local, _ = tiny_study
    out = study_dir / "out"
    std_model = out / "arms" / "P3-std" / "models" / "model.pt"
    mtime = std_model.stat().st_mtime_ns  # finished by the test above

    config = _config(study_dir, local, ["std", "adv_r"])
    driver = subprocess.Popen([sys.executable, "-m", "diskrobust", "study", "--config", str(config), "--out", str(out),
                               "--engine", "ray", "--address", ray_address, "--no-progress"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    adv_dir = out / "arms" / "P3-adv_r"
    try:
        worker, bundle = _running_stage(adv_dir)
    finally:
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
    # Ray ends a dead driver's tasks; the bundle child dies with its worker
    _wait_for(lambda: _gone(bundle), 60, "the bundle child of the killed driver's task to die")

    # resumed with the evaluation split across workers: one task per IND head and OOD start
    split = _config(study_dir, local, ["std", "adv_r"], resources={"split_evaluation": True})
    study = load_study_config(split, out)
    outcomes = {o.arm.name: o for o in run_study(study, progress=False, engine="ray")}
    assert outcomes["P3-std"].status == "skipped" and std_model.stat().st_mtime_ns == mtime
    adv = outcomes["P3-adv_r"]
    assert adv.status == "done", adv.error
    assert adv.attempts == {"train": 1, "evaluate:0": 1, "evaluate:1": 1, "evaluate:2": 1, "evaluate": 1}
    assert list((adv_dir / "previous").glob("*")), "the interrupted training was not set aside"
    events = [json.loads(line) for line in (adv_dir / "eval" / "sweep.log").read_text().splitlines()]
    assert {e["event"] for e in events} == {"start", "reused", "done"}  # the parts did every unit
    _same_as_local(adv_dir, local.arm_dir(Arm(3, "adv_r")))

"""The study runner: grid validation, report tables, and a tiny grid end to end through both bundles."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from diskrobust.data.errors import DataError
from diskrobust.study.grid import Arm, load_study_config
from diskrobust.study.report import ind_table, ood_table
from diskrobust.robustness.results import aggregate
from diskrobust.study.runner import ordered_arms, run_study


def _write(tmp_path: Path, cfg: dict) -> Path:
    path = tmp_path / "study.json"
    path.write_text(json.dumps(cfg))
    return path


def test_grid_orders_standard_arm_first_and_validates(tmp_path):
    cfg = load_study_config(_write(tmp_path, {"name": "t", "shape_modes": [3, 5], "methods": ["adv_r", "std"]}),
                            tmp_path / "out")
    assert [a.name for a in ordered_arms(cfg)] == ["P3-std", "P3-adv_r", "P5-std", "P5-adv_r"]
    with pytest.raises(DataError, match="unknown training methods"):
        load_study_config(_write(tmp_path, {"methods": ["std", "fgsm"]}))
    with pytest.raises(DataError, match="unknown keys"):
        load_study_config(_write(tmp_path, {"epochs": 3}))
    with pytest.raises(DataError, match="not found"):
        load_study_config(tmp_path / "missing.json")


def _rows(arm_shift: float) -> list[dict]:
    rows = []
    for i in range(3):
        base = dict(sample_id=i, subject="s", level="L4/L5", norm="linf", steps=2, reference="truth",
                    polygon_dice=0.9, seg_dice=0.8, point_error_mm=0.5, attack_loss=0.0, delta_linf=0.0, delta_l2=0.0)
        rows.append({**base, "sweep": "clean", "attack": "clean", "head": "none", "eps": 0.0, "point_error_px": 1.0})
        for head in ("points", "seg"):
            for eps in (0.01, 0.05):
                rows.append({**base, "sweep": "ind", "attack": "linf", "head": head, "eps": eps,
                             "point_error_px": 1.0 + eps * 100 * arm_shift})
        rows.append({**base, "sweep": "ood", "attack": "uniform_noise", "head": "both", "eps": 0.0,
                     "point_error_px": 30.0, "reference": "target"})
        rows.append({**base, "sweep": "ood", "attack": "uniform_noise", "head": "both", "eps": 40.0,
                     "point_error_px": 2.0 * arm_shift, "reference": "target"})
    return rows


def test_tables_have_one_row_per_arm_and_one_column_per_eps():
    results = {Arm(3, "std"): aggregate(_rows(2.0), 2.0), Arm(3, "adv_r"): aggregate(_rows(1.0), 2.0)}
    lines, eps = ind_table(results, "point_error_px")
    assert eps == [0.0, 0.01, 0.05]
    header = lines[2]
    assert header == "| arm | eps 0 | eps 0.01 | eps 0.05 | AUC |"
    body = lines[4:]
    assert [row.split("|")[1].strip() for row in body] == ["P3-std", "P3-adv_r"]
    # the std arm's error at eps 0.05 is 1 + 0.05 * 100 * 2 = 11, adv_r's 6
    assert body[0].split("|")[4].strip() == "11.00" and body[1].split("|")[4].strip() == "6.00"
    ood = ood_table(results)
    assert sum(line.startswith("| P3-") for line in ood) == 2
    assert "| P3-std | uniform_noise | 40 | 4.00 |" in "\n".join(ood)
    no_ood = {arm: {**agg, "groups": [g for g in agg["groups"] if g["sweep"] != "ood"]} for arm, agg in results.items()}
    text = "\n".join(ood_table(no_ood))
    assert "| arm | start |" not in text and "No arm ran the OOD attack at a fixed budget" in text


@pytest.mark.slow
def test_tiny_study_end_to_end_resume_and_failing_arm(tiny_study):
    study, outcomes = tiny_study
    status = {o.arm.name: o.status for o in outcomes}
    assert status["P3-std"] == "done" and status["P3-adv_r"] == "done", outcomes
    assert status["P1000-std"] == "failed" and status["P1000-adv_r"] == "failed"
    assert (study.arm_dir(Arm(1000, "std")) / "arm_failed.json").is_file()

    report = (study.output_dir / "report.md").read_text()
    assert "| P3-std |" in report and "| P3-adv_r |" in report and "FAILED" in report
    tables = json.loads((study.output_dir / "study_tables.json").read_text())["tables"]
    assert tables["point_error_px"]["P3-adv_r"]["eps"] == [0.0, 0.01, 0.05]
    assert (study.output_dir / "error_vs_eps.png").stat().st_size > 0
    assert list((study.arm_dir(Arm(3, "std")) / "logs").glob("events.out.tfevents.*"))

    model = study.arm_dir(Arm(3, "adv_r")) / "models" / "model.pt"
    mtime = model.stat().st_mtime_ns
    again = {o.arm.name: o.status for o in run_study(study, progress=False)}
    assert again["P3-std"] == "skipped" and again["P3-adv_r"] == "skipped"
    assert model.stat().st_mtime_ns == mtime


def test_grid_names_closest_keys_checks_types_and_refuses_duplicate_arms(tmp_path):
    with pytest.raises(DataError, match=r"unknown keys 'shape_mode' \(did you mean 'shape_modes'\?\)"):
        load_study_config(_write(tmp_path, {"shape_mode": [3]}))
    with pytest.raises(DataError, match=r"unknown keys in dataset 'phantom_subject' \(did you mean 'phantom_subjects'"):
        load_study_config(_write(tmp_path, {"dataset": {"phantom_subject": 4}}))
    with pytest.raises(DataError, match=r"'adv-r' \(did you mean 'adv_r'"):
        load_study_config(_write(tmp_path, {"methods": ["std", "adv-r"]}))
    with pytest.raises(DataError, match=r"shape_modes lists \[3\] more than once"):
        load_study_config(_write(tmp_path, {"shape_modes": [3, 3]}))
    with pytest.raises(DataError, match=r"methods lists \['std'\] more than once"):
        load_study_config(_write(tmp_path, {"methods": ["std", "adv_r", "std"]}))
    for bad, what in [({"seed": True}, "seed must be an integer"), ({"jobs": "2"}, "jobs must be an integer"),
                      ({"shape_modes": [3, "5"]}, "shape_modes must be a non-empty list of positive integers"),
                      ({"train": ["epochs", 1]}, "train must be an object"), ({"retries": -1}, "retries must be >= 0"),
                      ({"resources": {"gpus_per_arm": "1"}}, "resources.gpus_per_arm must be a number")]:
        with pytest.raises(DataError, match=what):
            load_study_config(_write(tmp_path, bad))
    cfg = load_study_config(_write(tmp_path, {"retries": 2, "resources": {"cpus_per_arm": 2, "gpus_per_arm": 0.5}}))
    assert cfg.retries == 2 and cfg.resources == {"cpus_per_arm": 2, "gpus_per_arm": 0.5}


# ------------------------------------------------------------------ interruptions: no orphan, no second writer

def _children(pid: int) -> list[int]:
    kids = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids += [int(k) for k in (task / "children").read_text().split()]
        except OSError:
            pass
    return kids


def _gone(pid: int) -> bool:
    """Not running: absent, or a zombie waiting for init to reap it."""
    try:
        return (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]) in ("Z", "X")
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


def _start_runner(config: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "diskrobust", "study", "--config", str(config), "--out", str(out),
                             "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _bundle_child(runner: subprocess.Popen, arm_dir: Path) -> int:
    """The pid of the runner's bundle child once it trains `arm_dir`."""
    _wait_for(lambda: (arm_dir / "train.running.json").is_file() or runner.poll() is not None, 120, "the training stage")
    assert runner.poll() is None, runner.stdout.read()
    return _wait_for(lambda: _children(runner.pid), 30, "the bundle child")[0]


@pytest.mark.slow
def test_killed_runner_takes_its_bundle_child_along_and_a_second_runner_is_refused(tmp_path, tiny_phantom):
    config = _write(tmp_path, {"name": "kill", "shape_modes": [3], "methods": ["std"],
                               "dataset": {"dataset_dir": str(tiny_phantom)},
                               "train": {"epochs": 50, "samples_per_epoch": 8, "batch_size": 4, "width": 8,
                                         "num_workers": 0}})
    out = tmp_path / "out"
    arm_dir = out / "arms" / "P3-std"

    runner = _start_runner(config, out)
    child = _bundle_child(runner, arm_dir)
    # a second run on the same folder is refused, naming the holder
    second = subprocess.run([sys.executable, "-m", "diskrobust", "study", "--config", str(config), "--out", str(out)],
                            capture_output=True, text=True, timeout=120)
    assert second.returncode == 2 and f"pid {runner.pid}" in second.stderr, second.stderr
    os.kill(runner.pid, signal.SIGKILL)
    runner.wait()
    _wait_for(lambda: _gone(child), 10, f"the orphaned bundle child {child} to die")

    # the rerun takes the stale lock over, and SIGTERM stops it together with its child
    (arm_dir / "train.running.json").unlink()  # left by the killed run: wait for the rerun's own
    runner = _start_runner(config, out)
    child = _bundle_child(runner, arm_dir)
    os.kill(runner.pid, signal.SIGTERM)
    assert runner.wait(timeout=30) == 143
    assert _gone(child)
    assert (out / ".diskrobust.lock").read_text() == ""  # released on the way out
    moved = list((arm_dir / "previous").glob("*"))
    assert moved and (moved[0] / "train.log").is_file()  # the killed run's partial training was set aside


def test_without_ray_the_local_engine_works_and_the_ray_engine_says_how_to_install(tmp_path):
    """Ray is the optional [cluster] extra: hide it and check the study imports and the message."""
    config = _write(tmp_path, {"name": "t", "shape_modes": [3], "methods": ["std"]})
    code = ("import sys; sys.modules['ray'] = None\n"  # `import ray` now raises ImportError
            "import diskrobust.study.runner, diskrobust.study.cli\n"
            "assert 'ray' not in {m.split('.')[0] for m, v in sys.modules.items() if v is not None}\n"
            "from diskrobust.cli import main\n"
            f"sys.exit(main(['study', '--config', {str(config)!r}, '--out', {str(tmp_path / 'out')!r}, "
            "'--engine', 'ray', '--no-progress']))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert 'pip install -e ".[cluster]"' in proc.stderr.splitlines()[-1]
    assert not (tmp_path / "out").exists()  # refused before any work


@pytest.mark.slow
def test_progress_is_read_from_the_arm_logs_and_the_summary_names_every_report(tiny_study):
    from diskrobust.study.progress import StageProgress, eval_progress, running_stages, train_progress
    from diskrobust.study.report import summary_lines

    study, outcomes = tiny_study
    arm_dir = study.arm_dir(Arm(3, "std"))
    done, detail = train_progress(arm_dir / "train.log")  # the real bundle's log: 1 epoch of 2 iterations
    assert done == 1.0 and detail.startswith("epoch 1/1 iter 2/2 loss "), detail
    done, detail = eval_progress(arm_dir / "eval" / "sweep.log")
    # 7 sweep units, then the gradient-masking audit's 10 (2 eps x noise, query, more steps, more restarts; eps 1)
    assert done == 1.0 and detail.startswith("unit 17/17 (last: audit/trivial/"), detail
    assert train_progress(arm_dir / "missing.log") == (0.0, "starting (data, patches, shape model)")

    # a stage that started 30 s ago and is half done: 30 s to go
    (arm_dir / "train.running.json").write_text(json.dumps({"stage": "train", "attempt": 2, "started": 1000.0}))
    try:
        [p] = running_stages(study, [Arm(3, "std")], now=1030.0)
    finally:
        (arm_dir / "train.running.json").unlink()
    assert (p.arm, p.stage, p.attempt, p.elapsed_s) == ("P3-std", "train", 2, 30.0)
    assert StageProgress("a", "train", 0.25, "", 30.0).eta_s == 90.0
    assert "P3-std: train (try 2) epoch 1/1 iter 2/2" in p.line()

    text = "\n".join(summary_lines(study, outcomes))
    for arm in ("P3-std", "P3-adv_r"):
        assert str(study.arm_dir(Arm(3, arm.split("-")[1])) / "eval" / "report.md") in text
    assert str(study.output_dir / "report.md") in text and "tensorboard --logdir" in text
    assert "2 done, 0 finished earlier, 2 failed" in text


def test_the_ood_budget_search_shows_its_progress_per_target():
    from diskrobust.study.progress import StageProgress, measure_fraction

    # the lines python -m diskrobust.study.measure writes (study/measure.py ood_budget)
    assert measure_fraction("setting 1/4 uniform_noise / from start: target 0/20 (0 s)") == 0.0
    assert measure_fraction("setting 2/4 uniform_noise / random start: target 10/20 (300 s)") == 0.375
    assert measure_fraction("setting 2/4 uniform_noise / random start: 90% of 20 targets reached, "
                            "median RMS 0.1 (400 s)") == 0.5
    assert measure_fraction("uniform noise (linf) at eps [0.01] on 100 test patches") == 0.0
    assert StageProgress("a", "evaluate", measure_fraction("setting 2/4 x: target 10/20 (300 s)"), "", 300.0).eta_s == 500.0


def test_a_none_override_reaches_the_bundle(tmp_path, repo_root):
    """findings.json's `"num_samples": null` (every test patch): `monai.bundle run` ignores a None
    given as `--num_samples None` and kept the attack bundle's 16, so it goes in a config file."""
    from monai.bundle import ConfigParser
    from monai.bundle.scripts import update_kwargs

    from diskrobust.bundle_checks import parse_bundle_command
    from diskrobust.study import stages

    evaluate = repo_root / "bundles" / "lumbar_disk_attack" / "configs" / "evaluate.json"
    assert update_kwargs({"num_samples": 16}, num_samples=None)["num_samples"] == 16  # why: MONAI drops None
    cmd = stages.bundle_command("evaluating", [evaluate], {"num_samples": None, "batch_size": 50}, tmp_path / "nulls.json")
    assert "--num_samples" not in cmd and cmd[cmd.index("--batch_size") + 1] == "50"
    parser = ConfigParser()
    parser.read_config(parse_bundle_command(cmd[cmd.index("run") + 2:]).config_files)  # merged as the bundle does
    assert parser["num_samples"] is None and parser["batch_size"] == 16  # (--batch_size is a CLI override)
    with pytest.raises(ValueError, match="null_file"):
        stages.bundle_command("evaluating", [evaluate], {"num_samples": None})
    # the findings profile's evaluation command: all 100 test disks, not the bundle's 16
    cfg = load_study_config(repo_root / "configs" / "study" / "findings.json", tmp_path / "study")
    arm = cfg.arms[0]
    cfg.arm_dir(arm).mkdir(parents=True)
    cmd, _ = stages.evaluate_stage(cfg, arm)
    files = parse_bundle_command(cmd[cmd.index("run") + 2:]).config_files
    assert files[-1] == str(cfg.arm_dir(arm) / "eval_null_overrides.json") and "--num_samples" not in cmd

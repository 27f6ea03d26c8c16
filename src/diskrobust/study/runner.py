"""Run a study grid: train every arm with the `lumbar_disk_shape` bundle, evaluate it with
`lumbar_disk_attack`, then write the report.

Each bundle run is a subprocess (`python -m monai.bundle run ...`), so a failing arm is recorded
and the others go on, and each arm's log is a file. Finished stages leave a marker and are not
recomputed when the study is run again.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import traceback
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from diskrobust.study.grid import Arm, StudyConfig
from diskrobust.data.dataset_io import atomic_write_json

REPO_ROOT = Path(__file__).resolve().parents[3]
SHAPE_BUNDLE = REPO_ROOT / "bundles" / "lumbar_disk_shape"
ATTACK_BUNDLE = REPO_ROOT / "bundles" / "lumbar_disk_attack"


class ArmFailed(RuntimeError):
    """A bundle run of one arm exited non-zero; the message names the arm, the stage and the log."""


@dataclass
class ArmOutcome:
    arm: Arm
    status: str  # "done", "skipped" (finished earlier), "failed"
    seconds: float = 0.0
    error: str = ""
    stages: dict[str, float] = field(default_factory=dict)


def _override_args(overrides: dict[str, Any]) -> list[str]:
    args: list[str] = []
    for key, value in overrides.items():
        if isinstance(value, bool):
            text = "True" if value else "False"
        elif isinstance(value, (dict, list, tuple)):
            text = repr(value)  # fire (behind `monai.bundle run`) reads Python literals
        else:
            text = str(value)
        args += [f"--{key}", text]
    return args


def bundle_command(run_id: str, config_files: list[Path], overrides: dict[str, Any]) -> list[str]:
    files = [str(p) for p in config_files]
    config_arg = files[0] if len(files) == 1 else json.dumps(files)
    return [sys.executable, "-m", "monai.bundle", "run", run_id, "--config_file", config_arg,
            *_override_args(overrides)]


def run_bundle(cmd: list[str], log_path: Path, what: str) -> float:
    """Run one bundle command with its output in `log_path`; raise ArmFailed naming the log on failure."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    # One intra-op thread per bundle run unless the user says otherwise: on 2 CPU cores, two
    # single-threaded arms side by side beat one two-threaded arm many times over (docs/performance.md).
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.setdefault("OMP_NUM_THREADS", "1")
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=env)
    if proc.returncode != 0:
        tail = log_path.read_text().splitlines()[-15:]
        raise ArmFailed(f"{what} exited with code {proc.returncode}; log: {log_path}\n" + "\n".join(tail))
    return time.perf_counter() - start


def train_stage(cfg: StudyConfig, arm: Arm) -> tuple[list[str], Path]:
    """The bundle command that trains `arm` and the model it writes."""
    arm_dir = cfg.arm_dir(arm)
    overrides: dict[str, Any] = {
        "dataset_dir": cfg.dataset_dir,
        "output_dir": arm_dir,
        "shape_modes": arm.shape_modes,
        "seed": cfg.seed,
        "progress_bar": False,
        **cfg.train,
    }
    files = [SHAPE_BUNDLE / "configs" / "train.json"]
    if arm.method != "std":
        files.append(SHAPE_BUNDLE / "configs" / "train_adversarial.json")
        overrides.update(cfg.adversarial)
        overrides["adv_mode"] = arm.method
        overrides["ckpt"] = cfg.arm_dir(arm.base) / "models" / "model.pt"
    return bundle_command("training", files, overrides), arm_dir / "models" / "model.pt"


def evaluate_stage(cfg: StudyConfig, arm: Arm) -> tuple[list[str], Path]:
    """The attack-bundle command that evaluates `arm` and its output folder."""
    arm_dir = cfg.arm_dir(arm)
    eval_dir = arm_dir / "eval"
    from diskrobust.robustness.workflow import attack_bundle_args

    # the study config's {"profile", "sweep_overrides"} -> profile file + `#` ids of the attack bundle
    files, evaluation = attack_bundle_args(ATTACK_BUNDLE, cfg.evaluation)
    overrides: dict[str, Any] = {
        "ckpt_path": arm_dir / "models" / "model.pt",
        "dataset_dir": cfg.dataset_dir,
        "output_dir": eval_dir,
        "progress": False,
        **evaluation,
    }
    if "width" in cfg.train:
        overrides.setdefault("network_def#width", cfg.train["width"])
    for key in ("patch_size", "patch_spacing_mm"):  # the network must see patches as it was trained on them
        if key in cfg.train:
            overrides.setdefault(key, cfg.train[key])
    return bundle_command("evaluating", files, overrides), eval_dir


def run_arm(cfg: StudyConfig, arm: Arm, resume: bool = True) -> ArmOutcome:
    arm_dir = cfg.arm_dir(arm)
    marker = arm_dir / "arm_done.json"
    if resume and marker.is_file():
        return ArmOutcome(arm, "skipped", stages=json.loads(marker.read_text()).get("stages", {}))
    stages: dict[str, float] = {}
    try:
        train_marker = arm_dir / "train_done.json"
        if not (resume and train_marker.is_file()):
            if arm.method != "std" and not (cfg.arm_dir(arm.base) / "models" / "model.pt").is_file():
                raise ArmFailed(f"{arm.name}: its standard model {arm.base.name} is missing (did it fail?)")
            cmd, model = train_stage(cfg, arm)
            stages["train"] = run_bundle(cmd, arm_dir / "train.log", f"{arm.name} training")
            if not model.is_file():
                raise ArmFailed(f"{arm.name}: training finished but wrote no {model}")
            atomic_write_json(train_marker, {"seconds": stages["train"], "command": cmd})
        cmd, eval_dir = evaluate_stage(cfg, arm)
        stages["evaluate"] = run_bundle(cmd, arm_dir / "evaluate.log", f"{arm.name} evaluation")
    except Exception as err:  # one arm's failure is reported and must not stop the others
        message = str(err) if isinstance(err, ArmFailed) else traceback.format_exc()
        atomic_write_json(arm_dir / "arm_failed.json", {"arm": arm.name, "error": message})
        return ArmOutcome(arm, "failed", sum(stages.values()), message, stages)
    (arm_dir / "arm_failed.json").unlink(missing_ok=True)
    atomic_write_json(marker, {"arm": arm.name, "stages": stages})
    return ArmOutcome(arm, "done", sum(stages.values()), stages=stages)


def ordered_arms(cfg: StudyConfig) -> list[Arm]:
    """Every arm, each standard arm before the arms fine-tuned from it (std is trained even if not listed)."""
    order: list[Arm] = []
    for k in cfg.shape_modes:
        order.append(Arm(k, "std"))
        order += [Arm(k, m) for m in cfg.methods if m != "std"]
    return order


def run_study(cfg: StudyConfig, resume: bool = True, progress: bool = True, jobs: int = 1) -> list[ArmOutcome]:
    """Train and evaluate every arm, `jobs` arms at a time, then write the report; returns each arm's outcome.

    An arm fine-tuned from a standard model waits for that model; standard arms are queued first,
    so waiting arms never hold up the ones they wait for.
    """
    from diskrobust.data.phantom import ensure_phantom
    from diskrobust.study.report import write_study_report

    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    cfg.output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(cfg.output_dir / "study_config.json", cfg.to_dict())
    ds = cfg.dataset
    ensure_phantom(cfg.dataset_dir, subjects=int(ds.get("phantom_subjects", 40)), seed=int(ds.get("seed", cfg.seed)))

    arms = ordered_arms(cfg)
    arms = [a for a in arms if a.method == "std"] + [a for a in arms if a.method != "std"]
    bar = tqdm(total=len(arms), desc=f"study {cfg.name}", unit="arm", disable=not progress)
    futures: dict[Arm, Future] = {}

    def task(arm: Arm) -> ArmOutcome:
        if arm.method != "std":
            futures[arm.base].result()  # its standard model first
        outcome = run_arm(cfg, arm, resume=resume)
        note = {"done": f"done in {outcome.seconds:.0f} s", "skipped": "finished earlier, skipped",
                "failed": "FAILED: " + (outcome.error.splitlines() or [""])[0]}[outcome.status]
        bar.update(1)
        tqdm.write(f"[{bar.n}/{len(arms)}] {arm.name}: {note}")
        return outcome

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for arm in arms:
            futures[arm] = pool.submit(task, arm)
        outcomes = [futures[arm].result() for arm in ordered_arms(cfg)]
    bar.close()
    write_study_report(cfg, outcomes)
    return outcomes

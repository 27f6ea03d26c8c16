"""The two stages of an arm, as both engines run them: train (lumbar_disk_shape) and evaluate
(lumbar_disk_attack), each the bundle command a user would type.

The evaluate stage ends with the measurements the profile asks for besides the attack sweep
(`measurement_steps`): uniform noise of the sweep's budgets (`baselines.uniform_noise`) and the
OOD budget search (`ood_budget`, on the arms it lists): `python -m diskrobust.study.measure`
measurements, the pending ones of an arm in one child process (imports are paid once), its log
`measure.log` in the arm's folder, each measurement's output a folder there with its own marker
(`done.json`, holding its arguments: a changed setting runs it again; a new training sets them aside).

A stage leaves a marker when it finishes (`train_done.json`, `arm_done.json`) and is not run
again while the marker is there (and, for evaluate, while every measurement's marker is current);
this file is the whole of the resume logic, so the local pool and the Ray engine resume alike.
Everything a stage reads or writes lies in the arm's folder.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any

from diskrobust.study.grid import Arm, StudyConfig
from diskrobust.study.outcomes import ArmFailed, ArmOutcome
from diskrobust.study.processes import Interrupted, run_bundle, stopping
from diskrobust.data.dataset_io import atomic_write_json

REPO_ROOT = Path(__file__).resolve().parents[3]
SHAPE_BUNDLE = REPO_ROOT / "bundles" / "lumbar_disk_shape"
ATTACK_BUNDLE = REPO_ROOT / "bundles" / "lumbar_disk_attack"
STAGES = ("train", "evaluate")
MEASUREMENT_DIRS = ("uniform_noise", "ood_budget")  # folders of the evaluate stage's measurements


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


def bundle_command(run_id: str, config_files: list[Path], overrides: dict[str, Any],
                   null_file: Path | None = None) -> list[str]:
    """`python -m monai.bundle run <run_id>` with `config_files` and `overrides` (`--key value`).

    `monai.bundle run` drops an override whose value is None (its update_kwargs ignores None), which
    would silently keep the bundle's default (the attack bundle's num_samples 16 instead of every
    test patch): None-valued overrides are written to `null_file`, a config file merged last.
    """
    files = [str(p) for p in config_files]
    nulls = {k: None for k, v in overrides.items() if v is None}
    if nulls:
        if null_file is None:
            raise ValueError(f"overrides {sorted(nulls)} are None, which monai.bundle run ignores: "
                             "give bundle_command a null_file to write them to")
        atomic_write_json(null_file, nulls)
        files.append(str(null_file))
        overrides = {k: v for k, v in overrides.items() if v is not None}
    config_arg = files[0] if len(files) == 1 else json.dumps(files)
    return [sys.executable, "-m", "monai.bundle", "run", run_id, "--config_file", config_arg,
            *_override_args(overrides)]


def train_stage(cfg: StudyConfig, arm: Arm) -> tuple[list[str], Path]:
    """The bundle command that trains `arm` and the model it writes."""
    arm_dir = cfg.arm_dir(arm)
    overrides: dict[str, Any] = {
        "dataset_dir": cfg.dataset_dir,
        "output_dir": arm_dir,
        "shape_modes": arm.shape_modes,
        "seed": cfg.seed if arm.seed is None else arm.seed,
        "progress_bar": False,
        **cfg.train,
    }
    if arm.train_subjects is not None:
        overrides.update(_design_overrides(cfg, arm))
    files = [SHAPE_BUNDLE / "configs" / "train.json"]
    if arm.method != "std":
        files.append(SHAPE_BUNDLE / "configs" / "train_adversarial.json")
        if arm.method == "ima":  # the adaptive-margin handler, its settings and its checkpointed budgets
            files.append(SHAPE_BUNDLE / "configs" / "train_ima.json")
        # ima_* settings exist only in train_ima.json: the other arms' bundle would refuse them as unknown
        overrides.update({k: v for k, v in cfg.adversarial.items() if arm.method == "ima" or not k.startswith("ima_")})
        overrides["adv_mode"] = arm.method
        overrides["ckpt"] = cfg.arm_dir(arm.base) / "models" / "model.pt"
    return bundle_command("training", files, overrides, arm_dir / "train_null_overrides.json"), arm_dir / "models" / "model.pt"


def training_datalist(cfg: StudyConfig, n: int) -> Path:
    """A datalist whose training split is the first `n` training subjects of the study's dataset
    (validation and test unchanged: every arm is evaluated on the same test disks); absolute paths."""
    from diskrobust.data.dataset_io import load_datalist

    source = cfg.dataset_dir / "datalist.json"
    training = load_datalist(source, "training")
    subjects = list(dict.fromkeys(e.get("subject", e["image"]) for e in training))
    if n > len(subjects):
        raise ArmFailed(f"train_subjects {n}: the dataset {source} has only {len(subjects)} training subjects "
                        "(raise dataset.phantom_subjects)")
    keep = set(subjects[:n])
    doc = {"training": [e for e in training if e.get("subject", e["image"]) in keep],
           "validation": load_datalist(source, "validation"), "test": load_datalist(source, "test")}
    doc = {k: [{key: str(v) if key in ("image", "label", "contours") else v for key, v in e.items()} for e in entries]
           for k, entries in doc.items()}
    out = cfg.output_dir / "datalists" / f"training{n}.json"
    atomic_write_json(out, doc)
    return out


def _design_overrides(cfg: StudyConfig, arm: Arm) -> dict[str, Any]:
    """Training-set size and c_max of a findings-design arm (`blocks` in the profile)."""
    datalist = training_datalist(cfg, int(arm.train_subjects))
    out: dict[str, Any] = {"datalist": datalist}
    c_max = cfg.augmentations.get(arm.augmentation, {}).get("c_max")
    if isinstance(c_max, dict):  # {"match_variance_of": K}: the variance of K modes at the profile's c_max
        from diskrobust.data.dataset_io import load_datalist
        from diskrobust.study.statistics import variance_matched_c_max_for_training

        matched = variance_matched_c_max_for_training(
            load_datalist(datalist, "training"), int(cfg.train.get("patch_size", 128)),
            float(cfg.train.get("patch_spacing_mm", 0.5)), arm.shape_modes, int(c_max["match_variance_of"]),
            float(cfg.train.get("c_max", 2.0)))
        atomic_write_json(cfg.arm_dir(arm) / "c_max.json", matched)
        out["c_max"] = matched["c_max"]
    elif c_max is not None:
        out["c_max"] = float(c_max)
    return out


def evaluate_stage(cfg: StudyConfig, arm: Arm, sweep_overrides: dict[str, Any] | None = None,
                   eval_dir: Path | None = None) -> tuple[list[str], Path]:
    """The attack-bundle command that evaluates `arm` and its output folder (a part of the
    evaluation: its `sweep_overrides` and folder)."""
    from diskrobust.robustness.workflow import attack_bundle_args

    arm_dir = cfg.arm_dir(arm)
    eval_dir = eval_dir or arm_dir / "eval"
    evaluation = dict(cfg.evaluation)
    if sweep_overrides is not None:
        evaluation["sweep_overrides"] = sweep_overrides
    if arm.seed is not None:  # a seed's evaluation (attack random starts) is seeded by it too
        evaluation["sweep_overrides"] = {**(evaluation.get("sweep_overrides") or {}), "seed": arm.seed}
    # {"profile", "sweep_overrides"} -> the profile's config file and `#` ids of the attack bundle
    files, settings = attack_bundle_args(ATTACK_BUNDLE, evaluation)
    overrides: dict[str, Any] = {
        "ckpt_path": arm_dir / "models" / "model.pt",
        "dataset_dir": cfg.dataset_dir,
        "output_dir": eval_dir,
        "progress": False,
        **settings,
    }
    if "width" in cfg.train:
        overrides.setdefault("width", cfg.train["width"])
    for key in ("patch_size", "patch_spacing_mm"):  # the network must see patches as it was trained on them
        if key in cfg.train:
            overrides.setdefault(key, cfg.train[key])
    return bundle_command("evaluating", files, overrides, eval_dir.parent / f"{eval_dir.name}_null_overrides.json"), eval_dir


def evaluation_parts(cfg: StudyConfig) -> list[dict[str, Any]]:
    """Sweep overrides that split one evaluation into independent parts: one per IND (attack, head)
    and one per OOD (start, head), each with its whole epsilon grid.

    A part is the attack bundle restricted to its units; a unit's result (and its fingerprint)
    does not depend on which other units run with it (its seed derives from its own name), so the
    parts' unit files are exactly the units of the whole evaluation, which then only reuses them. The
    gradient-masking audit judges the whole evaluation's white-box attack (`units.audited_attack`): its
    units run in the part of that attack on the point head, and in no other part.
    """
    from diskrobust.robustness.units import audited_attack
    from diskrobust.robustness.workflow import attack_bundle_args, load_sweep_config

    files, settings = attack_bundle_args(ATTACK_BUNDLE, {"profile": cfg.evaluation.get("profile"),
                                                         "sweep_overrides": cfg.evaluation.get("sweep_overrides", {})})
    sweep = load_sweep_config(*files, overrides=settings)
    audited = audited_attack(sweep) if sweep.audit.enabled else None
    parts = []
    if sweep.ind.enabled:
        parts += [{"ind#attacks": [a], "ind#heads": [h], "ood#enabled": False,
                   "audit#enabled": (a, h) == (audited, "points")}
                  for a in sweep.ind.attacks for h in sweep.ind.heads]
    if sweep.ood.enabled:
        parts += [{"ind#enabled": False, "ood#starts": [s], "ood#heads": [h], "audit#enabled": False}
                  for s in sweep.ood.starts for h in sweep.ood.heads]
    return [{**settings, **part} for part in parts]  # `#` ids: a part overrides only its own ids


def _sweep_settings(cfg: StudyConfig):
    """The evaluation's sweep settings (num_samples, batch_size, tolerance_px) as the attack bundle reads them."""
    from diskrobust.robustness.workflow import attack_bundle_args, load_sweep_config

    files, settings = attack_bundle_args(ATTACK_BUNDLE, {"profile": cfg.evaluation.get("profile"),
                                                         "sweep_overrides": cfg.evaluation.get("sweep_overrides", {})})
    return load_sweep_config(*files, overrides=settings)


def measures_ood_budget(cfg: StudyConfig, arm: Arm) -> bool:
    """Whether the profile's `ood_budget` search runs on `arm` (its `arms`: design names, or "all")."""
    if not cfg.ood_budget:
        return False
    arms = cfg.ood_budget.get("arms", "all")
    return arms == "all" or arm.design_name in arms


def measurement_steps(cfg: StudyConfig, arm: Arm) -> list[tuple[str, list[str], Path]]:
    """(name, arguments of `python -m diskrobust.study.measure`, output folder) of each measurement the
    profile asks of `arm` after its sweep, in order.

    `baselines.uniform_noise` ({norm: budgets}): uniform noise of each budget on the sweep's test
    patches, on every arm (or those `baselines.uniform_noise_arms` lists); `ood_budget`: the OOD budget
    search (its settings inline), on the arms it lists. Both seeded by the arm's seed, like its sweep.
    """
    arm_dir = cfg.arm_dir(arm).resolve()
    common = ["--ckpt_path", str(arm_dir / "models" / "model.pt"),
              "--datalist", str((cfg.dataset_dir / "datalist.json").resolve()),
              "--seed", str(cfg.seed if arm.seed is None else arm.seed)]
    steps = []
    noise = cfg.baselines.get("uniform_noise") or {}
    noise_arms = cfg.baselines.get("uniform_noise_arms", "all")
    if noise and (noise_arms == "all" or arm.design_name in noise_arms):
        sweep = _sweep_settings(cfg)
        for norm, eps in noise.items():
            out = arm_dir / "uniform_noise" / norm
            args = ["uniform-noise", *common, "--out", str(out), "--norm", norm,
                    "--eps", *[f"{float(e)!r}" for e in eps], "--batch_size", str(sweep.batch_size),
                    "--tolerance_px", f"{float(sweep.tolerance_px)!r}"]
            if sweep.num_samples is not None:
                args += ["--num_samples", str(sweep.num_samples)]
            steps.append((f"uniform_noise_{norm}", args, out))
    if measures_ood_budget(cfg, arm):
        out = arm_dir / "ood_budget"
        steps.append(("ood_budget", ["ood-budget", *common, "--out", str(out),
                                     "--settings", json.dumps({k: v for k, v in cfg.ood_budget.items() if k != "arms"},
                                                             sort_keys=True)], out))
    return steps


def pending_measurements(cfg: StudyConfig, arm: Arm) -> list[str]:
    """Names of the measurements of `arm` whose marker (`<out>/done.json`) is missing or holds other arguments."""
    return [name for name, args, out in measurement_steps(cfg, arm) if _read_json(out / "done.json").get("args") != args]


def measure_command(parts: list[list[str]]) -> list[str]:
    """One `python -m diskrobust.study.measure` command running `parts` in one process (joined by `+`)."""
    cmd = [sys.executable, "-m", "diskrobust.study.measure"]
    for k, part in enumerate(parts):
        cmd += (["+"] if k else []) + part
    return cmd


def run_measurements(cfg: StudyConfig, arm: Arm, running: Path | None = None) -> dict[str, float]:
    """Run the pending measurements of `arm` in one child process; {name: seconds} of those run.

    Raises ArmFailed naming the log (`arms/<arm>/measure.log`) when it exits non-zero. `running`: the
    stage's running file, updated with the step and its log (the progress view reads them).
    """
    pending = pending_measurements(cfg, arm)
    steps = [(name, args, out) for name, args, out in measurement_steps(cfg, arm) if name in pending]
    if not steps:
        return {}
    log = cfg.arm_dir(arm) / "measure.log"
    if running is not None and running.is_file():
        atomic_write_json(running, {**_read_json(running), "step": " + ".join(pending), "log": str(log),
                                    "step_started": time.time()})
    cmd = measure_command([args for _, args, _ in steps])
    run_bundle(cmd, log, f"{arm.name} measurements ({', '.join(pending)})", REPO_ROOT, bundle_env())
    seconds = {}
    for name, args, out in steps:
        done = _read_json(out / "done.json")
        if done.get("args") != args:
            raise ArmFailed(f"{arm.name}: the measurement {name} finished without its marker {out / 'done.json'}; "
                            f"log: {log}")
        seconds[name] = float(done.get("seconds", 0.0))
    return seconds


def part_dir(cfg: StudyConfig, arm: Arm, part: int) -> Path:
    return cfg.arm_dir(arm) / "eval_parts" / f"part{part}"


def marker(cfg: StudyConfig, arm: Arm, stage: str) -> Path:
    if stage.startswith("evaluate:"):
        return part_dir(cfg, arm, int(stage.split(":")[1])) / "part_done.json"
    return cfg.arm_dir(arm) / ("train_done.json" if stage == "train" else "arm_done.json")


def running_file(cfg: StudyConfig, arm: Arm, stage: str) -> Path:
    return cfg.arm_dir(arm) / f"{stage.replace(':', '-part')}.running.json"


def progress_log(cfg: StudyConfig, arm: Arm, stage: str) -> Path:
    """The file a stage's progress is read from: the training log, or the sweep's event log."""
    if stage == "train":
        return cfg.arm_dir(arm) / "train.log"
    if stage == "evaluate":  # a measurement after the sweep names its own log in the running file
        return cfg.arm_dir(arm) / "eval" / "sweep.log"
    return part_dir(cfg, arm, int(stage.split(":")[1])) / "eval" / "sweep.log"


def _gather_parts(cfg: StudyConfig, arm: Arm, eval_dir: Path) -> int:
    """Copy the finished parts' unit files into the evaluation's units/ (they are this model's:
    a new training sets the old parts aside)."""
    copied = 0
    for done in sorted((cfg.arm_dir(arm) / "eval_parts").glob("part*/part_done.json")):
        for unit in (done.parent / "eval" / "units").rglob("*.json"):
            dest = eval_dir / "units" / unit.relative_to(done.parent / "eval" / "units")
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(unit, dest)
            copied += 1
    return copied


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def attempts(cfg: StudyConfig, arm: Arm) -> dict[str, int]:
    """How many times each stage of `arm` was started in this study run."""
    return {k: int(v) for k, v in _read_json(cfg.arm_dir(arm) / "attempts.json").items()}


def reset_attempts(cfg: StudyConfig, arm: Arm) -> None:
    """A new study run on `arm`: tries count from zero, and what a killed run said was running is stale
    (the study lock guarantees nobody else runs it)."""
    (cfg.arm_dir(arm) / "attempts.json").unlink(missing_ok=True)
    for stale in cfg.arm_dir(arm).glob("*.running.json"):
        stale.unlink(missing_ok=True)


def _count_attempt(cfg: StudyConfig, arm: Arm, stage: str) -> int:
    counts = attempts(cfg, arm)
    counts[stage] = counts.get(stage, 0) + 1
    atomic_write_json(cfg.arm_dir(arm) / "attempts.json", counts)
    return counts[stage]


def _set_aside(arm_dir: Path, attempt: int) -> None:
    """Move what an unfinished (or discarded) training left in the arm folder into `previous/`:
    a fresh training must not start in a folder holding another run's checkpoints, and nothing is
    deleted silently."""
    leftovers = [arm_dir / n for n in ("models", "logs", "train.log", "train_done.json", "arm_done.json", "eval_parts",
                                       *MEASUREMENT_DIRS) if (arm_dir / n).exists()]
    if not leftovers:
        return
    dest = arm_dir / "previous" / f"{time.strftime('%Y%m%d-%H%M%S')}-attempt{attempt}-pid{os.getpid()}"
    dest.mkdir(parents=True)
    for p in leftovers:
        shutil.move(str(p), dest / p.name)


def bundle_env() -> dict[str, str]:
    # One intra-op thread per bundle run unless told otherwise (Ray sets OMP_NUM_THREADS to a
    # task's CPUs): on 2 CPU cores, two single-threaded arms side by side beat one two-threaded
    # arm many times over (docs/performance.md). CUDA_VISIBLE_DEVICES passes through unchanged.
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def run_stage(cfg: StudyConfig, arm: Arm, stage: str, resume: bool = True) -> dict[str, Any]:
    """Run one stage of `arm` unless its marker says it finished; return {stage, status, seconds, attempt}.

    Raises ArmFailed (the bundle exited non-zero, or its input is missing) naming the log.
    """
    arm_dir = cfg.arm_dir(arm)
    if stopping():
        raise Interrupted(f"{arm.name} {stage}: not started, the study is stopping")
    done = marker(cfg, arm, stage)
    if resume and done.is_file() and not (stage == "evaluate" and pending_measurements(cfg, arm)):
        return {"stage": stage, "status": "skipped", "seconds": float(_read_json(done).get("seconds", 0.0)),
                "attempt": 0}
    arm_dir.mkdir(parents=True, exist_ok=True)
    attempt = _count_attempt(cfg, arm, stage)
    running = running_file(cfg, arm, stage)  # who runs it: the progress view and the tests read it
    atomic_write_json(running, {"stage": stage, "attempt": attempt, "pid": os.getpid(),
                                "host": socket.gethostname(), "started": time.time()})
    measured: dict[str, float] = {}  # evaluate: seconds of each measurement run after the sweep
    try:
        if stage == "train":
            if arm.method != "std" and not (cfg.arm_dir(arm.base) / "models" / "model.pt").is_file():
                raise ArmFailed(f"{arm.name}: its standard model {arm.base.name} is missing (did it fail?)")
            _set_aside(arm_dir, attempt)
            cmd, model = train_stage(cfg, arm)
            seconds = run_bundle(cmd, arm_dir / "train.log", f"{arm.name} training", REPO_ROOT, bundle_env())
            if not model.is_file():
                raise ArmFailed(f"{arm.name}: training finished but wrote no {model}")
        else:
            if not (arm_dir / "train_done.json").is_file():
                raise ArmFailed(f"{arm.name}: cannot evaluate, its training did not finish")
            if stage == "evaluate":
                cmd, eval_dir = evaluate_stage(cfg, arm)
                _gather_parts(cfg, arm, eval_dir)  # split evaluation (Ray): the whole only reuses the parts
                log = arm_dir / "evaluate.log"
            else:
                k = int(stage.split(":")[1])
                cmd, _ = evaluate_stage(cfg, arm, evaluation_parts(cfg)[k], part_dir(cfg, arm, k) / "eval")
                log = part_dir(cfg, arm, k) / "evaluate.log"
            seconds = run_bundle(cmd, log, f"{arm.name} {stage.replace('evaluate:', 'evaluation part ')}",
                                 REPO_ROOT, bundle_env())
            if stage == "evaluate":
                measured = run_measurements(cfg, arm, running)
                seconds += sum(measured.values())
    finally:
        running.unlink(missing_ok=True)
    stages = {}
    if stage.startswith("evaluate:"):
        atomic_write_json(done, {"arm": arm.name, "seconds": seconds, "command": cmd, "attempt": attempt})
        return {"stage": stage, "status": "done", "seconds": seconds, "attempt": attempt}
    if stage == "evaluate":
        stages = {"train": float(_read_json(arm_dir / "train_done.json").get("seconds", 0.0))}
        (arm_dir / "arm_failed.json").unlink(missing_ok=True)
    atomic_write_json(done, {"arm": arm.name, "seconds": seconds, "command": cmd, "attempt": attempt,
                             "stages": {**stages, stage: seconds},
                             **({"measurements": measured} if stage == "evaluate" else {})})
    return {"stage": stage, "status": "done", "seconds": seconds, "attempt": attempt}


def skipped_outcome(cfg: StudyConfig, arm: Arm) -> ArmOutcome | None:
    """The outcome of an arm that finished in an earlier run, or None when it has work left."""
    done = marker(cfg, arm, "evaluate")
    if not done.is_file() or pending_measurements(cfg, arm):
        return None
    return ArmOutcome(arm, "skipped", stages=_read_json(done).get("stages", {}))


def finished_outcome(cfg: StudyConfig, arm: Arm, results: list[dict[str, Any]]) -> ArmOutcome:
    stages = {r["stage"]: r["seconds"] for r in results if r["status"] == "done"}
    return ArmOutcome(arm, "done", sum(stages.values()), stages=stages, attempts=attempts(cfg, arm))


def failed_outcome(cfg: StudyConfig, arm: Arm, message: str) -> ArmOutcome:
    """Record the failure in the arm folder (arm_failed.json) and return its outcome."""
    tries = attempts(cfg, arm)
    cfg.arm_dir(arm).mkdir(parents=True, exist_ok=True)
    atomic_write_json(cfg.arm_dir(arm) / "arm_failed.json", {"arm": arm.name, "error": message, "attempts": tries})
    return ArmOutcome(arm, "failed", error=message, attempts=tries)


def ordered_arms(cfg: StudyConfig) -> list[Arm]:
    """Every arm, each standard arm before the arms fine-tuned from it (std is trained even if not listed)."""
    order: list[Arm] = []
    if cfg.blocks:
        arms = cfg.arms
        for arm in arms:
            if arm.base not in order:
                order.append(arm.base)
        return order + [a for a in arms if a.method != "std"]
    for k in cfg.shape_modes:
        order.append(Arm(k, "std"))
        order += [Arm(k, m) for m in cfg.methods if m != "std"]
    return order

"""Run a study grid: train every arm with the `lumbar_disk_shape` bundle, evaluate it with
`lumbar_disk_attack`, then write the report.

One code path for both engines: `run_study` locks the study folder, writes its config, makes the
phantom, plans the arms (skipping finished ones) and writes the report; an engine only executes
the stages of `study/stages.py` - the local pool (threads, each waiting on one bundle child) or
Ray (`study/ray_engine.py`, one task per stage). Each bundle run is a subprocess, so a failing
arm is recorded and the others go on, and each arm's log is a file.
"""

from __future__ import annotations

import contextlib
import traceback
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

from tqdm.auto import tqdm

from diskrobust.study import stages
from diskrobust.study.grid import Arm, StudyConfig
from diskrobust.study.outcomes import ArmFailed, ArmOutcome
from diskrobust.study.processes import Interrupted, forward_signals
from diskrobust.study.progress import ProgressPrinter
from diskrobust.study.report import write_study_report
from diskrobust.study.results import atomic_write_json
from diskrobust.study.stages import ordered_arms  # noqa: F401  (part of the runner's interface)

ENGINES = ("local", "ray")
Notify = Callable[[ArmOutcome], None]


def run_arm(cfg: StudyConfig, arm: Arm, resume: bool = True, retries: int = 0) -> ArmOutcome:
    """Both stages of one arm in this process, each tried up to 1 + `retries` times."""
    results = []
    try:
        for stage in stages.STAGES:
            for attempt in range(retries + 1):
                try:
                    results.append(stages.run_stage(cfg, arm, stage, resume=resume))
                    break
                except ArmFailed:
                    if attempt == retries:
                        raise
    except Interrupted:
        raise
    except Exception as err:  # one arm's failure is reported and must not stop the others
        return stages.failed_outcome(cfg, arm, str(err) if isinstance(err, ArmFailed) else traceback.format_exc())
    return stages.finished_outcome(cfg, arm, results)


def run_local(cfg: StudyConfig, arms: list[Arm], resume: bool, retries: int, jobs: int,
              notify: Notify) -> dict[Arm, ArmOutcome]:
    """The local engine: `jobs` arms at a time, one thread each waiting on its bundle child.

    An arm fine-tuned from a standard model waits for that model; standard arms are queued first,
    so waiting arms never hold up the ones they wait for.
    """
    queue = [a for a in arms if a.method == "std"] + [a for a in arms if a.method != "std"]
    futures: dict[Arm, Future] = {}

    def task(arm: Arm) -> ArmOutcome:
        if arm.method != "std" and arm.base in futures:  # (a std arm is its own base: never wait on itself)
            futures[arm.base].result()  # its standard model first
        outcome = run_arm(cfg, arm, resume=resume, retries=retries)
        notify(outcome)
        return outcome

    pool = ThreadPoolExecutor(max_workers=jobs)
    try:
        for arm in queue:
            futures[arm] = pool.submit(task, arm)
        return {arm: futures[arm].result() for arm in arms}
    except BaseException:  # stopped: queued arms must not start
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    finally:
        pool.shutdown(wait=True)


def _study_lock(cfg: StudyConfig):
    from diskrobust.run_lock import RunLock

    return RunLock(cfg.output_dir, what=f"study {cfg.name}")


def run_study(cfg: StudyConfig, resume: bool = True, progress: bool = True, jobs: int = 1, engine: str = "local",
              address: str | None = None, retries: int | None = None) -> list[ArmOutcome]:
    """Train and evaluate every arm with `engine`, then write the report; returns each arm's outcome
    in grid order. Arms finished in an earlier run are skipped unless `resume` is False.

    `retries` (default: the profile's) is how often a failed stage is tried again before its arm is
    reported failed; `address` is the Ray cluster to join (default: a local Ray instance).
    """
    from diskrobust.data.phantom import ensure_phantom

    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    retries = cfg.retries if retries is None else retries
    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries}")
    execute = None
    if engine == "ray":
        from diskrobust.study.ray_engine import run_ray  # fails here, with the install command, without Ray

        execute = run_ray
    cfg.output_dir.mkdir(parents=True, exist_ok=True)
    with _study_lock(cfg), forward_signals():
        atomic_write_json(cfg.output_dir / "study_config.json", {**cfg.to_dict(), "engine": engine})
        ds = cfg.dataset
        subjects = int(ds.get("phantom_subjects", 40))
        if progress and not (cfg.dataset_dir / "datalist.json").is_file():
            tqdm.write(f"phantom: generating {subjects} subjects into {cfg.dataset_dir}")
        ensure_phantom(cfg.dataset_dir, subjects=subjects, seed=int(ds.get("seed", cfg.seed)), progress=progress)

        arms = ordered_arms(cfg)
        outcomes: dict[Arm, ArmOutcome] = {}
        todo = []
        for arm in arms:
            earlier = stages.skipped_outcome(cfg, arm) if resume else None
            if earlier is not None:
                outcomes[arm] = earlier
            else:
                stages.reset_attempts(cfg, arm)
                todo.append(arm)
        bar = tqdm(total=len(arms), desc=f"study {cfg.name} ({engine})", unit="arm", disable=not progress)

        reported = []

        def notify(outcome: ArmOutcome) -> None:
            reported.append(outcome.arm)
            bar.update(1)
            tqdm.write(f"[{len(reported)}/{len(arms)}] {outcome.arm.name}: {outcome.note()}")

        for arm in arms:
            if arm in outcomes:
                notify(outcomes[arm])
        if todo:
            watch = ProgressPrinter(cfg, todo, tqdm.write) if progress else contextlib.nullcontext()
            with watch:
                if execute is None:
                    outcomes.update(run_local(cfg, todo, resume, retries, jobs, notify))
                else:
                    outcomes.update(execute(cfg, todo, resume, retries, notify, address=address))
        bar.close()
        ordered = [outcomes[arm] for arm in arms]
        write_study_report(cfg, ordered)
    return ordered

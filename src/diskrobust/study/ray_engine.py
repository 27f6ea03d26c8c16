"""The Ray engine: every stage of every arm is one Ray task, on one machine or a cluster.

A task runs `stages.run_stage` - the same bundle command as the local engine, in a child process
of the Ray worker, its log a file in the arm's folder - so planning, resume (the stage markers)
and the report are the runner's, not this module's. A fine-tuned arm's training task takes its
standard arm's training task as an argument: Ray starts it only once that model exists. Each task
asks for `cpus_per_arm` CPUs and `gpus_per_arm` GPUs (default: one GPU when the cluster has any,
so one arm per GPU; Ray sets CUDA_VISIBLE_DEVICES, the bundle child inherits it). A task whose
bundle fails or whose worker dies is retried `retries` times, then its arm is reported failed
while the other arms go on.

Ray is optional (`pip install -e ".[cluster]"`): nothing imports this module unless `--engine ray`.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable

from diskrobust.study import stages
from diskrobust.study.grid import Arm, StudyConfig
from diskrobust.study.outcomes import ArmFailed, ArmOutcome

INSTALL_HINT = ('the Ray engine needs Ray: pip install -e ".[cluster]" (or pip install ray); '
                "without it, use the local engine (--engine local)")


def require_ray():
    try:
        import ray
    except ImportError as err:
        raise RuntimeError(INSTALL_HINT) from err
    return ray


def stage_task(cfg: StudyConfig, arm: Arm, stage: str, resume: bool, *after: Any) -> dict[str, Any]:
    """One stage on a Ray worker. `after`: results of the tasks this one waited for (unused: Ray
    resolves them before the task starts, which is the point)."""
    return stages.run_stage(cfg, arm, stage, resume=resume)


def task_resources(cfg: StudyConfig, cluster: dict[str, float]) -> dict[str, float]:
    """CPUs and GPUs one stage asks for: the profile's `resources`, else 1 CPU and, on a cluster with
    GPUs, 1 GPU (one arm per GPU)."""
    res = cfg.resources
    gpus = res.get("gpus_per_arm", 1 if cluster.get("GPU", 0) >= 1 else 0)
    return {"num_cpus": res.get("cpus_per_arm", 1), "num_gpus": gpus}


def _error_text(err: Exception) -> str:
    cause = getattr(err, "cause", None)  # RayTaskError carries the task's own exception
    if isinstance(cause, ArmFailed):
        return str(cause)
    return f"{type(err).__name__}: {err}"


def run_ray(cfg: StudyConfig, arms: list[Arm], resume: bool, retries: int, notify: Callable[[ArmOutcome], None],
            address: str | None = None) -> dict[Arm, ArmOutcome]:
    """Submit both stages of every arm as Ray tasks and collect the outcomes as arms finish."""
    ray = require_ray()
    started_here = not ray.is_initialized()
    if started_here:
        # address None: a fresh local instance on this machine; "auto" or host:port: a running cluster
        ray.init(address=address or "local", include_dashboard=False, log_to_driver=False)
    try:
        opts = task_resources(cfg, ray.cluster_resources())
        remote = ray.remote(stage_task)

        def submit(arm: Arm, stage: str, *after):
            return remote.options(name=f"{arm.name}:{stage}", max_retries=retries, retry_exceptions=[ArmFailed],
                                  **opts).remote(cfg, arm, stage, resume, *after)

        # one large evaluation split into parts (one task per IND head and OOD start), then the
        # whole, which only reuses the parts' units and writes the tables
        parts = len(stages.evaluation_parts(cfg)) if cfg.resources.get("split_evaluation") else 0
        queue = [a for a in arms if a.method == "std"] + [a for a in arms if a.method != "std"]
        train, evaluate, tasks = {}, {}, []
        for arm in queue:
            after = [train[arm.base]] if arm.method != "std" and arm.base in train else []
            train[arm] = submit(arm, "train", *after)
            split = [submit(arm, f"evaluate:{k}", train[arm]) for k in range(parts)]
            evaluate[arm] = submit(arm, "evaluate", train[arm], *split)
            tasks += [train[arm], *split, evaluate[arm]]
        pending = {ref: arm for arm, ref in evaluate.items()}
        outcomes: dict[Arm, ArmOutcome] = {}
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                arm = pending.pop(ready[0])
                try:
                    results = [ray.get(train[arm]), ray.get(ready[0])]
                    outcomes[arm] = stages.finished_outcome(cfg, arm, results)
                except ray.exceptions.RayError as err:
                    message = _error_text(err)
                    if arm.base in train and arm.base != arm and \
                            not (cfg.arm_dir(arm.base) / "models" / "model.pt").is_file():
                        message = f"{arm.name}: its standard model {arm.base.name} failed: {message}"
                    outcomes[arm] = stages.failed_outcome(cfg, arm, message)
                notify(outcomes[arm])
        except BaseException:  # interrupted: no task may go on writing into the study folder
            for ref in tasks:
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)
            raise
        return outcomes
    finally:
        if started_here:
            ray.shutdown()

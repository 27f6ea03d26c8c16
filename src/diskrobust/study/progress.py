"""Live progress of a study, read from the files the arms write (so it works under both engines
and on a cluster's shared filesystem): the stage each running arm is in, how far it is, an ETA.

- `arms/<arm>/<stage>.running.json`: which stage runs, since when (written by `stages.run_stage`);
- `train.log`: the training bundle's iteration lines, `Epoch: k/n, Iter: i/m -- train/loss: x ...`;
- `eval/sweep.log`: the attack bundle's JSON lines, `start` (units: N, audit_units: M: the sweep's and the
  gradient-masking audit's) then one per unit done;
- after the sweep, the evaluate stage's measurements (`study/measure.py`): the running file names
  the step and its log, whose last `[measure]` line is shown (the OOD budget search logs each
  target: `setting k/K <start>: target i/N`, the fraction its ETA is scaled by).

The ETA of a stage is its elapsed time scaled by the fraction done (iterations for training,
units for evaluation): a measured rate, not a guess; "?" until the first step is done.
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from diskrobust.study.grid import Arm, StudyConfig
from diskrobust.study.stages import progress_log

_ITER = re.compile(r"Epoch: (\d+)/(\d+), Iter: (\d+)/(\d+) -- train/loss: ([-+0-9.eE]+|nan)")


@dataclass
class StageProgress:
    arm: str
    stage: str  # "train", "evaluate", "evaluate:<part>"
    done: float  # fraction in [0, 1]
    detail: str  # e.g. "epoch 3/12 iter 5/16 loss 1.234", "unit 4/22 ind/linf/points/eps0.070"
    elapsed_s: float
    attempt: int = 1

    @property
    def eta_s(self) -> float | None:
        return self.elapsed_s * (1 - self.done) / self.done if self.done > 0 else None

    def line(self) -> str:
        eta = "ETA ?" if self.eta_s is None else f"ETA {fmt_seconds(self.eta_s)}"
        retry = f" (try {self.attempt})" if self.attempt > 1 else ""
        return f"{self.arm}: {self.stage}{retry} {self.detail}, {eta}"


def fmt_seconds(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def _tail(path: Path, nbytes: int = 65536) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - nbytes))
            return f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def train_progress(log: Path) -> tuple[float, str]:
    """(fraction done, detail) from the last iteration line of a training log."""
    found = _ITER.findall(_tail(log))
    if not found:
        return 0.0, "starting (data, patches, shape model)"
    epoch, epochs, it, iters, loss = found[-1]
    epoch, epochs, it, iters = int(epoch), int(epochs), int(it), int(iters)
    done = ((epoch - 1) * iters + it) / max(1, epochs * iters)
    return done, f"epoch {epoch}/{epochs} iter {it}/{iters} loss {float(loss):.4g}"


def eval_progress(sweep_log: Path) -> tuple[float, str]:
    """(fraction done, detail) from the sweep's event log (its last run only)."""
    total, done, last = 0, 0, ""
    for line in _tail(sweep_log).splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if event.get("event") == "start":
            total, done, last = int(event.get("units", 0)) + int(event.get("audit_units", 0)), 0, ""
        elif event.get("event") in ("computed", "reused"):
            done, last = done + 1, str(event.get("unit", ""))
    if not total:
        return 0.0, "starting (test set, model)"
    return done / total, f"unit {done}/{total}" + (f" (last: {last})" if last else "")


def measure_progress(log: Path) -> str:
    """The last progress line of a measurement's log (`python -m diskrobust.study.measure`)."""
    lines = [ln[len("[measure] "):] for ln in _tail(log).splitlines() if ln.startswith("[measure] ")]
    return lines[-1] if lines else "starting (test set, model)"


def measure_fraction(line: str) -> float:
    """The fraction of the OOD budget search done, from a measurement's last progress line: "setting
    k/K <label>: target i/N" while setting k runs (i targets of N done), "setting k/K <label>: ...
    reached" when it has finished; 0 for any other line (uniform noise, start-up: ETA "?")."""
    k = re.search(r"setting (\d+)/(\d+)", line)
    if not k:
        return 0.0
    i = re.search(r"target (\d+)/(\d+)", line)
    part = int(i[1]) / max(1, int(i[2])) if i else 1.0
    return (int(k[1]) - 1 + part) / max(1, int(k[2]))


def running_stages(cfg: StudyConfig, arms: list[Arm], now: float | None = None) -> list[StageProgress]:
    """Every stage that runs now, with its progress."""
    now = time.time() if now is None else now
    out = []
    for arm in arms:
        for path in sorted(cfg.arm_dir(arm).glob("*.running.json")):
            try:
                info = json.loads(path.read_text())
                stage = str(info["stage"])
            except (OSError, json.JSONDecodeError, KeyError):
                continue
            if info.get("step"):  # a measurement after the sweep
                line = measure_progress(Path(info.get("log", "")))
                done, detail = measure_fraction(line), f"{info['step']}: {line}"  # the OOD budget's share done
                out.append(StageProgress(arm.name, stage, done, detail,
                                         max(0.0, now - float(info.get("step_started", now))), int(info.get("attempt", 1))))
                continue
            log = progress_log(cfg, arm, stage)
            done, detail = train_progress(log) if stage == "train" else eval_progress(log)
            out.append(StageProgress(arm.name, stage, done, detail, max(0.0, now - float(info.get("started", now))),
                                     int(info.get("attempt", 1))))
    return out


class ProgressPrinter:
    """A thread printing the running stages every `every_s` seconds, when anything changed."""

    def __init__(self, cfg: StudyConfig, arms: list[Arm], write: Callable[[str], None], every_s: float = 15.0):
        self.cfg, self.arms, self.write, self.every_s = cfg, arms, write, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="study-progress", daemon=True)
        self._last: list[str] = []

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self.print_once()

    def print_once(self) -> None:
        lines = [p.line() for p in running_stages(self.cfg, self.arms)]
        text = "\n".join(f"  {time.strftime('%H:%M:%S')} {line}" for line in lines)
        if lines and lines != self._last:
            self.write(text)
        self._last = lines

    def __enter__(self) -> "ProgressPrinter":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

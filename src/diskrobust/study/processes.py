"""Bundle runs as child processes that never outlive the study runner.

Each child gets its own process group (so a signal reaches it and whatever it starts) and, on
Linux, a parent-death signal (`prctl(PR_SET_PDEATHSIG, SIGKILL)`): when the runner dies, even by
`kill -9`, the kernel kills the child, so a rerun never races an orphan writing the same arm
folder. SIGINT/SIGTERM sent to the runner are forwarded to every live child's group.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator, Sequence

from diskrobust.study.outcomes import ArmFailed

_PR_SET_PDEATHSIG = 1
_prctl = None
if sys.platform.startswith("linux"):
    try:
        # resolved here, in the parent: between fork and exec the child only calls it
        _prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # a libc without prctl: process groups and forwarding still hold
        _prctl = None

_live: dict[int, subprocess.Popen] = {}
_live_lock = threading.Lock()
_interrupted = threading.Event()


class Interrupted(RuntimeError):
    """The runner was told to stop (SIGINT/SIGTERM): the stage did not fail, it was stopped."""


def _die_with(parent_pid: int):
    def setup() -> None:  # runs in the child between fork and exec: no imports, no locks
        if _prctl is not None:
            _prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
            if os.getppid() != parent_pid:  # the parent died before prctl: no signal will ever come
                os._exit(1)
    return setup


def stopping() -> bool:
    """True once this process was told to stop (SIGINT/SIGTERM under `forward_signals`)."""
    return _interrupted.is_set()


def live_children() -> list[int]:
    """Pids of the bundle runs this process has running now."""
    with _live_lock:
        return list(_live)


def run_bundle(cmd: Sequence[str], log_path: Path, what: str, cwd: Path, env: dict[str, str]) -> float:
    """Run one bundle command with its output in `log_path`; return its seconds.

    Raises ArmFailed naming the log and quoting its tail when the command exits non-zero, and
    Interrupted when the runner is stopping.
    """
    if _interrupted.is_set():
        raise Interrupted(f"{what}: not started, the study is stopping")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(str(c) for c in cmd) + "\n")
        log.flush()
        proc = subprocess.Popen([str(c) for c in cmd], stdout=log, stderr=subprocess.STDOUT, cwd=cwd, env=env,
                                start_new_session=True, preexec_fn=_die_with(os.getpid()))
        with _live_lock:
            _live[proc.pid] = proc
            stopping = _interrupted.is_set()
        if stopping:  # the stop signal came while this child was starting: stop_children did not see it
            _kill_group(proc.pid, signal.SIGTERM)
        try:
            code = proc.wait()
        finally:
            with _live_lock:
                _live.pop(proc.pid, None)
            if proc.poll() is None:  # this thread was interrupted while the child still runs
                _kill_group(proc.pid, signal.SIGKILL)
    if _interrupted.is_set():
        raise Interrupted(f"{what}: stopped by a signal; log: {log_path}")
    if code != 0:
        tail = log_path.read_text(errors="replace").splitlines()[-15:]
        raise ArmFailed(f"{what} exited with code {code}; log: {log_path}\n" + "\n".join(tail))
    return time.perf_counter() - start


def _kill_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)  # the child leads its own group (start_new_session)


def stop_children(sig: int = signal.SIGTERM, grace_s: float = 10.0) -> None:
    """Send `sig` to every live child's group, then SIGKILL what is still there after `grace_s`."""
    _interrupted.set()  # before the snapshot: a child registered after it sees the flag (run_bundle)
    with _live_lock:
        procs = list(_live.values())
    for p in procs:
        _kill_group(p.pid, sig)
    deadline = time.monotonic() + grace_s
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        if p.poll() is None:
            _kill_group(p.pid, signal.SIGKILL)


@contextlib.contextmanager
def forward_signals() -> Iterator[None]:
    """While active (main thread only), SIGINT/SIGTERM stop every child and then stop the runner:
    SIGINT as KeyboardInterrupt, SIGTERM as SystemExit(143)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _interrupted.clear()

    def handler(signum, frame):
        stop_children(signal.SIGTERM)
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)

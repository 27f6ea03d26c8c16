"""diskrobust.run_lock: a second run refuses naming the holder; a killed run's lock is taken over."""

from __future__ import annotations

import doctest
import os
import signal
import subprocess
import sys
import time

import pytest

import diskrobust.run_lock as rl
from diskrobust.run_lock import RunLock, RunLockedError

HOLD = """
import sys, time
from diskrobust.run_lock import RunLock
lock = RunLock(sys.argv[1]).acquire()  # keep a reference: the lock lives as long as the object
print("held", flush=True)
time.sleep(120)
"""


def test_docstring_example():
    assert doctest.testmod(rl, optionflags=doctest.ELLIPSIS).failed == 0


def test_second_run_refused_with_pid_and_killed_holder_taken_over(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(RunLockedError, match=rf"in use by another run \(pid {proc.pid} "):
            RunLock(tmp_path).acquire()
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    lock = RunLock(tmp_path).acquire()  # the killed run's lock file is still there, its flock is gone
    assert lock.held and lock.took_over["pid"] == proc.pid
    lock.release()
    again = RunLock(tmp_path).acquire()
    assert again.took_over is None  # a released lock leaves nobody behind
    again.release()


def test_disabled_lock_is_a_no_op(tmp_path):
    with RunLock(tmp_path):
        assert not RunLock(tmp_path, enabled=False).acquire().held

"""The output-folder lock: a second writer is refused naming the holder's pid; a killed holder's lock is taken over."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from diskrobust.run_lock import LOCK_NAME, FolderLocked, RunLock, read_holder

HOLD = "import sys, time; from diskrobust.run_lock import RunLock; l = RunLock(sys.argv[1], what='holder').acquire(); " \
       "print('held', flush=True); time.sleep(120)"


def _holder(folder) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_writer_refused_naming_the_pid_then_stale_lock_taken_over(tmp_path):
    folder = tmp_path / "out"
    proc = _holder(folder)
    try:
        with pytest.raises(FolderLocked, match=rf"in use by holder \(pid {proc.pid} "):
            RunLock(folder, what="second").acquire()
        assert read_holder(folder)["pid"] == proc.pid  # the refused run did not overwrite the record
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    # the holder died without releasing: its record stays, the kernel dropped its flock
    assert read_holder(folder)["pid"] == proc.pid
    with RunLock(folder, what="rerun") as lock:
        assert lock.took_over["pid"] == proc.pid
        assert read_holder(folder)["pid"] == os.getpid()
        with pytest.raises(FolderLocked, match=f"pid {os.getpid()}"):  # also within one process
            RunLock(folder).acquire()
    # released cleanly: nothing left to take over
    assert (folder / LOCK_NAME).read_text() == ""
    with RunLock(folder) as lock:
        assert lock.took_over is None


def test_lock_file_is_not_inherited_by_children(tmp_path):
    """A bundle child that outlives its runner must not keep the study folder locked."""
    with RunLock(tmp_path):
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(0.2)
        with RunLock(tmp_path) as lock:
            assert lock.took_over is None
    finally:
        child.kill()
        child.wait()

"""One writer per output folder: a lock file that names its holder and cannot go stale.

`RunLock(folder)` takes an exclusive `flock` on `<folder>/.diskrobust.lock` and writes the holder
(pid, host, command, start time) into it. A second run on the same folder is refused with a
message naming the holder's pid. The kernel drops a `flock` when its process dies, however it
dies (kill -9 included), so a lock left by a killed run is detected (the file names a process
that no longer holds it) and taken over; the takeover is reported, never silent.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path

logger = logging.getLogger(__name__)

LOCK_NAME = ".diskrobust.lock"


class FolderLocked(RuntimeError):
    """Another live run holds the folder's lock; the message names its pid and what it is."""

    def __init__(self, folder: Path, holder: dict):
        self.folder, self.holder = folder, holder
        what = holder.get("what") or "another run"
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder["started"])) if holder.get("started") else "?"
        super().__init__(
            f"{folder}: in use by {what} (pid {holder.get('pid', '?')} on {holder.get('host', '?')}, since {since}); "
            f"wait for it to finish, stop it (kill {holder.get('pid', '<pid>')}), or choose another output folder")


def read_holder(folder: str | Path) -> dict:
    """What the lock file of `folder` says about its (last) holder; {} when there is none."""
    try:
        return json.loads((Path(folder) / LOCK_NAME).read_text() or "{}")
    except (OSError, json.JSONDecodeError):
        return {}


class RunLock:
    """Context manager: hold `folder` exclusively for this process (the folder is created).

    Attributes after entering: `took_over` - the holder record of a dead run whose lock this one
    took over, or None.
    """

    def __init__(self, folder: str | Path, what: str = ""):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.what = what
        self.took_over: dict | None = None
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = read_holder(self.folder)
            os.close(fd)
            raise FolderLocked(self.folder, holder) from None
        previous = read_holder(self.folder)
        if previous.get("pid"):  # a record without a lock: its run died without releasing
            self.took_over = previous
            logger.warning("%s: took over the stale lock of pid %s on %s (%s), which no longer runs",
                           self.folder, previous.get("pid"), previous.get("host"), previous.get("what"))
        record = {"pid": os.getpid(), "host": socket.gethostname(), "what": self.what,
                  "command": " ".join(sys.argv), "started": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)  # an empty file: released cleanly, nothing to take over
        os.close(self._fd)  # closing drops the flock
        self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

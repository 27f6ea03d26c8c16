"""One run per output folder: an exclusive lock that names its holder and dies with it.

`RunLock(folder).acquire()` takes `<folder>/.diskrobust.lock` with `fcntl.flock` and writes the
holder's pid, host, start time and command into it. A second run on the same folder is refused
(`RunLockedError` naming the holder's pid). The kernel drops a flock when its process ends, however it
ends (kill -9 included), so a lock left by a killed run is not held: the next run takes it over and
says so. Use as a context manager or call `release()`; a bundle config acquires it in `initialize`
and releases it in `finalize`.

>>> import tempfile
>>> folder = tempfile.mkdtemp()
>>> with RunLock(folder) as lock:
...     RunLock(folder).acquire()
Traceback (most recent call last):
...
diskrobust.run_lock.RunLockedError: ... is in use by another run (pid ...
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path

__all__ = ["RunLock", "RunLockedError", "LOCK_NAME"]

logger = logging.getLogger(__name__)
LOCK_NAME = ".diskrobust.lock"


class RunLockedError(RuntimeError):
    """Another live process holds the folder's lock."""


class RunLock:
    """Exclusive lock on `folder` (created if missing). `enabled=False` makes it a no-op (ranks > 0)."""

    def __init__(self, folder: str | Path, enabled: bool = True, what: str = "run"):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.enabled = bool(enabled)
        self.what = what
        self._file = None
        self.took_over: dict | None = None

    def _holder(self) -> dict:
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    def acquire(self) -> RunLock:
        if not self.enabled or self._file is not None:
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            h = self._holder()
            raise RunLockedError(
                f"{self.folder} is in use by another run (pid {h.get('pid', '?')} on {h.get('host', '?')}, "
                f"since {h.get('started', '?')}: {h.get('command', '?')}); wait for it to finish, stop it, "
                "or choose another output folder") from None
        previous = self._holder()
        if previous.get("pid"):
            # the file outlived its process (killed, or a crash before release): the lock is free, take it
            self.took_over = previous
            logger.warning("%s: taking over the lock of an ended run (pid %s, started %s)", self.folder,
                           previous.get("pid"), previous.get("started"))
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "what": self.what,
                            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                            "command": " ".join(sys.argv)[:500]}))
        f.flush()
        self._file = f
        return self

    def release(self) -> None:
        if self._file is None:
            return
        try:
            self._file.seek(0)
            self._file.truncate()  # an empty file: nobody to report as holder or as taken over
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
        finally:
            self._file.close()
            self._file = None

    @property
    def held(self) -> bool:
        return self._file is not None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self):
        if getattr(self, "_file", None) is not None:
            self._file.close()

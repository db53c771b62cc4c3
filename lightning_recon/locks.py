"""Output folders that one run at a time may write: an exclusive lock file, and writability probes.

``OutputLock(folder)`` creates ``.<folder name>.lock`` beside the folder (inside, it would make the
folder look used) with ``O_CREAT | O_EXCL`` (atomic on local filesystems), holding the holder's
host, PID, start time and command. A second run on the
same folder is refused with one line naming the holder; a lock whose process no longer runs on
this host (killed, crashed) is stale and taken over. ``check_writable`` tells before any work
whether a folder (or the nearest existing folder above it) accepts files, creating nothing.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Optional, Union

__all__ = ["FolderInUse", "OutputLock", "OutputUnwritable", "check_writable", "process_alive"]


class FolderInUse(RuntimeError):
    """Another running process holds the folder's lock (the message is one line naming it)."""


class OutputUnwritable(PermissionError):
    """An output folder that cannot be created or written (the message is one line naming it)."""


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host (signal 0 probes without signalling)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def check_writable(folder: Union[str, Path], what: str) -> None:
    """Raise ``OutputUnwritable`` (one line naming ``what`` and the folder) unless ``folder`` can be
    created and written: its nearest existing ancestor must be a folder that takes a probe file
    (written and removed at once). Creates nothing that stays."""
    folder = Path(folder).expanduser().absolute()
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise OutputUnwritable(f"{what} {folder}: {existing} is a file, not a folder")
    probe = existing / f".lightning_recon-probe-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise OutputUnwritable(f"{what} {folder}: cannot write in {existing} ({error.strerror or error})") from None


class OutputLock:
    """Exclusive use of ``folder`` by this process while the context is open (or between
    ``acquire()`` and ``release()``); the folder's parent is created when missing."""

    def __init__(self, folder: Union[str, Path], program: str = "lightning_recon"):
        self.folder = Path(folder).expanduser().absolute()
        self.path = self.folder.parent / f".{self.folder.name}.lock"
        self.program = program
        self._held = False

    def holder(self) -> Optional[dict]:
        """The record of the current holder (``None`` without a readable lock)."""
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    def _is_stale(self, record: Optional[dict]) -> bool:
        if record is None:  # unreadable: being written this instant, or damaged; stale if old
            try:
                return time.time() - self.path.stat().st_mtime > 60
            except OSError:
                return True
        if record.get("host") != socket.gethostname():
            return False
        pid = int(record.get("pid", -1))
        return pid == os.getpid() or not process_alive(pid)  # our own (an earlier run in this process) or dead

    def acquire(self) -> "OutputLock":
        self.folder.parent.mkdir(parents=True, exist_ok=True)
        record = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                  "program": self.program, "command": " ".join(sys.argv)[:300]}
        for _ in range(2):  # a stale lock is removed once, then taken
            try:
                descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                current = self.holder()
                if self._is_stale(current):
                    self.path.unlink(missing_ok=True)
                    continue
                who = (f"{current.get('program')} (PID {current.get('pid')} on {current.get('host')}, since "
                       f"{current.get('started')})") if current else "another process"
                raise FolderInUse(f"{self.folder} is in use by {who}; wait for it, or choose another folder "
                                  f"(a lock left by a killed run is taken over automatically)") from None
            with os.fdopen(descriptor, "w") as handle:
                json.dump(record, handle)
            self._held = True
            return self
        raise FolderInUse(f"{self.folder}: its lock {self.path} could not be taken")

    def release(self) -> None:
        if self._held:
            current = self.holder()
            if current is None or current.get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
            self._held = False

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

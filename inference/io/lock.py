"""One run per output folder: a lock file holding the owner's pid, host and start time.

``remind2reg register`` takes ``<output>/.remind2reg.lock`` before any work and removes it at
the end. A second run on the same folder waits up to ``wait_s`` seconds for it, then refuses
with a message naming the owner. A lock whose owner process is dead (same host) is stale: it
is taken over, with a warning. Creating the lock is also the check that the folder is writable.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from remind2reg.inference.errors import InputError, Remind2RegError

log = logging.getLogger(__name__)

LOCK_NAME = ".remind2reg.lock"


class FolderBusyError(Remind2RegError):
    """Another live run holds the output folder's lock."""


def pid_alive(pid: int) -> bool:
    """True when a process ``pid`` exists on this host (signal 0 probes without sending)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by another user
        return True
    return True


def read_owner(path: Path) -> dict:
    """The lock's content (``pid``, ``host``, ``started``); ``{}`` when unreadable (being written)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _is_stale(owner: dict) -> bool:
    """A lock of a dead process on this host. A lock of another host is never judged stale."""
    return owner.get("host") == socket.gethostname() and not pid_alive(int(owner.get("pid", -1)))


def _try_create(path: Path, owner: dict) -> bool:
    """Create the lock file exclusively; False when it exists. Raises InputError when the
    folder is not writable."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise InputError(
                f"the output folder is not writable by this user (uid {os.getuid()}): {exc.strerror}. "
                "Make it writable (e.g. `chown 1000:1000 <folder>` for the container, or run with "
                "a matching --user) or choose another --output",
                path=path.parent,
            ) from exc
        raise
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(owner, f)
    return True


@contextlib.contextmanager
def folder_lock(folder: Path, wait_s: float = 0.0, poll_s: float = 0.5) -> Iterator[Path]:
    """Hold ``folder``'s lock for the block; see the module docstring.

    Raises :class:`FolderBusyError` when another live run holds it after ``wait_s`` seconds,
    :class:`InputError` when the folder is not writable.
    """
    path = Path(folder) / LOCK_NAME
    owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    deadline = time.monotonic() + wait_s
    while not _try_create(path, owner):
        other = read_owner(path)
        if other and _is_stale(other):
            log.warning(
                "Taking over the stale lock %s of process %s (no longer running)", path, other.get("pid")
            )
            path.unlink(missing_ok=True)
            continue
        if time.monotonic() >= deadline:
            who = f"process {other.get('pid', '?')} on {other.get('host', '?')} since {other.get('started', '?')}"
            raise FolderBusyError(
                f"{path.parent} is in use by another remind2reg run ({who}). Wait for it to finish, "
                f"use another --output, or delete {path} if that run is gone"
            )
        time.sleep(poll_s)
    try:
        yield path
    finally:
        if read_owner(path).get("pid") == owner["pid"]:
            path.unlink(missing_ok=True)

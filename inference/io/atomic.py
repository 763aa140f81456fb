"""Atomic file writes: a result file is either complete or absent, never partial."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

_UMASK = os.umask(0)
os.umask(_UMASK)
PARTIAL_MARK = ".partial"  # in the name of every temporary file made by atomic_path
# .<final name>.<pid of the writer>.<random>.partial<suffixes>
_PARTIAL = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.(?P<rand>[^.]+)\.partial")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds.

    The temporary name keeps the final suffixes (e.g. ``.nii.gz``) so that writers choosing a
    format from the extension behave the same. On error the temporary file is removed and
    ``path`` is left untouched. ``os.replace`` is atomic on POSIX within one file system; the
    data is flushed to disk (``fsync``) before the rename, so a crash cannot leave an empty file
    under the final name either. Temporary names are ``.<name>.<pid>.<random>.partial<suffixes>``:
    the writer's process id lets :func:`remove_stale_partials` spare the files of a live run.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes) or ".tmp"
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{path.name}.{os.getpid()}.", suffix=f"{PARTIAL_MARK}{suffix}", dir=path.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give results the usual permissions
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _writer_alive(path: Path) -> bool:
    """True when the process that named a temporary file still runs (this one included)."""
    match = _PARTIAL.match(path.name)
    if match is None:  # an old-style name without a pid: nobody can be writing it any more
        return False
    pid = int(match["pid"])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_partials(folder: str | Path) -> list[Path]:
    """Delete the temporary files that interrupted :func:`atomic_path` calls left in ``folder``.

    A process killed outright (SIGKILL, power loss) cannot run its cleanup; its temporary
    files are hidden (leading dot) and never carry a result name, but they waste space. Only
    files whose writing process is gone are removed: a live run's files are never touched.
    Returns the removed paths.
    """
    folder = Path(folder)
    stale = sorted(p for p in folder.glob(f".*{PARTIAL_MARK}*") if p.is_file() and not _writer_alive(p))
    for p in stale:
        p.unlink(missing_ok=True)
    if stale:
        log.info("Removed %d temporary files left by an interrupted run in %s", len(stale), folder)
    return stale

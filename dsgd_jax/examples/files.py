"""Files a run owns: its workdir's lock, and writes no reader sees half of.

One run per workdir: two processes started on one ``--workdir`` would both
train and interleave their metrics and checkpoints. :func:`workdir_lock` creates ``<workdir>/.lock``
atomically (``O_CREAT | O_EXCL``); a second run on the same workdir fails at once
with the owner's pid. A lock left by a process that no longer runs on this host
(killed, crashed) is taken over with a message.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["LOCK_NAME", "WorkdirBusy", "workdir_lock", "write_atomic"]

LOCK_NAME = ".lock"


def write_atomic(path: str | Path, text: str) -> None:
    """Writes ``text`` to ``path`` through a temporary file renamed over it, so a crash
    leaves either the old file or the new one, never a torn one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class WorkdirBusy(FileExistsError):
    """Another live process holds the workdir's lock."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return 0.0


def _owner(path: Path) -> tuple[int, str] | None:
    try:
        pid, host = path.read_text().split(maxsplit=1)
        return int(pid), host.strip()
    except (OSError, ValueError):
        return None  # vanished, or half-written by a process that died at once


@contextlib.contextmanager
def workdir_lock(workdir: str | Path) -> Iterator[Path]:
    """Holds ``workdir``'s lock for the block (creating ``workdir`` if needed).

    Raises:
      WorkdirBusy: if a live process on this host, or any process on another host,
        holds it (delete the lock file by hand if that other host's run is dead).
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / LOCK_NAME
    me = f"{os.getpid()} {socket.gethostname()}"
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _owner(path)
            if owner is None and _age(path) < 5.0:  # being written by its creator
                time.sleep(0.05)
                continue
            if owner is not None:
                pid, host = owner
                if host != socket.gethostname():
                    raise WorkdirBusy(
                        f"{workdir} is locked by process {pid} on {host} ({path}); wait for "
                        "that run, or delete the lock file if it is no longer running."
                    ) from None
                if pid == os.getpid():
                    raise WorkdirBusy(
                        f"{workdir} is already in use by this process; give each run its "
                        "own --workdir."
                    ) from None
                if _alive(pid):
                    raise WorkdirBusy(
                        f"{workdir} is in use by process {pid}; wait for that run to end, "
                        "or pass another --workdir."
                    ) from None
                print(
                    f"Taking over the lock of {workdir} from process {pid}, which is no "
                    "longer running.",
                    file=sys.stderr,
                )
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            continue
        with os.fdopen(fd, "w") as f:
            f.write(me + "\n")
        break
    try:
        yield path
    finally:
        if _owner(path) == (os.getpid(), socket.gethostname()):
            path.unlink(missing_ok=True)

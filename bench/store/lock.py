"""The lock of a run directory: two runs never write one directory, and a dead run's lock never
keeps a folder from ``--resume``.

The lock is an ``flock`` on ``<folder>/.lock``: the kernel releases it when its owner dies (even
by SIGKILL), and cell processes never hold it (the lock file is opened close-on-exec and cells are
started with ``spawn``). The file records its owner's process id and host; a lock still held
although that process is gone from this host (a process it forked kept the file open) is stale:
it is cleared with a message on stderr, and taken. The lock file is opened without following a
link, and only as a regular file with no second name (a hard link to a file elsewhere would
have it written)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
from pathlib import Path
from typing import IO

from bench.core.errors import BenchError
from bench.store.files import one_name_opener

LOCK_NAME = ".lock"


def lock_owner(text: str) -> tuple[int, str] | None:
    """(process id, host) recorded in a lock file (None when it records none); an older lock
    file holds the process id alone (this host)."""
    text = text.strip()
    if text.isdigit():
        return int(text), socket.gethostname()
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if (isinstance(data, dict) and isinstance(data.get("pid"), int)
            and isinstance(data.get("host"), str)):
        return data["pid"], data["host"]
    return None


def is_gone(pid: int, host: str) -> bool:
    """The process ``pid`` of ``host`` is known to be gone: ``host`` is this host and no process
    ``pid`` runs here (another host's process cannot be checked: it is not gone)."""
    if host != socket.gethostname() or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # e.g. another user's process: it runs
        return False
    return False


def acquire(folder: Path, what: str = "run directory") -> IO[str] | None:
    """Take the lock of ``folder`` for the rest of the process (or until :func:`release`); the
    open lock file, or None where the file system has no ``flock`` (a warning says so). Raises
    :class:`BenchError` when a live process holds it, :class:`OSError` when the lock file cannot
    be opened (a link planted as ``.lock`` included)."""
    path = Path(folder) / LOCK_NAME
    for attempt in range(2):
        handle = open(path, "a+", opener=one_name_opener)  # noqa: SIM115 - held open
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = lock_owner(handle.read())
            handle.close()
            if attempt == 0 and owner is not None and is_gone(*owner):
                print(f"bench: cleared the stale lock of {what} {str(folder)!r}: its owner, "
                      f"process {owner[0]} on {owner[1]}, is no longer running",
                      file=sys.stderr, flush=True)
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()  # the next open makes a new lock file, free to take
                continue
            raise BenchError(
                f"{what} {str(folder)!r} is in use by another bench run"
                + (f" (process {owner[0]}) on host {owner[1]}" if owner else "")
            ) from None
        except OSError as exc:  # no flock here (some network file systems)
            handle.close()
            print(f"warning: cannot lock the {what} {str(folder)!r} ({exc.strerror or exc}): "
                  "make sure no other bench run writes to it", file=sys.stderr, flush=True)
            return None
        with contextlib.suppress(OSError):  # who holds it, for the messages above
            handle.seek(0)
            handle.truncate()
            handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}) + "\n")
            handle.flush()
        return handle
    raise BenchError(f"{what} {str(folder)!r}: its stale lock could not be cleared")


def release(handle: IO[str] | None) -> None:
    """Give a lock taken by :func:`acquire` back."""
    if handle is not None:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()

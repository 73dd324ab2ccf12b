"""Files written and read without following links: the one way the harness touches a run
folder's files (and a results folder's, and the caches').

A file is written whole to a temporary file in its own folder, then renamed over its name
(:func:`atomic_write`): a reader sees the old file or the new one, never a torn one, and a symbolic
link planted under the name is replaced, never written through. A line is appended
(:func:`append_line`, :func:`open_append`) to a file opened with ``O_NOFOLLOW | O_APPEND`` that must
be a regular file with no second name (a hard link to a file elsewhere would be written too). A
file is read (:func:`read_bytes`, :func:`read_text`) only when it is a regular file, opened with
``O_NOFOLLOW | O_NONBLOCK`` (a FIFO planted as ``rows.jsonl`` cannot hang a reader). A run folder
whose entries are links or special files is refused as a whole (:func:`check_folder`), naming
them.

Everything goes through :func:`open` (with an ``opener``), so that a test that replaces
:func:`builtins.open` (a read-only mount) sees every write.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from bench.core.errors import BenchError

#: Flags added to every open: never through a link, never blocking on a FIFO, never inherited.
_SAFE_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
#: How many unsafe entries a message names before it only counts the rest.
NAMED = 8


class UnsafeFolderError(BenchError):
    """A folder holds symbolic links or special files: the harness reads and writes no file
    through them, and refuses the folder as a whole (the message names the entries)."""


def nofollow_opener(path: str, flags: int) -> int:
    """An ``opener`` for :func:`open`: never through a link, never blocking on a FIFO."""
    return os.open(path, flags | _SAFE_FLAGS, 0o666)


def _checked_opener(single_name: bool) -> Callable[[str, int], int]:
    """An ``opener`` like :func:`nofollow_opener` that also refuses (``OSError``) anything but a
    regular file (with one name, if asked), before :func:`open` touches it."""
    def opener(path: str, flags: int) -> int:
        fd = nofollow_opener(path, flags)
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise OSError(errno.EINVAL, "not a regular file", path)
            if single_name and info.st_nlink > 1:
                raise OSError(errno.EMLINK, "a hard link (the file has another name elsewhere): "
                              "refusing to write through it", path)
        except BaseException:
            os.close(fd)
            raise
        return fd

    return opener


_REGULAR = _checked_opener(single_name=False)
#: An ``opener`` for a file the harness writes in place (appends, the lock): never through a
#: link, only a regular file with no second name (a hard link would write a file elsewhere).
one_name_opener = _checked_opener(single_name=True)
_REGULAR_ONE_NAME = one_name_opener


def _temporary_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:12]}.tmp")


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], Any]) -> Path:
    """Write ``path`` whole: ``write`` fills a new temporary file in the same folder (created
    exclusively: never an existing file or a link), which is flushed, synced and renamed over
    ``path``. A link at ``path`` is replaced by the file, never followed; a failure leaves the
    old file as it was and no temporary file."""
    path = Path(path)
    tmp = _temporary_name(path)
    try:
        with open(tmp, "xb") as handle:  # O_CREAT | O_EXCL: fails on any existing name
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """:func:`atomic_write` of ``data``."""
    return atomic_write(path, lambda handle: handle.write(data))


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8"
                      ) -> Path:
    """:func:`atomic_write` of ``text``."""
    return atomic_write_bytes(path, text.encode(encoding))


def append_line(path: str | os.PathLike[str], line: str) -> None:
    """Append one line durably (flushed and fsync'ed) to a regular file with one name, opened
    without following a link (created if missing). It starts on a fresh line even after a torn
    last line (a crash mid-write), so the torn line never swallows it."""
    path = Path(path)
    with open(path, "a+b", opener=_REGULAR_ONE_NAME) as handle:
        size = os.fstat(handle.fileno()).st_size
        start = b""
        if size > 0 and os.pread(handle.fileno(), 1, size - 1) != b"\n":
            start = b"\n"
        handle.write(start + line.encode() + b"\n")
        handle.flush()
        os.fsync(handle.fileno())


def open_append(path: str | os.PathLike[str]) -> IO[str]:
    """A text file opened for appending (a cell's ``cell.log``), without following a link; a
    regular file with one name. The caller closes it."""
    return open(path, "a", opener=_REGULAR_ONE_NAME)  # noqa: SIM115 - the caller closes it


@contextlib.contextmanager
def open_read(path: str | os.PathLike[str]) -> Iterator[IO[bytes]]:
    """A regular file opened for reading, not through a link (``OSError`` otherwise: ELOOP for
    a link, EINVAL for a FIFO, a socket or a device)."""
    with open(path, "rb", opener=_REGULAR) as handle:
        yield handle


def read_bytes(path: str | os.PathLike[str]) -> bytes:
    """The bytes of a regular file, read without following a link (see :func:`open_read`)."""
    with open_read(path) as handle:
        return handle.read()


def read_text(path: str | os.PathLike[str], errors: str = "strict") -> str:
    """The UTF-8 text of a regular file, read without following a link."""
    return read_bytes(path).decode("utf-8", errors=errors)


def is_regular_file(path: str | os.PathLike[str]) -> bool:
    """``path`` is a regular file itself (not a link to one, not a FIFO or a device)."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def is_real_dir(path: str | os.PathLike[str]) -> bool:
    """``path`` is a folder itself (not a link to one)."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def make_dirs(path: str | os.PathLike[str], below: str | os.PathLike[str]) -> Path:
    """Make the folder ``path`` and its parents up to (not including) ``below``, refusing any
    of them that is a link or not a folder (:class:`UnsafeFolderError`): what is written into
    it stays inside ``below``."""
    path, below = Path(path), Path(below)
    parts = path.relative_to(below).parts
    current = below
    for part in parts:
        current = current / part
        with contextlib.suppress(FileExistsError):
            current.mkdir()
        if not is_real_dir(current):
            raise UnsafeFolderError(
                f"{str(current)!r} is {_kind(current)}, not a folder: the harness writes "
                "nothing through a link; remove it")
    return path


def _kind(path: Path) -> str:
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return "missing"
    if stat.S_ISLNK(mode):
        try:
            return f"a symbolic link to {os.readlink(path)!r}"
        except OSError:
            return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISREG(mode):
        return "a file"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a device file"


def unsafe_entries(folder: str | os.PathLike[str]) -> list[str]:
    """Every entry under ``folder`` (at any depth, links not followed) that is a symbolic link
    or a special file (FIFO, socket, device), as ``relative/path (what it is)``; empty for a
    folder of plain files and folders."""
    found: list[str] = []
    root = Path(folder)
    pending = [root]
    while pending:
        current = pending.pop()
        try:
            entries = sorted(os.scandir(current), key=lambda e: e.name)
        except OSError:
            continue  # unreadable: its files are not read either
        for entry in entries:
            path = Path(entry.path)
            if entry.is_dir(follow_symlinks=False):
                pending.append(path)
            elif not entry.is_file(follow_symlinks=False):
                found.append(f"{path.relative_to(root).as_posix()} ({_kind(path)})")
    return sorted(found)


def check_folder(folder: str | os.PathLike[str], what: str = "run directory") -> None:
    """Raise :class:`UnsafeFolderError` naming them when ``folder`` holds links or special
    files: the harness would otherwise read or write through them, outside the folder."""
    found = unsafe_entries(folder)
    if not found:
        return
    named = ", ".join(found[:NAMED]) + (f" and {len(found) - NAMED} more"
                                         if len(found) > NAMED else "")
    raise UnsafeFolderError(
        f"{what} {str(folder)!r} holds symbolic links or special files: {named}. The harness "
        "reads and writes only regular files inside the folder: remove them (or copy the "
        "folder with `cp -rL`), then run the command again")

"""Run directories (their result rows written and read) and loading a run as a pandas
DataFrame; a row itself is a :class:`bench.core.rows.ResultRow`.

A run directory holds::

    config.json        the first invocation's configuration (suites, backends, budget, ...)
    invocations.jsonl  one line per ``bench run`` on this directory (command line, time)
    environment.json   versions, CPU/GPU, git commit (refreshed by each invocation)
    rows.jsonl         one JSON row per finished cell, appended and fsync'ed as each cell ends
    cells/<cell>/      per-cell trace (per-step NFE, times, evaluations), plots, error logs

A cell run again (``--resume``) appends a new row; when loading, the last row per cell wins.

Every file is written and read through :mod:`bench.store.files`: written whole and renamed into
place, appended and read without following a link. A folder that holds links or special files is
refused when it is opened (:meth:`RunDirectory.open`), so nothing is read or written outside it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import functools
import hashlib
import json
import math
import os
import re
import sys
import uuid
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import Any

from bench.core.errors import BenchError
from bench.core.rows import ResultRow, Status, json_default
from bench.store import lock as run_lock
from bench.store.files import (
    append_line,
    atomic_write_text,
    check_folder,
    make_dirs,
    one_name_opener,
    open_read,
    read_bytes,
)
from bench.store.formats import csv_value


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


#: The longest cell folder name. File systems take 255 bytes per name; a longer cell id (long
#: option values, a huge seed) keeps a readable start and ends with a hash of the whole id.
MAX_CELL_FOLDER = 200


def cell_folder_name(cell_id: str) -> str:
    """The folder name of a cell under ``cells/``: the id made safe, or, when that is longer than
    :data:`MAX_CELL_FOLDER`, its start and a hash of the whole id (distinct ids, distinct
    folders)."""
    name = safe_name(cell_id.replace("/", "__"))
    if len(name) <= MAX_CELL_FOLDER:
        return name
    digest = hashlib.sha256(cell_id.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{name[:MAX_CELL_FOLDER - len(digest) - 1]}-{digest}"


class RunDirectory:
    """A run's directory. Created exclusively; locked while a run writes to it."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock_file: Any = None

    # -- creating and opening ---------------------------------------------------------------------
    @classmethod
    def create(cls, path: Path | None = None, base: Path = Path("runs"), label: str = "run"
               ) -> RunDirectory:
        """Create a new run directory. ``path`` must not exist or be an empty directory; without
        it, a unique timestamped directory under ``base`` is made."""
        if path is not None:
            path = Path(path)
            if path.exists() and not path.is_dir():
                raise BenchError(f"--out {str(path)!r} is a file, not a directory: choose another "
                                 "--out")
            if path.is_dir() and not any(path.iterdir()):  # an empty directory is a new run
                check_writable(path, "run directory")
                return cls(path)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except FileExistsError:  # a part of the path is a file
                raise location_error("run directory", path, NotADirectoryError()) from None
            except OSError as exc:
                raise location_error("run directory", path, exc) from None
            try:
                path.mkdir()
            except FileExistsError:
                raise BenchError(
                    f"run directory {str(path)!r} already exists: pass --resume to finish the "
                    "cells it lacks, or choose another --out"
                ) from None
            except OSError as exc:
                raise location_error("run directory", path, exc) from None
            check_writable(path, "run directory")
            return cls(path)
        try:
            base.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise location_error("folder for run directories", base, exc,
                                  "; pass --out DIR somewhere writable") from None
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        for i in range(1000):
            candidate = base / (f"{stamp}-{safe_name(label)[:100]}" + ("" if i == 0 else f"-{i}"))
            try:
                candidate.mkdir()
            except FileExistsError:
                continue
            except OSError as exc:
                raise location_error("folder for run directories", base, exc,
                                      "; pass --out DIR somewhere writable") from None
            check_writable(candidate, "run directory")
            return cls(candidate)
        raise BenchError(f"could not create a new run directory under {str(base)!r}")

    @classmethod
    def open(cls, path: Path) -> RunDirectory:
        """Open a run directory, or a published results folder (``results.csv``, no rows.jsonl;
        see :func:`bench.reports.publish.publish_run`), for reading."""
        path = Path(path)
        if not path.is_dir():
            what = "it does not exist" if not path.exists() else "it is a file"
            raise BenchError(f"{str(path)!r} is not a run directory or a published results "
                             f"folder ({what})")
        if not any((path / name).exists() for name in ("rows.jsonl", "config.json",
                                                       RESULTS_CSV)):
            raise BenchError(f"{str(path)!r} is not a run directory (no rows.jsonl, config.json "
                             f"or {RESULTS_CSV})")
        check_folder(path, "published results folder" if cls(path).is_published
                     else "run directory")
        return cls(path)

    @property
    def is_published(self) -> bool:
        """A published results folder: its rows are in results.csv, not rows.jsonl."""
        return not (self.path / "rows.jsonl").exists() and (self.path / RESULTS_CSV).exists()

    def lock(self) -> None:
        """Hold an exclusive lock for the rest of the process: two runs never write one dir
        (:func:`bench.store.lock.acquire`: an ``flock`` the kernel releases when its owner dies;
        a stale lock of a process gone from this host is cleared with a message)."""
        try:
            self._lock_file = run_lock.acquire(self.path)
        except OSError as exc:
            raise location_error("run directory", self.path, exc) from None

    def check_writable(self) -> None:
        """Raise :class:`BenchError` unless rows can be appended here (before any cell runs):
        never into a published results folder, whose rows.jsonl would hide its results.csv."""
        if self.is_published:
            raise BenchError(
                f"{str(self.path)!r} is a published results folder ({RESULTS_CSV}, no "
                "rows.jsonl): a run appended here would hide its rows. Resume the run directory "
                "it was published from, or run into a new --out")
        check_writable(self.path, "run directory")
        rows = self.path / "rows.jsonl"
        if rows.exists() or rows.is_symlink():
            try:
                with open(rows, "a", opener=one_name_opener):
                    pass
            except OSError as exc:
                raise location_error("rows file", rows, exc) from None

    def unlock(self) -> None:
        run_lock.release(self._lock_file)
        self._lock_file = None

    # -- writing ----------------------------------------------------------------------------------
    def write_json(self, name: str, data: Any) -> None:
        """Write ``name`` whole (a temporary file renamed into place, never through a link)."""
        atomic_write_text(self.path / name,
                          json.dumps(data, indent=2, default=json_default) + "\n")

    def append_jsonl(self, name: str, line: str) -> None:
        """Append one line durably, never through a link. It starts on a fresh line even after
        a torn last line (a crash mid-write), so the torn line never swallows it."""
        append_line(self.path / name, line)

    def append_row(self, row: ResultRow) -> None:
        """Append one row durably (flushed and fsync'ed before returning)."""
        self.append_jsonl("rows.jsonl", row.to_json())

    def cell_dir(self, cell_id: str, create: bool = True) -> Path:
        """The folder of the cell ``cell_id`` (made unless ``create`` is False): the one place
        that names it. Made only as real folders (``cells`` or the cell's folder planted as a
        link is refused), so a cell's files stay inside the run directory."""
        path = self.path / "cells" / cell_folder_name(cell_id)
        if create:
            make_dirs(path, self.path)
        return path

    # -- reading ----------------------------------------------------------------------------------
    def read_json(self, name: str) -> Any:
        """The JSON object in ``name`` (None when it is missing; a file that is not a JSON
        object, or that cannot be read, gives a warning and None)."""
        path = self.path / name
        if not path.exists() and not path.is_symlink():
            return None
        try:
            data = json.loads(read_bytes(path).decode("utf-8", errors="replace"))
        except (OSError, ValueError, RecursionError) as exc:
            warn(f"{path}: ignored ({getattr(exc, 'strerror', None) or exc})")
            return None
        if not isinstance(data, dict):
            warn(f"{path}: ignored (not a JSON object but {type(data).__name__})")
            return None
        return data

    def rows(self) -> list[ResultRow]:
        """The latest row of each cell, in the order cells first finished."""
        if self.is_published:
            config = self.read_json("config.json") or {}
            return read_csv_rows(self.path / RESULTS_CSV, set(config.get("options") or {}))
        return latest_rows(read_rows(self.path / "rows.jsonl"))


RESULTS_CSV = "results.csv"


def location_error(what: str, path: Path, exc: OSError, hint: str = "") -> BenchError:
    reason = exc.strerror or type(exc).__name__
    if isinstance(exc, NotADirectoryError):
        reason = "a part of the path is a file, not a directory"
    return BenchError(f"cannot write the {what} {str(path)!r}: {reason}{hint or ''}")


def check_writable(path: Path, what: str) -> None:
    """Raise :class:`BenchError` naming ``path`` unless a file can be created in it (a new,
    randomly named file, created exclusively: never an existing file or a link)."""
    probe = Path(path) / f".write-test-{os.getpid()}-{uuid.uuid4().hex[:12]}"
    try:
        with open(probe, "x") as f:
            f.write("x")
        probe.unlink()
    except OSError as exc:
        raise location_error(what, Path(path), exc) from None


@functools.lru_cache(maxsize=1024)
def warn(message: str) -> None:
    """A warning on stderr (not :mod:`warnings`: the reader carries on), once per process: a
    run reads its rows several times."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


def _row_problem(data: Any) -> str:
    """Why a parsed line is not a result row ('' when it is one)."""
    if not isinstance(data, dict):
        return f"not a JSON object but {type(data).__name__}"
    for field in dataclasses.fields(ResultRow):
        required = (field.default is dataclasses.MISSING
                    and field.default_factory is dataclasses.MISSING)
        if required and field.name not in data:
            return f"field {field.name!r} is missing"
    for name in ("metrics", "options"):
        if name in data and not isinstance(data[name], dict):
            return f"field {name!r} is not an object"
    statuses = [s.value for s in Status]
    if data["status"] not in statuses:
        return f"field 'status' is {data['status']!r}, not one of {', '.join(statuses)}"
    for field in dataclasses.fields(ResultRow):
        value = data.get(field.name)
        if value is None or field.name in ("metrics", "options"):
            continue
        numeric = field.type in ("int", "float", "int | None", "float | None")
        if numeric and (isinstance(value, bool) or not isinstance(value, (int, float))):
            return f"field {field.name!r} is not a number"
        if field.type == "str" and not isinstance(value, str):
            return f"field {field.name!r} is not a string"
    return ""


def read_rows(path: Path) -> list[ResultRow]:
    """Every row of a rows.jsonl. A line that is not a row (torn by a crash mid-write, or
    edited by hand) is skipped with a warning naming the file and line; the rest are kept."""
    rows: list[ResultRow] = []
    if not path.exists() and not path.is_symlink():
        return rows
    try:
        lines = read_bytes(path).decode("utf-8", errors="replace").splitlines()
    except OSError as exc:
        raise BenchError(f"cannot read {str(path)!r}: {exc.strerror or exc}") from None
    for lineno, line in enumerate(lines, 1):
        line = line.strip()
        if not line:
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            warn(f"{path}:{lineno}: skipped a line that is not valid JSON ({exc.msg}; "
                 "torn by a crash mid-write?)")
            continue
        except RecursionError:
            warn(f"{path}:{lineno}: skipped a line that is not valid JSON (nested too deep)")
            continue
        problem = _row_problem(data)
        if problem:
            warn(f"{path}:{lineno}: skipped a line that is not a result row ({problem})")
            continue
        rows.append(ResultRow.from_dict(data))
    return rows


def read_csv_rows(path: Path, option_names: Collection[str] = frozenset()) -> list[ResultRow]:
    """The rows of a published ``results.csv`` (one flat row per cell, as
    :func:`bench.reports.publish.publish_run` writes it). Columns that are not row fields come back
    as metrics, except options (the names in ``option_names`` and text columns). Text cells that
    were quoted against spreadsheet formulas (:func:`bench.store.formats.csv_cell`) come back as
    they were."""
    import pandas as pd

    try:
        with open_read(path) as handle:
            frame = pd.read_csv(handle, keep_default_na=False, na_values=[""])
    except (OSError, ValueError) as exc:  # pandas' parser errors are ValueErrors
        raise BenchError(f"cannot read {str(path)!r}: {exc}") from None
    fields = {f.name: f for f in dataclasses.fields(ResultRow)}
    rows = []
    for lineno, record in enumerate(frame.to_dict("records"), 2):
        data: dict[str, Any] = {"metrics": {}, "options": {}}
        for key, value in record.items():
            key, value = csv_value(str(key)), csv_value(_plain(value))
            if key in fields:
                if value is None and fields[key].type == "str":
                    value = ""
                if value is not None and fields[key].type in ("int", "int | None"):
                    with contextlib.suppress(TypeError, ValueError, OverflowError):
                        value = int(value)  # not a number: _row_problem names it
                if value is not None and fields[key].type == "str":
                    value = str(value)
                if value is not None or fields[key].default is None:
                    data[key] = value
            elif value is None:
                continue
            elif key in option_names or isinstance(value, str):
                data["options"][key] = value
            else:
                data["metrics"][key] = value
        problem = _row_problem(data)
        if problem:
            warn(f"{path}:{lineno}: skipped a line that is not a result row ({problem})")
            continue
        rows.append(ResultRow.from_dict(data))
    return latest_rows(rows)


def _plain(value: Any) -> Any:
    """A pandas cell as a plain Python value; missing values as None."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def latest_rows(rows: Iterable[ResultRow]) -> list[ResultRow]:
    latest: dict[str, ResultRow] = {}
    for row in rows:
        latest.pop(row.cell_id, None)
        latest[row.cell_id] = row
    return list(latest.values())


def load_run(path: str | os.PathLike[str]):  # -> pandas.DataFrame
    """Load a run directory's rows (latest per cell) as a pandas DataFrame."""
    rows = RunDirectory.open(Path(path)).rows()
    return rows_to_frame(rows)


def rows_to_frame(rows: Iterable[ResultRow]):  # -> pandas.DataFrame
    import pandas as pd

    columns = [f.name for f in dataclasses.fields(ResultRow)
               if f.name not in ("metrics", "options", "backend_params")]
    flat = [row.flat() for row in rows]
    frame = pd.DataFrame(flat)
    if frame.empty:
        return pd.DataFrame(columns=columns)
    extra = [c for c in frame.columns if c not in columns]
    frame = frame[columns + extra]
    for field in dataclasses.fields(ResultRow):  # a numeric column left empty is float NaN
        if field.type in ("float | None", "int | None") and frame[field.name].dtype == object:
            frame[field.name] = pd.to_numeric(frame[field.name])
    return frame

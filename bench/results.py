"""Result rows, run directories and loading a run as a pandas DataFrame.

A run directory holds::

    config.json        the first invocation's configuration (suites, backends, budget, ...)
    invocations.jsonl  one line per ``bench run`` on this directory (command line, time)
    environment.json   versions, CPU/GPU, git commit (refreshed by each invocation)
    rows.jsonl         one JSON row per finished cell, appended and fsync'ed as each cell ends
    cells/<cell>/      per-cell trace (per-step NFE, times, evaluations), plots, error logs

A cell run again (``--resume``) appends a new row; when loading, the last row per cell wins.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import fcntl
import functools
import json
import math
import os
import re
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from bench.errors import BenchError

Status = Literal["ok", "failed", "timeout", "unsupported", "diverged"]
STATUSES: tuple[str, ...] = ("ok", "failed", "timeout", "unsupported", "diverged")


@dataclasses.dataclass(frozen=True)
class ResultRow:
    """One cell's outcome. Units are in the field names; ``None`` means not measured."""

    cell_id: str
    suite: str
    backend: str
    framework: str
    gradient_method: str
    solver: str
    device: str
    seed: int
    budget: str
    status: str
    error: str = ""
    #: The suite's headline metric name (also a key of ``metrics``) and whether lower is better.
    metric_name: str = ""
    metric_direction: str = "lower"
    #: The suite's metrics under their own names (``test_error_pct``, ``nll_nats``, ``mse``, ...).
    metrics: Mapping[str, float] = dataclasses.field(default_factory=dict)
    #: The suite options the cell ran with (``--set key=value``), also spread into columns.
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    #: Means per training iteration.
    nfe_forward: float | None = None
    nfe_backward: float | None = None
    steps_accepted: float | None = None
    steps_rejected: float | None = None
    train_steps: int | None = None
    #: Median over steady-state steps (all but the first), synchronised.
    train_step_time_s: float | None = None
    #: Extra time of the first step over the steady-state median (JIT compilation, allocations).
    compile_time_s: float | None = None
    #: Time of the final evaluation.
    eval_time_s: float | None = None
    #: Whole cell, including set-up (data, model building) and evaluation.
    total_time_s: float | None = None
    #: Steady-state peak (after the first step) and the first step's own peak, both above the
    #: memory in use before the phase; ``peak_memory_method`` says how they were measured.
    peak_memory_bytes: int | None = None
    peak_memory_first_step_bytes: int | None = None
    peak_memory_method: str = ""
    #: Measured in the memory steps (the same steps as ``peak_memory_bytes``), never in a timed one.
    saved_for_backward_bytes: int | None = None
    #: NFE of the memory steps (the largest over them), beside the memory they measured: an
    #: adaptive solver may take another number of steps there than in the mean training step.
    memory_step_nfe_forward: float | None = None
    memory_step_nfe_backward: float | None = None
    params: int | None = None
    device_name: str = ""
    #: The host's 1-minute load average when the cell finished: CPU timings taken while it
    #: exceeds the core count are contaminated by other work.
    host_load_1m: float | None = None
    #: Mean cores kept busy by other processes while the cell ran (host CPU busy time minus the
    #: cell's own, from /proc, sampled by the parent).
    host_busy_cores_other: float | None = None
    #: The timings may not be comparable: the host was loaded beyond the cores the cell left
    #: free, or the steady step times spread far above usual; ``timing_warning`` says which.
    timing_flag: bool = False
    timing_warning: str = ""
    #: Solver tolerances the cell ran with (None: a fixed-step solve), and the adjoint's reverse
    #: solve's; a suite budget's tolerances win over the backend's.
    rtol: float | None = None
    atol: float | None = None
    adjoint_rtol: float | None = None
    adjoint_atol: float | None = None
    notes: str = ""
    finished_at: str = ""

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), default=_json_default, allow_nan=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ResultRow:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def flat(self) -> dict[str, Any]:
        """The row as flat columns: ``metrics`` spread into their own columns."""
        data = dataclasses.asdict(self)
        for nested in ("metrics", "options"):
            for key, value in data.pop(nested).items():
                data.setdefault(key, value)
        return data

    @property
    def metric(self) -> float | None:
        return self.metrics.get(self.metric_name)


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot store {type(obj).__name__} in a result row")


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


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
                raise _location_error("run directory", path, NotADirectoryError()) from None
            except OSError as exc:
                raise _location_error("run directory", path, exc) from None
            try:
                path.mkdir()
            except FileExistsError:
                raise BenchError(
                    f"run directory {str(path)!r} already exists: pass --resume to finish the "
                    "cells it lacks, or choose another --out"
                ) from None
            except OSError as exc:
                raise _location_error("run directory", path, exc) from None
            check_writable(path, "run directory")
            return cls(path)
        try:
            base.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _location_error("folder for run directories", base, exc,
                                  "; pass --out DIR somewhere writable") from None
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        for i in range(1000):
            candidate = base / (f"{stamp}-{safe_name(label)}" + ("" if i == 0 else f"-{i}"))
            try:
                candidate.mkdir()
            except FileExistsError:
                continue
            except OSError as exc:
                raise _location_error("folder for run directories", base, exc,
                                      "; pass --out DIR somewhere writable") from None
            check_writable(candidate, "run directory")
            return cls(candidate)
        raise BenchError(f"could not create a new run directory under {str(base)!r}")

    @classmethod
    def open(cls, path: Path) -> RunDirectory:
        """Open a run directory, or a published results folder (``results.csv``, no rows.jsonl;
        see :func:`publish_run`), for reading."""
        path = Path(path)
        if not path.is_dir():
            what = "it does not exist" if not path.exists() else "it is a file"
            raise BenchError(f"{str(path)!r} is not a run directory or a published results "
                             f"folder ({what})")
        if not any((path / name).exists() for name in ("rows.jsonl", "config.json",
                                                       RESULTS_CSV)):
            raise BenchError(f"{str(path)!r} is not a run directory (no rows.jsonl, config.json "
                             f"or {RESULTS_CSV})")
        return cls(path)

    @property
    def is_published(self) -> bool:
        """A published results folder: its rows are in results.csv, not rows.jsonl."""
        return not (self.path / "rows.jsonl").exists() and (self.path / RESULTS_CSV).exists()

    def lock(self) -> None:
        """Hold an exclusive lock for the rest of the process: two runs never write one dir.

        The lock is an ``flock`` on ``.lock``: the kernel releases it when its owner dies (even
        by SIGKILL), and cell processes never hold it (the lock file is opened close-on-exec and
        cells are started with ``spawn``), so a dead run's directory is free for ``--resume``."""
        try:
            self._lock_file = open(self.path / ".lock", "a+")  # noqa: SIM115
        except OSError as exc:
            raise _location_error("run directory", self.path, exc) from None
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.seek(0)
            owner = self._lock_file.read().strip()
            self._lock_file.close()
            self._lock_file = None
            raise BenchError(
                f"run directory {str(self.path)!r} is in use by another bench run"
                + (f" (process {owner})" if owner.isdigit() else "")
            ) from None
        with contextlib.suppress(OSError):  # who holds it, for the message above
            self._lock_file.seek(0)
            self._lock_file.truncate()
            self._lock_file.write(f"{os.getpid()}\n")
            self._lock_file.flush()

    def check_writable(self) -> None:
        """Raise :class:`BenchError` unless rows can be appended here (before any cell runs)."""
        check_writable(self.path, "run directory")
        rows = self.path / "rows.jsonl"
        if rows.exists():
            try:
                with open(rows, "a"):
                    pass
            except OSError as exc:
                raise _location_error("rows file", rows, exc) from None

    def unlock(self) -> None:
        if self._lock_file is not None:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None

    # -- writing ----------------------------------------------------------------------------------
    def write_json(self, name: str, data: Any) -> None:
        tmp = self.path / (name + ".tmp")
        tmp.write_text(json.dumps(data, indent=2, default=_json_default) + "\n")
        os.replace(tmp, self.path / name)

    def append_jsonl(self, name: str, line: str) -> None:
        """Append one line durably. It starts on a fresh line even after a torn last line (a
        crash mid-write), so the torn line never swallows it."""
        with open(self.path / name, "a+b") as f:
            f.seek(0, os.SEEK_END)
            start = b""
            if f.tell() > 0:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    start = b"\n"
            f.write(start + line.encode() + b"\n")
            f.flush()
            os.fsync(f.fileno())

    def append_row(self, row: ResultRow) -> None:
        """Append one row durably (flushed and fsync'ed before returning)."""
        self.append_jsonl("rows.jsonl", row.to_json())

    def cell_dir(self, cell_id: str) -> Path:
        path = self.path / "cells" / safe_name(cell_id.replace("/", "__"))
        path.mkdir(parents=True, exist_ok=True)
        return path

    # -- reading ----------------------------------------------------------------------------------
    def read_json(self, name: str) -> Any:
        path = self.path / name
        return json.loads(path.read_text()) if path.exists() else None

    def rows(self) -> list[ResultRow]:
        """The latest row of each cell, in the order cells first finished."""
        if self.is_published:
            config = self.read_json("config.json") or {}
            return read_csv_rows(self.path / RESULTS_CSV, set(config.get("options") or {}))
        return latest_rows(read_rows(self.path / "rows.jsonl"))


RESULTS_CSV = "results.csv"


def _location_error(what: str, path: Path, exc: OSError, hint: str = "") -> BenchError:
    reason = exc.strerror or type(exc).__name__
    if isinstance(exc, NotADirectoryError):
        reason = "a part of the path is a file, not a directory"
    return BenchError(f"cannot write the {what} {str(path)!r}: {reason}{hint or ''}")


def check_writable(path: Path, what: str) -> None:
    """Raise :class:`BenchError` naming ``path`` unless a file can be created in it."""
    probe = Path(path) / f".write-test-{os.getpid()}"
    try:
        with open(probe, "w") as f:
            f.write("x")
        probe.unlink()
    except OSError as exc:
        raise _location_error(what, Path(path), exc) from None


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
        if field.default is dataclasses.MISSING and field.name not in data:
            return f"field {field.name!r} is missing"
    for name in ("metrics", "options"):
        if name in data and not isinstance(data[name], dict):
            return f"field {name!r} is not an object"
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
    if not path.exists():
        return rows
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = list(f)
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
        problem = _row_problem(data)
        if problem:
            warn(f"{path}:{lineno}: skipped a line that is not a result row ({problem})")
            continue
        rows.append(ResultRow.from_dict(data))
    return rows


def read_csv_rows(path: Path, option_names: set[str] = frozenset()) -> list[ResultRow]:
    """The rows of a published ``results.csv`` (one flat row per cell, as :func:`publish_run`
    writes it). Columns that are not row fields come back as metrics, except options (the
    names in ``option_names`` and text columns)."""
    import pandas as pd

    try:
        frame = pd.read_csv(path, keep_default_na=False, na_values=[""])
    except (OSError, ValueError) as exc:  # pandas' parser errors are ValueErrors
        raise BenchError(f"cannot read {str(path)!r}: {exc}") from None
    fields = {f.name: f for f in dataclasses.fields(ResultRow)}
    rows = []
    for lineno, record in enumerate(frame.to_dict("records"), 2):
        data: dict[str, Any] = {"metrics": {}, "options": {}}
        for key, value in record.items():
            value = _plain(value)
            if key in fields:
                if value is None and fields[key].type in ("str", "Status"):
                    value = ""
                if value is not None and fields[key].type in ("int", "int | None"):
                    value = int(value)
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
               if f.name not in ("metrics", "options")]
    flat = [row.flat() for row in rows]
    frame = pd.DataFrame(flat)
    if frame.empty:
        return pd.DataFrame(columns=columns)
    extra = [c for c in frame.columns if c not in columns]
    return frame[columns + extra]


def is_finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def publish_run(run: str | os.PathLike[str], dest: str | os.PathLike[str]) -> list[Path]:
    """Copy what a published table needs out of a scratch run: the markdown table, the CSV of
    every column, environment.json, config.json, invocations.jsonl and the run's plots; then
    write the folder's self-contained page, ``index.html``."""
    import shutil

    from bench.report import render, table_frame

    source = RunDirectory.open(Path(run))
    dest = Path(dest)
    if dest.exists():
        raise BenchError(f"{str(dest)!r} already exists: publish into a new folder")
    try:
        dest.mkdir(parents=True)
        check_writable(dest, "results folder")
    except OSError as exc:
        raise _location_error("results folder", dest, exc) from None
    frame = rows_to_frame(source.rows())
    written = [dest / "results.md", dest / "results.csv"]
    written[0].write_text(render(table_frame(frame), "markdown"))
    written[1].write_text(frame.to_csv(index=False))
    for name in ("environment.json", "config.json", "invocations.jsonl"):
        if (source.path / name).exists():
            shutil.copy2(source.path / name, dest / name)
            written.append(dest / name)
    for extra in sorted(source.path.glob("*.png")) + sorted(source.path.glob("memory_*.*")):
        shutil.copy2(extra, dest / extra.name)
        written.append(dest / extra.name)
    from bench.html_report import write_page

    written.append(write_page(dest))
    return written

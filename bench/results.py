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

import dataclasses
import datetime as _dt
import fcntl
import json
import math
import os
import re
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
        """Create a new run directory. ``path`` must not exist; without it, a unique timestamped
        directory under ``base`` is made."""
        if path is not None:
            path = Path(path)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.mkdir()
            except FileExistsError:
                raise BenchError(
                    f"run directory {str(path)!r} already exists: pass --resume to finish the "
                    "cells it lacks, or choose another --out"
                ) from None
            return cls(path)
        base.mkdir(parents=True, exist_ok=True)
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        for i in range(1000):
            candidate = base / (f"{stamp}-{safe_name(label)}" + ("" if i == 0 else f"-{i}"))
            try:
                candidate.mkdir()
                return cls(candidate)
            except FileExistsError:
                continue
        raise BenchError(f"could not create a new run directory under {str(base)!r}")

    @classmethod
    def open(cls, path: Path) -> RunDirectory:
        path = Path(path)
        if not (path / "rows.jsonl").exists() and not (path / "config.json").exists():
            raise BenchError(f"{str(path)!r} is not a run directory (no rows.jsonl or config.json)")
        return cls(path)

    def lock(self) -> None:
        """Hold an exclusive lock for the rest of the process: two runs never write one dir."""
        self._lock_file = open(self.path / ".lock", "a+")  # noqa: SIM115
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            self._lock_file = None
            raise BenchError(
                f"run directory {str(self.path)!r} is in use by another bench run"
            ) from None

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
        with open(self.path / name, "a") as f:
            f.write(line + "\n")
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
        return latest_rows(read_rows(self.path / "rows.jsonl"))


def read_rows(path: Path) -> list[ResultRow]:
    rows: list[ResultRow] = []
    if not path.exists():
        return rows
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(ResultRow.from_dict(json.loads(line)))
            except (json.JSONDecodeError, TypeError):
                continue  # a line torn by a crash mid-write: the rest are intact
    return rows


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
    every column, environment.json, config.json, invocations.jsonl and the run's plots."""
    import shutil

    from bench.report import render, table_frame

    source = RunDirectory.open(Path(run))
    dest = Path(dest)
    if dest.exists():
        raise BenchError(f"{str(dest)!r} already exists: publish into a new folder")
    dest.mkdir(parents=True)
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
    return written

"""The progress of a run whose cells run at once (``--jobs N``, Dask): one live view of the
running cells (cell, step / total, its ETA) and of the whole run, redrawn in place when stderr is
a terminal; plain lines (a cell started, a cell finished, a step every 30 s) otherwise, so a log
file never holds interleaved redraws.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

#: Seconds between two redraws of the live view (and between two plain step lines of a cell: 30).
REDRAW_S = 0.25
STEP_LINE_S = 30.0


@dataclasses.dataclass
class _Running:
    worker: str
    started: float
    step: int = 0
    total: int = 0
    last_line: float = 0.0


def fmt_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class ProgressView:
    """Thread-safe: the cells' watching threads report steps, the run's thread the rest."""

    def __init__(self, total: int, jobs: int, echo: Callable[[str], None],
                 live: bool = False, stream: TextIO | None = None):
        self.total, self.jobs, self.echo, self.live = total, max(jobs, 1), echo, live
        self.stream = stream if stream is not None else sys.stderr
        self.started_at = time.monotonic()
        self.done = 0
        self.measured: list[float] = []
        self._running: dict[str, _Running] = {}
        self._lock = threading.Lock()
        self._drawn = 0
        self._last_draw = 0.0

    # -- events -------------------------------------------------------------------------------
    def started(self, cell_id: str, worker: str) -> None:
        with self._lock:
            self._running[cell_id] = _Running(worker, time.monotonic())
            if not self.live:
                self.echo(f"[start] {cell_id} ({worker})")
            self._draw(force=True)

    def step(self, cell_id: str, step: int, total: int) -> None:
        with self._lock:
            cell = self._running.get(cell_id)
            if cell is None:
                return
            cell.step, cell.total = step, total
            now = time.monotonic()
            if not self.live and now - cell.last_line >= STEP_LINE_S:
                cell.last_line = now
                self.echo(f"    {cell_id}: step {step}/{total}")
            self._draw()

    def finished(self, cell_id: str, line: str, measured: bool) -> None:
        """A cell's row is saved: ``line`` (its summary) goes above the view."""
        with self._lock:
            cell = self._running.pop(cell_id, None)
            self.done += 1
            if measured and cell is not None:
                self.measured.append(time.monotonic() - cell.started)
            if self.live:
                self._clear()
                self.stream.write(line + "\n")
            else:
                self.echo(line)
            self._draw(force=True)

    def message(self, text: str) -> None:
        """Any other line of the run (an error saving a row): above the view, never inside."""
        with self._lock:
            if not self.live:
                self.echo(text)
                return
            self._clear()
            self.stream.write(text + "\n")
            self._draw(force=True)

    def tick(self) -> None:
        """Redraw the live view (its clocks move on between events)."""
        with self._lock:
            self._draw()

    def close(self) -> None:
        with self._lock:
            self._clear()
            self.stream.flush()

    # -- what is shown --------------------------------------------------------------------------
    def eta_s(self) -> float | None:
        """Seconds left for the whole run: the mean measured cell's time for the cells left,
        ``jobs`` at once."""
        if not self.measured or self.done >= self.total:
            return None
        return sum(self.measured) / len(self.measured) * (self.total - self.done) / self.jobs

    def lines(self) -> list[str]:
        now = time.monotonic()
        shown = []
        for cell_id, cell in self._running.items():
            elapsed = now - cell.started
            text = f"  {cell_id} [{cell.worker}]"
            if cell.total:
                text += f" step {cell.step}/{cell.total}"
                if cell.step:
                    text += f", ~{fmt_duration(elapsed / cell.step * (cell.total - cell.step))}"
                    text += " left"
            shown.append(text + f" ({fmt_duration(elapsed)})")
        eta = self.eta_s()
        summary = (f"[{self.done}/{self.total}] done, {len(self._running)} running, elapsed "
                   f"{fmt_duration(now - self.started_at)}"
                   + (f", ~{fmt_duration(eta)} left" if eta is not None else ""))
        return [summary, *shown]

    def _clear(self) -> None:
        if self.live and self._drawn:
            self.stream.write(f"\x1b[{self._drawn}F\x1b[J")
            self._drawn = 0

    def _draw(self, force: bool = False) -> None:
        if not self.live:
            return
        now = time.monotonic()
        if not force and now - self._last_draw < REDRAW_S:
            return
        self._last_draw = now
        width = max(20, shutil.get_terminal_size((100, 20)).columns - 1)
        lines = [line[:width] for line in self.lines()]  # a wrapped line would break the redraw
        self._clear()
        self.stream.write("".join(line + "\n" for line in lines))
        self.stream.flush()
        self._drawn = len(lines)

"""``bench compare BASE NEW``: a regression gate for CI, on what does not drift.

One matching rule (:func:`pair_rows`, shared with ``bench report A B``): rows pair on their cell,
that is suite, backend configuration, budget, device, identifying options and seed (the cell id);
the latest row of each cell counts. Then, figure by figure, each with its own tolerance
(:class:`Thresholds`):

- **counts** (forward/backward NFE, accepted/rejected steps): deterministic at a seed on one
  machine, compared near-exactly (``--max-count-change``, relative, default 1%; 0: exactly);
- **the metric** at the same seed: ``--max-metric-change`` in its own unit, in the worse
  direction (default 1% of BASE's); a metric missing or not finite in NEW fails;
- **memory** (peak, MiB): ``--max-memory-growth``, a ratio;
- **gradient error** (``grad_rel_error``, ``grad_rel_error_final``): ``--max-grad-error-growth``;
- **time** (steady step time): only when neither side's timing is flagged and both ran at the
  same concurrency, ``--max-slowdown``; otherwise the time gate cannot judge and says why.

The gate fails (exit 1, listing them) when NEW lacks a cell or seed that BASE has, when a cell
``ok`` in BASE is not ``ok`` in NEW, when BASE has no ``ok`` row, or when a figure moved beyond
its tolerance. When nothing failed but a time could not be judged, it exits with its own status
(:data:`EXIT_TIME_NOT_COMPARABLE`): neither a silent pass nor a false slowdown. Its summary says
which kind of figure moved.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from bench.core.errors import BenchError
from bench.core.rows import ResultRow, Status, TextEnum
from bench.store.formats import markdown_cell
from bench.store.results import RunDirectory, latest_rows

#: ``bench compare``'s exit status when nothing failed but a time could not be judged (flagged
#: timings, or timings at different concurrency): 0 is a pass, 1 a failure, 2 bad input.
EXIT_TIME_NOT_COMPARABLE = 3


def options_text(cell_id: str) -> str:
    """The identifying suite options in a cell id ``suite/backend/budget/seedN/device[/key=value,
    ...]`` (``steps=64``; '' for none), for tables that show them as columns."""
    parts = cell_id.split("/", 5)
    return parts[5] if len(parts) == 6 else ""


class FigureKind(TextEnum):
    """What kind of figure a finding is about: the gate says which kind moved."""

    CELL = "cell"  # a cell or seed present in BASE and missing in NEW
    STATUS = "status"
    COUNT = "count"
    METRIC = "metric"
    MEMORY = "memory"
    GRADIENT = "gradient"
    TIME = "time"


class Verdict(TextEnum):
    SAME = "same"
    #: A time within its limit: times always differ a little, so this is not counted as moved.
    OK = "ok"
    #: Changed within its tolerance (or better).
    MOVED = "moved"
    FAIL = "FAIL"
    #: A time that cannot be judged (flagged, or at another concurrency).
    NOT_COMPARABLE = "not comparable"


@dataclasses.dataclass(frozen=True)
class Thresholds:
    #: NEW / BASE of the steady-state step time above which a cell fails (comparable times only).
    max_slowdown: float = 1.10
    #: NEW / BASE of the steady-state peak memory above which a cell fails.
    max_memory_growth: float = 1.05
    #: Largest change of the suite metric at the same seed in its worse direction (its own
    #: unit); None: 1% of BASE's value (float rounding on another core count or CPU moves a
    #: trained metric a little at the same seed); 0: any worse value fails.
    max_metric_change: float | None = None
    #: Largest relative change of a count (NFE, steps; means over the training steps); 0: counts
    #: must match exactly. Default 1%: an adaptive solver's counts are exact at a seed on one
    #: machine and thread count, and drift by a fraction of a percent across them (cnf quick,
    #: diffrax-backsolve: 26.82 against 26.86 forward NFE).
    max_count_change: float = 0.01
    #: NEW / BASE of a gradient's relative error above which a cell fails.
    max_grad_error_growth: float = 1.10

    def check(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is None:
                continue
            ratio = field.name in ("max_slowdown", "max_memory_growth", "max_grad_error_growth")
            if not math.isfinite(value) or value < 0 or (ratio and value <= 0):
                option = "--" + field.name.replace("_", "-")
                valid = ("a positive ratio, e.g. 1.10" if ratio
                         else "a non-negative number, e.g. 0.5")
                raise BenchError(f"{option} {value}: expected {valid}")


@dataclasses.dataclass(frozen=True)
class Finding:
    cell: str
    kind: FigureKind
    column: str
    base: float | None
    new: float | None
    change: str
    verdict: Verdict


@dataclasses.dataclass(frozen=True)
class Pairing:
    """BASE's and NEW's latest rows paired on their cell (:func:`pair_rows`)."""

    pairs: list[tuple[ResultRow, ResultRow]]
    only_base: list[ResultRow]
    only_new: list[ResultRow]


def pair_rows(base: Iterable[ResultRow], new: Iterable[ResultRow]) -> Pairing:
    """The one matching rule of ``bench compare`` and ``bench report A B``: the latest row of
    each cell on either side, paired on the cell (suite, backend configuration, budget, device,
    identifying options, seed: its id)."""
    base_rows, new_rows = latest_rows(base), latest_rows(new)
    new_by_cell = {row.cell_id: row for row in new_rows}
    base_cells = {row.cell_id for row in base_rows}
    return Pairing([(row, new_by_cell[row.cell_id]) for row in base_rows
                    if row.cell_id in new_by_cell],
                   [row for row in base_rows if row.cell_id not in new_by_cell],
                   [row for row in new_rows if row.cell_id not in base_cells])


def describe_mismatch(base: Sequence[ResultRow], new: Sequence[ResultRow]) -> str:
    """What differs between two runs that share no cell: ``budgets BASE: quick; NEW: smoke``."""
    parts = []
    for name in ("suite", "backend", "budget", "device", "seed"):
        values_a = sorted({str(getattr(r, name)) for r in base})
        values_b = sorted({str(getattr(r, name)) for r in new})
        if values_a != values_b:
            parts.append(f"{name}s BASE: {', '.join(values_a)}; NEW: {', '.join(values_b)}")
    return " | ".join(parts) or "their options"


def _load(path: str | Path, which: str) -> list[ResultRow]:
    rows = RunDirectory.open(Path(path)).rows()
    if not rows:
        raise BenchError(f"nothing to compare: no rows in {which} {str(path)!r}")
    return rows


def _finite(value: float | None) -> bool:
    return value is not None and isinstance(value, (int, float)) and math.isfinite(value)


def _mib(row: ResultRow) -> float | None:
    return None if row.peak_memory_bytes is None else row.peak_memory_bytes / 2**20


COUNTS: tuple[tuple[str, Callable[[ResultRow], float | None]], ...] = (
    ("nfe_forward", lambda r: r.nfe_forward), ("nfe_backward", lambda r: r.nfe_backward),
    ("steps_accepted", lambda r: r.steps_accepted),
    ("steps_rejected", lambda r: r.steps_rejected),
)
GRADIENTS: tuple[tuple[str, Callable[[ResultRow], float | None]], ...] = (
    ("grad_rel_error", lambda r: r.grad_rel_error),
    ("grad_rel_error_final", lambda r: r.grad_rel_error_final),
)


def time_comparability(a: ResultRow, b: ResultRow) -> str:
    """Why the two rows' times cannot be compared ('' when they can)."""
    reasons = []
    for side, row in (("BASE", a), ("NEW", b)):
        if row.timing_flag:
            reasons.append(f"{side}'s timing is flagged ({row.timing_warning or 'no reason'})")
    if (a.concurrent_cells is not None and b.concurrent_cells is not None
            and a.concurrent_cells != b.concurrent_cells):
        reasons.append(f"ran at different concurrency ({a.concurrent_cells} vs "
                       f"{b.concurrent_cells} cells at once)")
    return "; ".join(reasons)


class _Gate:
    def __init__(self, thresholds: Thresholds):
        self.t = thresholds
        self.findings: list[Finding] = []
        self.notes: list[str] = []

    def add(self, cell: str, kind: FigureKind, column: str, base: float | None,
            new: float | None, change: str, verdict: Verdict) -> None:
        self.findings.append(Finding(cell, kind, column, base, new, change, verdict))

    def pair(self, a: ResultRow, b: ResultRow) -> None:
        cell = a.cell_id
        if a.status != Status.OK:
            self.notes.append(f"{cell}: not compared, {a.status} in BASE")
            return
        if b.status != Status.OK:
            self.add(cell, FigureKind.STATUS, "status", None, None,
                     f"ok in BASE, {b.status} in NEW ({(b.error or '').splitlines()[0:1]})",
                     Verdict.FAIL)
            return
        for column, get in COUNTS:
            self.count(cell, column, get(a), get(b))
        self.metric(cell, a, b)
        self.ratio(cell, FigureKind.MEMORY, "peak_memory_mib", _mib(a), _mib(b),
                   self.t.max_memory_growth)
        for column, get in GRADIENTS:
            self.ratio(cell, FigureKind.GRADIENT, column, get(a), get(b),
                       self.t.max_grad_error_growth)
        self.time(cell, a, b)

    def unmeasured(self, cell: str, column: str, a: float | None, b: float | None) -> bool:
        """Note a column one side lacks; True when the pair cannot be compared."""
        if a is None and b is None:
            return True
        if not _finite(a) or not _finite(b):
            self.notes.append(f"{cell}: {column} not compared (BASE {a}, NEW {b}: not measured "
                              "on one side)")
            return True
        return False

    def count(self, cell: str, column: str, a: float | None, b: float | None) -> None:
        if self.unmeasured(cell, column, a, b):
            return
        assert a is not None and b is not None
        change = abs(b - a) / abs(a) if a else abs(b)
        verdict = (Verdict.SAME if b == a else Verdict.MOVED
                   if change <= self.t.max_count_change else Verdict.FAIL)
        self.add(cell, FigureKind.COUNT, column, a, b,
                 f"{b - a:+.6g} (limit {self.t.max_count_change:g} relative)", verdict)

    def metric(self, cell: str, a: ResultRow, b: ResultRow) -> None:
        name = a.metric_name or "metric"
        ma, mb = a.metric, b.metric
        if not _finite(ma):
            self.notes.append(f"{cell}: {name} not compared (BASE's is {ma})")
            return
        if not _finite(mb):
            self.add(cell, FigureKind.METRIC, name, ma, mb,
                     f"NEW's {name} is {mb!r}: missing or not a finite number", Verdict.FAIL)
            return
        assert ma is not None and mb is not None
        lower = a.metric_direction != "higher"
        worse = (mb - ma) if lower else (ma - mb)
        limit = (self.t.max_metric_change if self.t.max_metric_change is not None
                 else 0.01 * abs(ma))
        verdict = (Verdict.SAME if mb == ma else Verdict.FAIL if worse > limit
                   else Verdict.MOVED)
        self.add(cell, FigureKind.METRIC, name, ma, mb,
                 f"{mb - ma:+.4g} ({'lower' if lower else 'higher'} is better; limit "
                 f"{limit:.4g} worse)", verdict)

    def ratio(self, cell: str, kind: FigureKind, column: str, a: float | None,
              b: float | None, limit: float) -> None:
        if self.unmeasured(cell, column, a, b):
            return
        assert a is not None and b is not None
        ratio = b / a if a > 0 else (math.inf if b > 0 else 1.0)
        verdict = (Verdict.SAME if a == b else Verdict.FAIL if ratio > limit
                   else Verdict.MOVED)
        self.add(cell, kind, column, a, b, f"x{ratio:.3f} (limit x{limit:.3f})", verdict)

    def time(self, cell: str, a: ResultRow, b: ResultRow) -> None:
        ta, tb = a.train_step_time_s, b.train_step_time_s
        if self.unmeasured(cell, "train_step_time_s", ta, tb):
            return
        assert ta is not None and tb is not None
        ratio = tb / ta if ta > 0 else math.inf
        why = time_comparability(a, b)
        change = f"x{ratio:.3f} (limit x{self.t.max_slowdown:.3f})"
        if why:
            self.add(cell, FigureKind.TIME, "train_step_time_s", ta, tb,
                     f"{change}; not judged: {why}", Verdict.NOT_COMPARABLE)
            return
        verdict = Verdict.FAIL if ratio > self.t.max_slowdown else Verdict.OK
        self.add(cell, FigureKind.TIME, "train_step_time_s", ta, tb, change, verdict)


@dataclasses.dataclass(frozen=True)
class Comparison:
    findings: list[Finding]
    notes: list[str]

    @property
    def failed(self) -> list[Finding]:
        return [f for f in self.findings if f.verdict == Verdict.FAIL]

    @property
    def not_comparable(self) -> list[Finding]:
        return [f for f in self.findings if f.verdict == Verdict.NOT_COMPARABLE]

    @property
    def exit_status(self) -> int:
        if self.failed:
            return 1
        return EXIT_TIME_NOT_COMPARABLE if self.not_comparable else 0


def compare_runs(base: str | Path, new: str | Path, thresholds: Thresholds = Thresholds()
                 ) -> Comparison:
    """The findings of every compared figure and notes (cells only in NEW, columns not
    compared). Bad input raises :class:`BenchError`."""
    thresholds.check()
    base_rows, new_rows = _load(base, "BASE"), _load(new, "NEW")
    pairing = pair_rows(base_rows, new_rows)
    if not pairing.pairs:
        raise BenchError(f"nothing to compare: no cell of {base} matches one of {new} (rows pair "
                         "on suite, backend configuration, budget, device, options and seed). "
                         f"They differ in: {describe_mismatch(base_rows, new_rows)}")
    gate = _Gate(thresholds)
    if not any(row.status == Status.OK for row in latest_rows(base_rows)):
        gate.add(str(base), FigureKind.STATUS, "status", None, None,
                 "BASE has no ok row: there is nothing to gate on", Verdict.FAIL)
    for row in pairing.only_base:
        gate.add(row.cell_id, FigureKind.CELL, "cell", None, None,
                 f"in BASE ({row.status}), missing in NEW", Verdict.FAIL)
    for row in pairing.only_new:
        gate.notes.append(f"only in NEW: {row.cell_id}")
    for a, b in pairing.pairs:
        gate.pair(a, b)
    return Comparison(gate.findings, gate.notes)


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.4g}"


def format_comparison(comparison: Comparison) -> str:
    """The findings as a markdown table, the notes, and the verdict with what moved."""
    lines = ["| cell | kind | column | BASE | NEW | change | verdict |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for f in comparison.findings:
        if f.verdict in (Verdict.SAME, Verdict.OK):
            continue
        lines.append(f"| {markdown_cell(f.cell)} | {f.kind} | {markdown_cell(f.column)} | "
                     f"{_number(f.base)} | {_number(f.new)} | {markdown_cell(f.change)} | "
                     f"{f.verdict} |")
    same = sum(f.verdict == Verdict.SAME for f in comparison.findings)
    within = sum(f.verdict == Verdict.OK for f in comparison.findings)
    lines.append(f"\n{same} figure(s) identical in BASE and NEW, {within} step time(s) within "
                 "the slowdown limit (not listed).")
    lines += [f"note: {n}" for n in comparison.notes]
    moved: dict[FigureKind, int] = {}
    for f in comparison.findings:
        if f.verdict in (Verdict.MOVED, Verdict.FAIL):
            moved[f.kind] = moved.get(f.kind, 0) + 1
    lines.append("moved: " + (", ".join(f"{kind} {n}" for kind, n in moved.items())
                              if moved else "nothing"))
    failed = comparison.failed
    if failed:
        kinds = ", ".join(dict.fromkeys(str(f.kind) for f in failed))
        lines.append(f"FAIL: {len(failed)} finding(s) beyond their tolerance ({kinds}):")
        lines += [f"  {f.cell} {f.column}: {_number(f.base)} -> {_number(f.new)}, {f.change}"
                  if f.base is not None or f.new is not None else
                  f"  {f.cell} {f.column}: {f.change}" for f in failed]
    elif comparison.not_comparable:
        lines.append(f"TIMES NOT COMPARABLE: {len(comparison.not_comparable)} step time(s) "
                     "could not be judged (exit status "
                     f"{EXIT_TIME_NOT_COMPARABLE}); every other figure is within its "
                     "tolerance:")
        lines += [f"  {f.cell}: {f.change}" for f in comparison.not_comparable]
    else:
        lines.append("OK: every figure within its tolerance")
    return "\n".join(lines) + "\n"

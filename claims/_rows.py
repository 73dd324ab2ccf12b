"""Row selection and formatting shared by the built-in claims."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any

from bench.core.claims import Judgement, Need, Verdict
from bench.core.rows import ResultRow


def base_name(row: ResultRow) -> str:
    """The registered backend name (rows of older published folders carry only the label)."""
    return row.backend_name or row.backend.split("[", 1)[0]


def value(row: ResultRow, name: str) -> Any:
    """A row's field, metric or option called ``name`` (None when it has none)."""
    if name in row.metrics:
        return row.metrics[name]
    if name in row.options:
        return row.options[name]
    return getattr(row, name, None)


def number(row: ResultRow, name: str) -> float | None:
    """:func:`value` as a finite float (None when missing or not a finite number)."""
    found = value(row, name)
    if isinstance(found, bool) or not isinstance(found, (int, float)):
        return None
    return float(found) if math.isfinite(found) else None


def ok_rows(rows: Iterable[ResultRow], suite: str | None = None,
            backends: Sequence[str] | None = None, budget: str | None = None,
            where: Callable[[ResultRow], bool] | None = None) -> list[ResultRow]:
    """The ``ok`` rows of ``suite`` (any: None), of the backends named (registered names), at
    ``budget``, for which ``where`` is true."""
    return [r for r in rows if r.status == "ok" and (suite is None or r.suite == suite)
            and (backends is None or base_name(r) in backends)
            and (budget is None or r.budget == budget) and (where is None or where(r))]


def group(rows: Iterable[ResultRow], key: Callable[[ResultRow], Hashable]
          ) -> dict[Hashable, list[ResultRow]]:
    """Rows by ``key``, in first-seen order."""
    groups: dict[Hashable, list[ResultRow]] = {}
    for row in rows:
        groups.setdefault(key(row), []).append(row)
    return groups


def options_key(row: ResultRow) -> tuple[tuple[str, str], ...]:
    """The row's suite options, hashable (rows of different options are different cells)."""
    return tuple(sorted((str(k), str(v)) for k, v in row.options.items()))


def fmt(x: float | None, digits: int = 3) -> str:
    """A figure for a reason: 3 significant digits, '-' when missing."""
    if x is None:
        return "-"
    return f"{x:.{digits}g}"


def pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def missing(needs: Sequence[Need], what: str) -> Judgement:
    """Not measured: ``what`` was not found; the command that measures it."""
    hint = " or ".join(f"`{need.describe()}`" for need in needs)
    return Judgement.not_measured(f"no {what}" + (f" ({hint})" if hint else ""))


def failed_cells(rows: Iterable[ResultRow], suite: str | None,
                 backends: Sequence[str] | None) -> Judgement | None:
    """Inconclusive when the cells that would measure a claim ran and failed (crashed, timed
    out, diverged): measured but no verdict, the first error in the reason. None when none
    did."""
    bad = [r for r in rows if r.status in ("failed", "timeout", "diverged")
           and (suite is None or r.suite == suite)
           and (backends is None or base_name(r) in backends)]
    if not bad:
        return None
    return Judgement(Verdict.INCONCLUSIVE, cells=len(bad),
                     reason=f"{len(bad)} cell(s) that measure it {bad[0].status}, e.g. "
                     f"{bad[0].cell_id}: {error_line(bad[0].error)}"[:400])


_EXCEPTION = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?[A-Za-z_]\w*(?:Error|Exception|Exit|Interrupt)\b")


def error_line(error: str | None) -> str:
    """The line of a cell's error that names it: the last ``SomeError: ...`` line (JAX's errors
    end with a 'See https://...' line, tracebacks with the exception), else the last line."""
    lines = [line.strip() for line in (error or "").strip().splitlines() if line.strip()]
    named = [line for line in lines if _EXCEPTION.match(line)]
    return (named or lines or ["(no error text)"])[-1]


def too_few(figure: float | None, reason: str, unit: str = "", cells: int = 0) -> Judgement:
    """Inconclusive for too few seeds or pairs; the figure so far is still shown."""
    return Judgement(Verdict.INCONCLUSIVE, figure, unit=unit, reason=reason, cells=cells)


def all_flagged(rows: Sequence[ResultRow]) -> bool:
    """Every row's timing is flagged as not comparable (a loaded host, a spread of step times)."""
    return bool(rows) and all(r.timing_flag for r in rows)

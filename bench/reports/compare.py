"""``bench compare BASE NEW``: a regression gate for CI (like ``asv compare`` or
pytest-benchmark's ``--benchmark-compare-fail``).

Cells are matched on suite, backend, budget and identifying options (and the seed where each
side has one seed of the configuration: a lone seed only matches the same seed). With several
seeds a side's value is the median over its ``ok`` seeds, and a difference whose seed ranges
(min to max of BASE and of NEW) overlap is reported as within the seed spread and does not
fail. A threshold crossed, or a seed ``ok`` in BASE that NEW ran and did not finish ``ok``,
fails (exit 1)."""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Sequence
from pathlib import Path

from bench.core.errors import BenchError
from bench.core.rows import ResultRow
from bench.planning.concurrency import concurrency_warning
from bench.store.results import RunDirectory

GROUP_KEYS = ("suite", "backend", "budget", "options")


def options_text(cell_id: str) -> str:
    """The identifying suite options in a cell id ``suite/backend/budget/seedN/device[/key=value,
    ...]`` (``steps=64``; '' for none): data paths and the like are left out."""
    parts = cell_id.split("/", 5)
    return parts[5] if len(parts) == 6 else ""


def options_part(row: ResultRow) -> str:
    """The identifying suite options of a cell (:func:`options_text` of its cell id)."""
    return options_text(row.cell_id)


@dataclasses.dataclass(frozen=True)
class Thresholds:
    #: NEW / BASE of the steady-state step time above which a cell fails.
    max_slowdown: float = 1.10
    #: NEW / BASE of the steady-state peak memory above which a cell fails.
    max_memory_growth: float = 1.05
    #: Largest change of the suite metric in its worse direction (its own unit); None: unchecked.
    max_metric_change: float | None = None

    def check(self) -> None:
        for name in ("max_slowdown", "max_memory_growth", "max_metric_change"):
            value = getattr(self, name)
            if value is None:
                continue
            ratio = name != "max_metric_change"
            if not math.isfinite(value) or value < 0 or (ratio and value <= 0):
                option = "--" + name.replace("_", "-")
                valid = ("a non-negative number in the metric's unit, e.g. 0.5"
                         if not ratio else "a positive ratio, e.g. 1.10")
                raise BenchError(f"{option} {value}: expected {valid}")


@dataclasses.dataclass
class Finding:
    group: str
    column: str
    base: float
    new: float
    change: str
    verdict: str  # "ok", "FAIL", "within seed spread"


def _stats(values: list[float]) -> tuple[float, float, float] | None:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return None
    return statistics.median(values), min(values), max(values)


def _groups(rows: list[ResultRow]) -> dict[tuple[str, ...], list[ResultRow]]:
    groups: dict[tuple[str, ...], list[ResultRow]] = {}
    for row in rows:
        key = (row.suite, row.backend, row.budget, options_part(row))
        groups.setdefault(tuple(k for k in key if k), []).append(row)
    return groups


def _load(path: str | Path, which: str) -> list[ResultRow]:
    rows = RunDirectory.open(Path(path)).rows()
    if not rows:
        raise BenchError(f"nothing to compare: no rows in {which} {str(path)!r}")
    return rows


def compare_runs(base: str | Path, new: str | Path, thresholds: Thresholds = Thresholds()
                 ) -> tuple[list[Finding], list[str]]:
    """The findings of every compared value, and notes (cells only on one side, lone seeds that
    differ). Bad input raises :class:`BenchError`."""
    thresholds.check()
    base_rows, new_rows = _load(base, "BASE"), _load(new, "NEW")
    base_groups, new_groups = _groups(base_rows), _groups(new_rows)
    findings: list[Finding] = []
    notes: list[str] = []
    mixed = concurrency_warning({"BASE": base_rows, "NEW": new_rows})
    if mixed:
        notes.append(mixed)
    shared = [k for k in base_groups if k in new_groups]
    for key in base_groups:
        if key not in new_groups:
            notes.append(f"only in BASE: {'/'.join(key)}")
    for key in new_groups:
        if key not in base_groups:
            notes.append(f"only in NEW: {'/'.join(key)}")
    if not shared:
        differ = []
        for i, name in enumerate(GROUP_KEYS[:3]):
            values_a = sorted({k[i] for k in base_groups})
            values_b = sorted({k[i] for k in new_groups})
            if values_a != values_b:
                differ.append(f"{name}s BASE: {', '.join(values_a)}; NEW: {', '.join(values_b)}")
        raise BenchError(f"nothing to compare: no cell of {base} matches one of {new} on "
                         f"{', '.join(GROUP_KEYS)}. They differ in: "
                         + (" | ".join(differ) or "their options"))
    for key in shared:
        a, b = base_groups[key], new_groups[key]
        name = "/".join(key)
        if len(a) == 1 and len(b) == 1 and a[0].seed != b[0].seed:
            notes.append(f"{name}: not compared, BASE has seed {a[0].seed} and NEW seed "
                         f"{b[0].seed}")
            continue
        seeds = sorted({r.seed for r in a}) if len(a) > 1 or len(b) > 1 else [a[0].seed]
        label = name + (f" (seed {seeds[0]})" if len(seeds) == 1 and len(a) == len(b) == 1
                        else f" (median of {len(a)} vs {len(b)} seeds)")
        ok_a = [r for r in a if r.status == "ok"]
        ok_b = [r for r in b if r.status == "ok"]
        new_status = {r.seed: r.status for r in b}
        broken = sorted((r.seed, new_status[r.seed]) for r in ok_a
                        if new_status.get(r.seed, "ok") != "ok")
        if broken:
            findings.append(Finding(
                label, "status", len(ok_a), len(ok_a) - len(broken),
                "ok in BASE, not in NEW: " + ", ".join(f"seed {s} {st}" for s, st in broken),
                "FAIL"))
        if not ok_a or not ok_b:
            continue
        metric = ok_a[0].metric_name
        lower = ok_a[0].metric_direction != "higher"
        checks = [
            ("train_step_time_s", lambda r: r.train_step_time_s, "ratio",
             thresholds.max_slowdown),
            ("peak_memory_mib", lambda r: (None if r.peak_memory_bytes is None
                                           else r.peak_memory_bytes / 2**20), "ratio",
             thresholds.max_memory_growth),
            (metric, lambda r: r.metric, "metric", thresholds.max_metric_change),
        ]
        for column, get, kind, limit in checks:
            sa, sb = _stats([get(r) for r in ok_a]), _stats([get(r) for r in ok_b])
            if sa is None or sb is None:
                continue
            (ma, lo_a, hi_a), (mb, lo_b, hi_b) = sa, sb
            if kind == "ratio":
                assert limit is not None  # the ratio thresholds always have one
                ratio = mb / ma if ma > 0 else math.inf if mb > 0 else 1.0
                change = f"x{ratio:.3f} (limit x{limit:.3f})"
                crossed = ratio > limit
            else:
                worse = (mb - ma) if lower else (ma - mb)
                change = (f"{mb - ma:+.4g} ({'lower' if lower else 'higher'} is better"
                          + (f"; limit {limit:g} worse)" if limit is not None else ")"))
                crossed = limit is not None and worse > limit
            several = len(ok_a) > 1 or len(ok_b) > 1
            spread = several and lo_b <= hi_a and lo_a <= hi_b
            verdict = "ok"
            if crossed:
                verdict = "within seed spread" if spread else "FAIL"
            if several:
                change += f"; seeds BASE {lo_a:.4g}..{hi_a:.4g}, NEW {lo_b:.4g}..{hi_b:.4g}"
            findings.append(Finding(label, column, ma, mb, change, verdict))
    return findings, notes


def format_findings(findings: Sequence[Finding], notes: Sequence[str]) -> str:
    lines = ["| cells | column | BASE | NEW | change | verdict |", "| --- | --- | --- | --- | --- "
             "| --- |"]
    for f in findings:
        lines.append(f"| {f.group} | {f.column} | {f.base:.4g} | {f.new:.4g} | {f.change} | "
                     f"{f.verdict} |")
    failed = [f for f in findings if f.verdict == "FAIL"]
    lines.append("")
    lines += [f"note: {n}" for n in notes]
    if failed:
        lines.append(f"FAIL: {len(failed)} threshold(s) crossed:")
        lines += [f"  {f.group} {f.column}: {f.base:.4g} -> {f.new:.4g}, {f.change}"
                  for f in failed]
    else:
        spread = sum(f.verdict == "within seed spread" for f in findings)
        lines.append("OK: no threshold crossed" + (
            f" ({spread} difference(s) beyond a threshold lie within the seed spread)"
            if spread else ""))
    return "\n".join(lines) + "\n"

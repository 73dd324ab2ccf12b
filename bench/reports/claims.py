"""``bench claims``: the registered claims judged on run or published folders, as a table of
verdicts (markdown, CSV, an HTML section), two sets of folders compared (a claim that held in
BASE and fails in NEW is a regression), or one column per folder (a claim across library
versions).

Each claim is judged on each folder's rows on its own (a claim compares cells of one folder,
measured together), then the folders' verdicts combine: a claim fails when any folder's rows
make it fail, else holds when any folder's make it hold, else is inconclusive, else not
measured. A folder may also be a folder of run folders (``bench claims --run``'s, or one per
library version): its run folders count as one.
"""

from __future__ import annotations

import dataclasses
import html
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.core.claims import AbstractClaim, Judgement, Verdict
from bench.core.errors import BenchError
from bench.core.rows import ResultRow
from bench.store.formats import csv_text, markdown_cell
from bench.store.results import RunDirectory

#: Across folders: a failure anywhere decides, then a verdict that holds, then an inconclusive
#: one (it contradicts nothing).
FOLDER_ORDER = (Verdict.FAILS, Verdict.HOLDS, Verdict.INCONCLUSIVE, Verdict.NOT_MEASURED)
FORMATS = ("markdown", "csv", "html")


@dataclasses.dataclass(frozen=True)
class Source:
    """One folder given to ``bench claims``: its label and the rows of each run folder in it."""

    label: str
    runs: tuple[tuple[str, tuple[ResultRow, ...]], ...]
    #: The first run's environment.json (library versions), empty when it has none.
    environment: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class ClaimVerdict:
    """A claim's verdict over the folders given: the combined judgement and each folder's."""

    claim: AbstractClaim
    judgement: Judgement
    #: ``(folder label, its judgement)`` for every folder, measured or not.
    folders: tuple[tuple[str, Judgement], ...]

    @property
    def measured_in(self) -> list[str]:
        return [label for label, j in self.folders if j.verdict is not Verdict.NOT_MEASURED]


def is_run_folder(path: Path) -> bool:
    return any((path / name).exists() for name in ("rows.jsonl", "config.json", "results.csv"))


def load_source(path: Path) -> Source:
    """A run or published folder, or a folder of them (each run folder inside it, sorted)."""
    path = Path(path)
    if path.is_dir() and not is_run_folder(path):
        folders = sorted(p for p in path.iterdir() if p.is_dir() and is_run_folder(p))
        if not folders:
            raise BenchError(f"{str(path)!r} is not a run directory or a published results "
                             "folder, and holds none (no rows.jsonl, config.json or results.csv)")
    else:
        folders = [path]
    runs = [RunDirectory.open(p) for p in folders]
    label = path.resolve().name or str(path)
    return Source(label, tuple((p.name if len(runs) > 1 else str(p), tuple(run.rows()))
                               for p, run in zip(folders, runs, strict=True)),
                  runs[0].read_json("environment.json") or {})


def judge(claim: AbstractClaim, rows: Sequence[ResultRow]) -> Judgement:
    """``claim``'s judgement on one run folder's rows; a judge that raises is reported as
    inconclusive with its error (and a warning), never as a verdict."""
    try:
        judgement = claim.judge(rows)
    except Exception as exc:  # a broken claim must not hide the others
        print(f"warning: claim {claim.name!r} failed to judge: {type(exc).__name__}: {exc}",
              file=sys.stderr)
        return Judgement(Verdict.INCONCLUSIVE,
                         reason=f"the claim's judge failed: {type(exc).__name__}: {exc}")
    if not isinstance(judgement, Judgement):
        return Judgement(Verdict.INCONCLUSIVE, reason=f"the claim's judge returned "
                         f"{type(judgement).__name__}, not a Judgement")
    if judgement.verdict is Verdict.INCONCLUSIVE and not judgement.reason.strip():
        # an inconclusive verdict always says why; a judge that did not is named as such
        return dataclasses.replace(judgement, reason="the claim's judge gave no reason")
    return judgement


def across(judgements: Sequence[tuple[str, Judgement]]) -> Judgement:
    """Several folders' judgements as one (:data:`FOLDER_ORDER`); the reason names each measured
    folder's verdict."""
    measured = [(label, j) for label, j in judgements if j.verdict is not Verdict.NOT_MEASURED]
    if not measured:
        return judgements[0][1] if judgements else Judgement.not_measured("no folder given")
    if len(measured) == 1:
        return measured[0][1]
    label, first = min(measured, key=lambda item: FOLDER_ORDER.index(item[1].verdict))
    reason = " | ".join(f"{name}: {j.verdict}: {j.reason}" for name, j in measured)
    return dataclasses.replace(first, reason=reason, cells=sum(j.cells for _, j in measured))


def judge_sources(claims: Sequence[AbstractClaim], sources: Sequence[Source]
                  ) -> list[ClaimVerdict]:
    """Every claim's verdict on every source and over all of them."""
    labels: list[str] = []
    for source in sources:  # two folders of one name (a/run, b/run) stay two columns
        label, n = source.label, 1
        while label in labels:
            n += 1
            label = f"{source.label} ({n})"
        labels.append(label)
    verdicts = []
    for claim in claims:
        folders = tuple((label, across([(run, judge(claim, rows)) for run, rows in source.runs]))
                        for label, source in zip(labels, sources, strict=True))
        verdicts.append(ClaimVerdict(claim, across(folders), folders))
    return verdicts


def flips(base: Sequence[ClaimVerdict], new: Sequence[ClaimVerdict]
          ) -> list[tuple[ClaimVerdict, ClaimVerdict]]:
    """The claims that held in BASE and fail in NEW."""
    before = {v.claim.name: v for v in base}
    return [(before[v.claim.name], v) for v in new if v.claim.name in before
            and before[v.claim.name].judgement.verdict is Verdict.HOLDS
            and v.judgement.verdict is Verdict.FAILS]


# -------------------------------------------------------------------------------------------------
# Tables
# -------------------------------------------------------------------------------------------------

def figure_text(j: Judgement) -> str:
    """The figure with its interval and unit (``0.015 [0.0085, 0.022] log-log slope``)."""
    if j.figure is None:
        return "-"
    text = f"{j.figure:.3g}"
    if j.low is not None and j.high is not None:
        low, high = f"{j.low:.3g}", f"{j.high:.3g}"
        if (low, high) != (text, text):  # an interval that rounds to the figure is none
            text += f" [{low}, {high}]"
    return text + (f" {j.unit}" if j.unit else "")


def verdict_records(verdicts: Sequence[ClaimVerdict]) -> list[dict[str, Any]]:
    return [{"claim": v.claim.name, "verdict": str(v.judgement.verdict),
             "figure": figure_text(v.judgement), "measured_in": ", ".join(v.measured_in) or "-",
             "source": v.claim.source, "reason": v.judgement.reason,
             "statement": v.claim.statement} for v in verdicts]


def comparison_records(base: Sequence[ClaimVerdict], new: Sequence[ClaimVerdict]
                       ) -> list[dict[str, Any]]:
    before = {v.claim.name: v for v in base}
    flipped = {n.claim.name for _, n in flips(base, new)}
    records = []
    for v in new:
        b = before.get(v.claim.name)
        old = b.judgement if b else Judgement.not_measured("")
        change = ("REGRESSION: held in BASE" if v.claim.name in flipped else
                  "same" if old.verdict is v.judgement.verdict else
                  f"now {v.judgement.verdict} (was {old.verdict})")
        records.append({"claim": v.claim.name, "base": str(old.verdict),
                        "base_figure": figure_text(old), "new": str(v.judgement.verdict),
                        "new_figure": figure_text(v.judgement), "change": change,
                        "source": v.claim.source, "reason": v.judgement.reason})
    return records


def matrix_cell(j: Judgement) -> str:
    """A folder's cell of the claim x folder table: ``verdict: figure``; an inconclusive one
    with its reason (why it decides nothing: too few seeds, timing flagged, cells failed)."""
    if j.verdict is Verdict.NOT_MEASURED:
        return str(j.verdict)
    text = str(j.verdict) if j.figure is None else f"{j.verdict}: {figure_text(j)}"
    if j.verdict is Verdict.INCONCLUSIVE:
        text += f" ({j.reason})"
    return text


def matrix_records(verdicts: Sequence[ClaimVerdict]) -> list[dict[str, Any]]:
    """One row per claim, one column per folder: :func:`matrix_cell`."""
    return [{"claim": v.claim.name, **{label: matrix_cell(j) for label, j in v.folders}}
            for v in verdicts]


#: The libraries whose versions a claim across versions is about.
LIBRARIES = ("torch", "torchdiffeq", "jax", "diffrax", "equinox")


def version_records(sources: Sequence[Source]) -> list[dict[str, Any]]:
    """Per folder: the libraries' versions its cells imported (its environment.json)."""
    return [{"folder": source.label, **{name: (source.environment.get("packages") or {}).get(
        name) or "-" for name in LIBRARIES}} for source in sources]


def timing_records(sources: Sequence[Source]) -> list[dict[str, Any]]:
    """Per folder, backend and compile cache state: the medians of compile_time_s and
    train_step_time_s over its training cells (at least 4 steps), with how many of them were
    flagged (a loaded host): compile and step time per library version. A cache load
    (``compile_cache`` hit) is never pooled with a compilation."""
    import statistics

    records = []
    for source in sources:
        by_backend: dict[tuple[str, str], list[ResultRow]] = {}
        for _, rows in source.runs:
            for row in rows:
                if row.status == "ok" and row.compile_time_s is not None and \
                        row.train_step_time_s and (row.train_steps or 0) >= 4:
                    cache = row.compile_cache
                    if row.program_cache in ("hit", "partial"):  # not traced either
                        cache = f"{cache or '-'}, programs {row.program_cache}"
                    by_backend.setdefault((row.backend, cache), []).append(row)
        for (backend, cache), cells in sorted(by_backend.items()):
            compile_s = statistics.median(r.compile_time_s or 0.0 for r in cells)
            step_s = statistics.median(r.train_step_time_s or 0.0 for r in cells)
            records.append({"folder": source.label, "backend": backend,
                            "compile_cache": cache or "-", "cells": len(cells),
                            "compile_time_s": f"{compile_s:.3g}",
                            "train_step_time_s": f"{step_s:.3g}",
                            "flagged": sum(r.timing_flag for r in cells)})
    return records


_PAGE_STYLE = ("body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}"
               "table{border-collapse:collapse;font-size:13px;margin:0.5em 0}"
               "th,td{border:1px solid #ccc;padding:2px 6px;vertical-align:top}"
               "th{background:#f0f0f0}tr.verdict-holds td:nth-child(2){background:#e6f4e6}"
               "tr.verdict-fails td:nth-child(2){background:#fde8e8}")


def claims_page(title: str, sections: Sequence[tuple[str, str]]) -> str:
    """A self-contained HTML page: ``title`` and ``(heading, html)`` sections (no script, nothing
    fetched)."""
    body = "\n".join(f"<h2>{html.escape(h)}</h2>\n{part}" if h else part for h, part in sections)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{_PAGE_STYLE}</style></head><body>\n"
            f"<h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n")


def render_records(records: Sequence[dict[str, Any]], fmt: str) -> str:
    """Records as a markdown table, CSV or an HTML table (fragment)."""
    if fmt not in FORMATS:
        raise BenchError(f"unknown format {fmt!r}: valid formats are {', '.join(FORMATS)}")
    columns = list(records[0]) if records else ["claim", "verdict"]
    if fmt == "csv":
        import pandas as pd

        return csv_text(pd.DataFrame(records, columns=columns))
    if fmt == "html":
        head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
        body = "\n".join(
            f'<tr class="verdict-{_css(r.get("verdict", r.get("new", "")))}">' + "".join(
                f"<td>{html.escape(str(r.get(c, '')))}</td>" for c in columns) + "</tr>"
            for r in records)
        return (f'<table class="claims"><thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n'
                "</tbody></table>\n")
    lines = ["| " + " | ".join(markdown_cell(c) for c in columns) + " |",
             "| " + " | ".join("---" for _ in columns) + " |"]
    lines += ["| " + " | ".join(markdown_cell(r.get(c, "")) for c in columns) + " |"
              for r in records]
    return "\n".join(lines) + "\n"


def _css(text: Any) -> str:
    """A verdict as a CSS class name (``not measured`` -> ``not-measured``)."""
    return "".join(c if c.isalnum() else "-" for c in str(text))


def summary_line(verdicts: Sequence[ClaimVerdict]) -> str:
    """``20 claims: 12 holds, 3 fails, 4 inconclusive, 1 not measured``."""
    counts = {str(v): sum(c.judgement.verdict is v for c in verdicts) for v in Verdict}
    return (f"{len(verdicts)} claims: "
            + ", ".join(f"{n} {v}" for v, n in counts.items() if n))


def claims_section(claims: Sequence[AbstractClaim], path: Path) -> str:
    """The HTML section of a run page: the claims this folder's rows answer (the others are
    left out: a page is about its own run), or a line saying none does."""
    verdicts = [v for v in judge_sources(claims, [load_source(path)])
                if v.judgement.verdict is not Verdict.NOT_MEASURED]
    if not verdicts:
        return ("<p>No registered claim is measured by this folder's cells "
                "(<code>bench claims --run</code> runs the cells a claim needs).</p>")
    records = [{k: r[k] for k in ("claim", "verdict", "figure", "source", "reason")}
               for r in verdict_records(verdicts)]
    return (f"<p>{html.escape(summary_line(verdicts))} (of {len(claims)} registered; "
            "<code>bench claims</code> judges them on several folders).</p>\n"
            + render_records(records, "html"))

"""Turn run directories into tables: markdown, CSV (all columns, raw units) or LaTeX.

Every text field is escaped for the format it is written in (:mod:`bench.store.formats`):
markdown and LaTeX markup, and spreadsheet formulas in CSV text cells."""

from __future__ import annotations

import math
import sys
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from bench.core.errors import BenchError, UnknownNameError
from bench.planning.concurrency import concurrency_warning
from bench.reports.compare import options_text
from bench.store.formats import csv_text, latex_text, markdown_cell
from bench.store.results import load_run

FORMATS = ("markdown", "csv", "latex", "html")
#: Columns of the human-readable tables (CSV keeps every column). The metric columns of the run's
#: suites are inserted after ``status``. Every column that tells cells apart is among them (a
#: gradient study's ``grad_scale``; the options after ``budget``), so no two rows look alike.
TABLE_COLUMNS = (
    "suite", "backend", "gradient_method", "solver", "rtol", "atol", "device", "budget", "seed",
    "grad_scale", "status", "nfe_forward", "nfe_backward", "train_step_time_s", "compile_time_s",
    "compile_cache", "eval_time_s", "solve_time_s", "dynamics_time_s", "solver_loop_time_s",
    "peak_memory_mib", "peak_memory_method", "saved_for_backward_mib", "grad_rel_error",
    "grad_cosine", "grad_rel_error_final", "grad_cosine_final", "params", "host_load_1m",
    "concurrent_cells", "timing_warning", "error",
)
#: Default columns of ``--format latex`` (a paper's table): the metric columns of the run's
#: suites are inserted after ``gradient_method``. ``--columns`` picks others.
LATEX_COLUMNS = (
    "suite", "backend", "gradient_method", "nfe_forward", "nfe_backward", "train_step_time_s",
    "peak_memory_mib",
)
#: The identifying columns ``bench report A B`` shows for each paired cell.
COMPARE_KEYS = ("suite", "backend", "budget", "device", "seed")
COMPARE_VALUES = ("status", "nfe_forward", "nfe_backward", "train_step_time_s", "peak_memory_mib")
MIB = 1024 * 1024


def metric_columns(frame: pd.DataFrame) -> list[str]:
    """Every suite metric present: the headline metric of each suite first."""
    if frame.empty:
        return []
    names = [n for n in dict.fromkeys(frame["metric_name"].dropna()) if n and n in frame.columns]
    return names


def option_columns(frame: pd.DataFrame) -> list[str]:
    """The suite options that identify cells (``key=value`` after the device in ``cell_id``, e.g.
    cnf's ``dataset``), in order of appearance, where the frame has them as columns: rows that
    differ only by an option stay apart in a readable table."""
    if frame.empty or "cell_id" not in frame.columns:
        return []
    keys: dict[str, None] = {}
    for cell_id in frame["cell_id"].dropna().astype(str):
        for part in options_text(cell_id).replace("/", ",").split(","):
            key, sep, _ = part.partition("=")
            if sep and key in frame.columns:
                keys[key] = None
    return list(keys)


def table_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """The columns of a readable table, memory in MiB (names say so)."""
    frame = frame.copy()
    if "grad_scale" in frame.columns and "cell_id" in frame.columns:
        # a gradient-study cell that measured nothing (unsupported) has its scale in its id only
        from_id = pd.to_numeric(frame["cell_id"].astype(str).str.extract(
            r"/gradients/scale=([^/]+)")[0], errors="coerce")
        frame["grad_scale"] = frame["grad_scale"].astype("float64").fillna(from_id)
    frame["peak_memory_mib"] = frame["peak_memory_bytes"].astype("float64") / MIB
    frame["saved_for_backward_mib"] = frame["saved_for_backward_bytes"].astype("float64") / MIB
    columns = list(TABLE_COLUMNS)
    at = columns.index("status") + 1
    columns[at:at] = metric_columns(frame)
    at = columns.index("budget") + 1
    columns[at:at] = [c for c in option_columns(frame) if c not in columns]
    # the first line in full (an unsupported cell's reason is one line; a traceback's first line
    # names the error), never cut: the rest is in results.csv
    frame["error"] = frame["error"].fillna("").map(lambda e: e.splitlines()[0] if e else "")
    columns = [c for c in columns if c in frame.columns and not _all_missing(frame[c])]
    table = frame[columns]
    table.attrs[FLAGS] = timing_flags(frame)
    return table


#: ``DataFrame.attrs`` key of a readable table: which rows' timings are flagged (a marker goes
#: beside each of their times in markdown and LaTeX, with a footnote).
FLAGS = "timing_flags"
#: Columns holding times that a flagged row marks.
TIME_COLUMNS = ("train_step_time_s", "train_step_time_mean_s", "train_step_time_p90_s",
                "train_step_time_max_s", "compile_time_s", "eval_time_s", "total_time_s",
                "solve_time_s", "dynamics_time_s", "solver_loop_time_s")
FLAG_NOTE = ("timing flagged as not comparable (a loaded host or a slow tail of steps; the "
             "timing_warning column says why): do not compare these times")


def timing_flags(frame: pd.DataFrame) -> list[bool]:
    """Per row of a run's frame: whether its timings are flagged."""
    if "timing_flag" in frame:
        return [bool(v) if isinstance(v, bool | np.bool_) else v is True or v == "True"
                for v in frame["timing_flag"]]
    if "timing_warning" in frame:
        return [bool(v) and isinstance(v, str) for v in frame["timing_warning"]]
    return [False] * len(frame)


def _all_missing(column: pd.Series) -> bool:
    return bool(column.isna().all() or (column.astype(str) == "").all())


def render(frame: pd.DataFrame, fmt: str) -> str:
    if fmt not in FORMATS:
        raise UnknownNameError("report format", fmt, FORMATS)
    if fmt == "csv":
        return csv_text(frame)
    flags = list(frame.attrs.get(FLAGS) or [False] * len(frame))
    marked = [i for i, c in enumerate(frame.columns) if c in TIME_COLUMNS]
    flagged = any(flags) and bool(marked)
    cells = [[format_value(v) for v in row] for row in frame.itertuples(index=False)]
    header = [str(c) for c in frame.columns]
    if fmt == "markdown":
        rows = [[markdown_cell(c) + (" †" if flag and i in marked and c != "-" else "")
                 for i, c in enumerate(row)] for row, flag in zip(cells, flags, strict=False)]
        lines = ["| " + " | ".join(markdown_cell(h) for h in header) + " |",
                 "|" + "|".join(" --- " for _ in header) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        if flagged:
            lines += ["", f"† {FLAG_NOTE}."]
        return "\n".join(lines) + "\n"
    align = "".join("r" if _numeric(frame[c]) else "l" for c in frame.columns)
    lines = [
        "\\begin{tabular}{" + align + "}  % booktabs: \\usepackage{booktabs}",
        "\\toprule",
        " & ".join(_latex(h) for h in header) + " \\\\",
        "\\midrule",
        *(" & ".join(_latex(c) + ("$^\\dagger$" if flag and i in marked and c != "-" else "")
                     for i, c in enumerate(row)) + " \\\\"
          for row, flag in zip(cells, flags, strict=False)),
        "\\bottomrule",
        *([f"\\multicolumn{{{len(header)}}}{{l}}{{\\footnotesize $^\\dagger$ "
           f"{_latex(FLAG_NOTE)}}} \\\\"] if flagged else []),
        "\\end{tabular}",
    ]
    return "\n".join(lines) + "\n"


def _numeric(column: pd.Series) -> bool:
    return bool(pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column))


def select_columns(frame: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """``frame`` with only ``columns``, in that order; an unknown one raises with the choices."""
    for column in columns:
        if column not in frame.columns:
            raise UnknownNameError("column", column, list(frame.columns))
    selected = frame[list(dict.fromkeys(columns))]
    selected.attrs[FLAGS] = frame.attrs.get(FLAGS)
    return selected


def latex_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """The paper columns of a run (:data:`LATEX_COLUMNS`, the suites' metrics after the
    gradient method) that hold any value."""
    table = table_frame(frame)
    columns = list(LATEX_COLUMNS)
    at = columns.index("gradient_method") + 1
    columns[at:at] = metric_columns(frame)
    latex = table[[c for c in columns if c in table.columns]]
    latex.attrs[FLAGS] = table.attrs[FLAGS]
    return latex


def format_value(value: Any) -> str:
    """A table cell's text: missing as '-', whole floats without a fraction, else 4 digits."""
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return f"{value:.4g}"
    return str(value)


def _latex(text: str) -> str:
    return latex_text(text)


def report(run_dirs: Sequence[str], fmt: str = "markdown",
           columns: Sequence[str] | None = None) -> str:
    """One run: its table (CSV: every column; LaTeX: the paper columns). Two runs: side by side,
    with ratios B/A. ``columns`` picks the columns (an unknown one raises with the choices)."""
    if fmt not in FORMATS:
        raise UnknownNameError("report format", fmt, FORMATS)
    if fmt == "html":
        raise BenchError("--format html is a page: see bench.reports.html_report.report_page")
    if len(run_dirs) == 1:
        frame = load_run(run_dirs[0])
        _warn_concurrency({run_dirs[0]: frame})
        if frame.empty and fmt != "csv":
            return f"no rows in {run_dirs[0]} (no cell has finished there yet)\n"
        if columns:
            table = frame if fmt == "csv" else table_frame(frame)
            if fmt != "csv":  # a column left out of the readable table may still be asked for
                table = pd.concat([table, frame.drop(columns=[c for c in frame.columns
                                                              if c in table.columns])], axis=1)
            table.attrs[FLAGS] = timing_flags(frame)
            table = select_columns(table, columns)
        elif fmt == "latex":
            table = latex_frame(frame)
        else:
            table = frame if fmt == "csv" else table_frame(frame)
        return render(table, fmt)
    if len(run_dirs) != 2:
        raise BenchError("bench report takes one run directory, or two to compare")
    a, b = load_run(run_dirs[0]), load_run(run_dirs[1])
    for path, frame in ((run_dirs[0], a), (run_dirs[1], b)):
        if frame.empty:
            raise BenchError(f"nothing to compare: no rows in {path}")
    _warn_concurrency({run_dirs[0]: a, run_dirs[1]: b})
    if not set(a["cell_id"]) & set(b["cell_id"]):
        raise BenchError(
            f"nothing to compare: no cell of {run_dirs[0]} matches one of {run_dirs[1]} (rows "
            "pair on suite, backend configuration, budget, device, options and seed). They "
            f"differ in: {describe_difference(a, b)}"
        )
    table = compare_frame(a, b)
    return render(select_columns(table, columns) if columns else table, fmt)


def _warn_concurrency(frames: dict[str, pd.DataFrame]) -> None:
    """On stderr (the table stays clean): timings measured at different concurrency."""
    groups = {name: [_Row(r) for r in frame.to_dict("records")] if "concurrent_cells" in frame
              else [] for name, frame in frames.items()}
    message = concurrency_warning(groups)
    if message:
        print(message, file=sys.stderr, flush=True)


class _Row:
    """A table row as the attributes :func:`concurrency_warning` reads (missing: None)."""

    def __init__(self, record: Mapping[Hashable, Any]):
        value = record.get("concurrent_cells")
        self.status = record.get("status")
        self.concurrent_cells = None if value is None or pd.isna(value) else int(value)


def describe_difference(a: pd.DataFrame, b: pd.DataFrame) -> str:
    """The identifying columns whose values differ between two runs: ``budgets A: quick; B:
    smoke``."""
    parts = []
    for key in COMPARE_KEYS:
        values_a = sorted({str(v) for v in a[key]}) if key in a else []
        values_b = sorted({str(v) for v in b[key]}) if key in b else []
        if values_a != values_b:
            parts.append(f"{key}s A: {', '.join(values_a)}; B: {', '.join(values_b)}")
    return " | ".join(parts) or "their options"


def compare_frame(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """Cells of two runs side by side, paired by the rule of ``bench compare``
    (:func:`bench.reports.compare.pair_rows`: on the cell, seed included; a cell on one side
    only has empty columns on the other). A step-time ratio is shown only where both times are
    comparable; ``time_comparable`` says why not (a flagged timing, another concurrency)."""
    metrics = metric_columns_of(a, b)
    raw = {"a": a.drop_duplicates("cell_id", keep="last").set_index("cell_id"),
           "b": b.drop_duplicates("cell_id", keep="last").set_index("cell_id")}
    a, b = table_frame(a), table_frame(b)
    a.index, b.index = raw["a"].index, raw["b"].index
    values = [c for c in (*metrics, *COMPARE_VALUES) if c in a or c in b]
    cells = list(dict.fromkeys([*a.index, *b.index]))
    merged = pd.DataFrame(index=pd.Index(cells, name="cell_id"))
    for key in COMPARE_KEYS:
        left = a[key] if key in a else pd.Series(dtype=object)
        right = b[key] if key in b else pd.Series(dtype=object)
        merged[key] = left.reindex(cells).combine_first(right.reindex(cells))
    for column in values:
        for side, frame in (("a", a), ("b", b)):
            merged[f"{column}_{side}"] = (frame[column].reindex(cells) if column in frame
                                          else float("nan"))
    why = [_time_comparability(raw["a"], raw["b"], cell) for cell in cells]
    for column in ("train_step_time_s", "peak_memory_mib"):
        if column in values:  # neither run measured it (e.g. every cell unsupported): no ratio
            ratio = merged[f"{column}_b"] / merged[f"{column}_a"]
            if column == "train_step_time_s":
                ratio = ratio.where(np.array([not reason for reason in why], dtype=bool))
            merged[f"{column}_ratio_b_a"] = ratio
    merged["time_comparable"] = ["yes" if not reason else f"no: {reason}" for reason in why]
    ordered = list(COMPARE_KEYS)
    for column in values:
        ordered += [f"{column}_a", f"{column}_b"]
        if f"{column}_ratio_b_a" in merged:
            ordered.append(f"{column}_ratio_b_a")
    ordered.append("time_comparable")
    return merged.reset_index(drop=True)[ordered]


def _time_comparability(a: pd.DataFrame, b: pd.DataFrame, cell: str) -> str:
    """Why a cell's step times in runs A and B cannot be compared ('' when they can)."""
    if cell not in a.index or cell not in b.index:
        return "on one side only"
    reasons = []
    for side, frame in (("A", a), ("B", b)):
        flag = frame.at[cell, "timing_flag"] if "timing_flag" in frame else False
        if isinstance(flag, bool | np.bool_) and flag:
            warning: Any = frame.at[cell, "timing_warning"] if "timing_warning" in frame else ""
            reasons.append(f"{side}'s timing is flagged ({warning or 'no reason'})")
    cells: list[Any] = [frame.at[cell, "concurrent_cells"] if "concurrent_cells" in frame else None
                        for frame in (a, b)]
    if all(c is not None and not pd.isna(c) for c in cells) and cells[0] != cells[1]:
        reasons.append(f"ran at different concurrency ({int(cells[0])} vs {int(cells[1])} "
                       "cells at once)")
    return "; ".join(reasons)


def metric_columns_of(*frames: pd.DataFrame) -> list[str]:
    names: list[str] = []
    for frame in frames:
        names += [n for n in metric_columns(frame) if n not in names]
    return names

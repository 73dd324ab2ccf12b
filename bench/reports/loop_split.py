"""The loop-time split in reports: where a training step's forward solve spends its time, the
dynamics' evaluations against the solver's own loop (``dynamics_time_s``,
``solver_loop_time_s``; :mod:`bench.engine.phases` measures them), as a stacked bar per cell on
the HTML page (plain HTML and CSS, no script, no image) and as a markdown table."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

#: The page's styles for the bars (appended to the page's own).
STYLE = """
.ls-split td{border:none;padding:1px 6px}
.ls-bar{display:flex;width:24em;height:1em;background:#f4f4f4}
.ls-dyn{background:#4c78a8}
.ls-loop{background:#f58518}
.ls-key{display:inline-block;width:1em;height:1em;vertical-align:middle}
"""


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def split_rows(rows: Sequence[Any]) -> list[tuple[str, float, float, float]]:
    """``(cell, solve_time_s, dynamics_time_s, solver_loop_time_s)`` of every row that has the
    split, in the rows' order."""
    found = []
    for row in rows:
        solve = _number(getattr(row, "solve_time_s", None))
        dynamics = _number(getattr(row, "dynamics_time_s", None))
        if solve is None or dynamics is None or solve <= 0:
            continue
        loop = _number(getattr(row, "solver_loop_time_s", None))
        found.append((str(row.cell_id), solve, dynamics, solve - dynamics if loop is None
                      else loop))
    return found


def loop_split_section(rows: Sequence[Any]) -> str:
    """The HTML section (heading included) with a stacked bar per cell: the dynamics'
    evaluations and the solver's loop, to scale across the cells (the longest solve fills the
    bar); '' when no row has the split."""
    found = split_rows(rows)
    if not found:
        return ""
    longest = max(solve for _, solve, _, _ in found)
    lines = []
    for cell, solve, dynamics, loop in found:
        dyn_pct = 100.0 * max(dynamics, 0.0) / longest
        loop_pct = 100.0 * max(loop, 0.0) / longest
        share = 100.0 * max(loop, 0.0) / solve
        title = (f"solve {solve * 1e3:.3g} ms: dynamics {dynamics * 1e3:.3g} ms, solver loop "
                 f"{loop * 1e3:.3g} ms ({share:.0f}%)")
        lines.append(
            f"<tr><td>{html.escape(cell)}</td><td><div class=\"ls-bar\" "
            f"title=\"{html.escape(title)}\"><div class=\"ls-dyn\" style=\"width:{dyn_pct:.2f}%\">"
            f"</div><div class=\"ls-loop\" style=\"width:{loop_pct:.2f}%\"></div></div></td>"
            f"<td class=\"num\">{solve * 1e3:.3g} ms</td><td class=\"num\">{share:.0f}%</td></tr>")
    return ("<h2>Where the solve's time goes</h2>\n<p>One training step's forward solves, "
            "profiled in an extra untimed step: <span class=\"ls-key ls-dyn\"></span> the "
            "dynamics' evaluations (<code>dynamics_time_s</code>), "
            "<span class=\"ls-key ls-loop\"></span> the solver's own loop "
            "(<code>solver_loop_time_s</code>: step-size control, stage "
            "arithmetic, bookkeeping). Bars to scale across the cells; the last column is the "
            "loop's share of the solve.</p>\n<table class=\"ls-split\"><tr><th>cell</th>"
            "<th>solve</th><th>time</th><th>loop</th></tr>" + "".join(lines) + "</table>")


def loop_split_markdown(rows: Sequence[Any]) -> str:
    """The split as a markdown table (per cell: solve, dynamics, loop in ms and the loop's
    share); '' when no row has it."""
    found = split_rows(rows)
    if not found:
        return ""
    lines = ["| cell | solve_time_ms | dynamics_time_ms | solver_loop_time_ms | loop share |",
             "| --- | --- | --- | --- | --- |"]
    for cell, solve, dynamics, loop in found:
        lines.append(f"| {cell} | {solve * 1e3:.3g} | {dynamics * 1e3:.3g} | "
                     f"{loop * 1e3:.3g} | {100 * loop / solve:.0f}% |")
    return "\n".join(lines) + "\n"

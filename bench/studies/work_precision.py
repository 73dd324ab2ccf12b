"""The work-precision plot of a run over a tolerance grid: the suite's metric against the work
(NFE per training iteration, forward + backward; and the training step time), one line per
backend configuration with its tolerances as the points, each point labelled with its rtol.

A line is a backend with every parameter but the tolerances (``rtol``, ``atol``,
``adjoint_rtol``, ``adjoint_atol``) fixed, e.g. ``torch-adjoint[adjoint_norm=seminorm]``; seeds
of one point are their median (with a min-max bar). Drawn for each suite where some line has at
least two tolerances (``<suite>_work_precision.png``). Lines are layered (the first widest,
underneath; :func:`bench.reports.plots.layered`) so that lines on the same points stay visible,
and a point's rtol label is drawn only where it overlaps no other label (the title says how many
were left out).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.core.rows import ResultRow
from bench.core.tolerances import TOLERANCE_NAMES
from bench.planning.backend_grid import BackendChoice
from bench.reports.plots import backend_parameters, caption, finish, label_points, layered
from bench.store.results import RunDirectory, safe_name


def line_label(row: ResultRow) -> str:
    """The row's backend with its tolerance parameters left out (a line of the plot; also for
    rows read back from a published results.csv)."""
    name, params = backend_parameters(row)
    kept = tuple((k, v) for k, v in params if k not in TOLERANCE_NAMES and k != "tol")
    return BackendChoice(name, kept).label


def work_precision_points(rows: Sequence[ResultRow]) -> dict[str, list[dict[str, Any]]]:
    """Per line: one point per (rtol, atol), the median over seeds of the metric, the NFE per
    iteration (forward + backward) and the step time, with the metric's min and max. Lines
    with fewer than two points are left out."""
    cells: dict[str, dict[tuple, list[ResultRow]]] = {}
    for row in rows:
        if row.status != "ok" or row.rtol is None or row.metric is None:
            continue
        cells.setdefault(line_label(row), {}).setdefault((row.rtol, row.atol), []).append(row)
    lines: dict[str, list[dict[str, Any]]] = {}
    for label, points in cells.items():
        if len(points) < 2:
            continue
        out = []
        for (rtol, atol), members in sorted(points.items(), reverse=True):
            metrics = [r.metric for r in members if r.metric is not None]  # all of them
            nfe = [(r.nfe_forward or 0.0) + (r.nfe_backward or 0.0) for r in members
                   if r.nfe_forward is not None]
            times = [r.train_step_time_s for r in members if r.train_step_time_s is not None]
            out.append({"rtol": rtol, "atol": atol, "seeds": len(members),
                        "metric": statistics.median(metrics), "metric_min": min(metrics),
                        "metric_max": max(metrics),
                        "nfe_per_iteration": statistics.median(nfe) if nfe else None,
                        "train_step_time_s": statistics.median(times) if times else None})
        lines[label] = out
    return lines


def plot_work_precision(path: str | Path) -> list[Path]:
    """Draw each suite's work-precision plot into the run directory; the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = RunDirectory.open(Path(path))
    rows = run_dir.rows()
    env = run_dir.read_json("environment.json") or {}
    written: list[Path] = []
    for suite in dict.fromkeys(r.suite for r in rows):
        suite_rows = [r for r in rows if r.suite == suite]
        lines = work_precision_points(suite_rows)
        if not lines:
            continue
        metric = suite_rows[0].metric_name
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
        fig.subplots_adjust(wspace=0.08, top=0.84)  # the final layout: labels are placed in it
        labels: dict[int, list[tuple[float, float, str, Any]]] = {0: [], 1: []}
        for a, (ax, key, xlabel) in enumerate((
                (axes[0], "nfe_per_iteration",
                 "NFE per training iteration (forward + backward, mean over steps)"),
                (axes[1], "train_step_time_s",
                 "training step time, s (median, synchronised)"))):
            for i, (label, points) in enumerate(lines.items()):
                pts = [p for p in points if p[key] is not None]
                if not pts:
                    continue
                xs = [p[key] for p in pts]
                ys = [p["metric"] for p in pts]
                errors = [[p["metric"] - p["metric_min"] for p in pts],
                          [p["metric_max"] - p["metric"] for p in pts]]
                style = layered(i, len(lines))
                ax.errorbar(xs, ys, yerr=errors if any(p["seeds"] > 1 for p in pts) else None,
                            label=label, capsize=2, **style)
                labels[a] += [(x, y, f"{p['rtol']:g}", style["color"])
                              for p, x, y in zip(pts, xs, ys, strict=True)]
            ax.set_xscale("log")
            ax.set_xlabel(xlabel, fontsize=8)
            ax.grid(True, alpha=0.3)
        axes[0].set_ylabel(f"{metric} (final)")
        left_out = sum(label_points(ax, labels[a]) for a, ax in enumerate(axes))
        note = f"; {left_out} overlapping point labels left out" if left_out else ""
        fig.suptitle(f"{suite}: work-precision (points labelled with rtol{note})\n"
                     f"{caption(suite_rows, env)}", fontsize=10)
        out = run_dir.path / f"{safe_name(suite)}_work_precision.png"
        finish(fig, axes[1], out)
        written.append(out)
    return written

"""The gradient study's work-precision plots: per suite and weight scale k, the gradient's
relative error against its backward NFE and against its time (log-log), one line per backend
configuration without its tolerance (layered, so lines on the same points stay visible), each
point labelled with its tolerance where the label overlaps no other (the title says how many
were left out). The solves run in float32: at the tightest tolerances the error is float32
rounding as much as the solver's (results/gradient-accuracy-cpu/NOTES.md measures how much)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from bench.core.options import format_value
from bench.core.rows import ResultRow
from bench.planning.backend_grid import BackendChoice
from bench.reports.plots import backend_parameters, caption, finish, label_points, layered
from bench.store.results import safe_name

#: The tolerance parameters a study line leaves out of its label (its points differ by them).
TOLERANCE_KEYS = ("rtol", "atol", "adjoint_rtol", "adjoint_atol", "tol")


def line_label(row: ResultRow) -> str:
    """The row's backend label without its tolerances: one line of the study's plot (also for
    rows read back from a published results.csv)."""
    name, params = backend_parameters(row)
    return BackendChoice(name, tuple((k, v) for k, v in params if k not in TOLERANCE_KEYS)).label


def tolerance_label(row: ResultRow) -> str:
    """The point's tolerance as its plot label (``1e-05``), or the fixed steps."""
    if row.rtol is not None:
        return format_value(row.rtol) if row.rtol == row.atol else \
            f"{format_value(row.rtol)}/{format_value(row.atol)}"
    return f"{row.fixed_steps} steps" if row.fixed_steps else ""


def plot_study(rows: Sequence[ResultRow], out_dir: Path) -> list[Path]:
    """``<suite>_scale<k>_gradient_error.png`` for each suite and scale with measured points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[tuple[str, float], list[ResultRow]] = defaultdict(list)
    for row in rows:
        if (row.status == "ok" and row.grad_rel_error is not None and row.grad_rel_error > 0
                and row.grad_scale is not None):
            groups[(row.suite, row.grad_scale)].append(row)
    written = []
    for (suite, scale), points in sorted(groups.items()):
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        lines: dict[str, list[ResultRow]] = defaultdict(list)
        for row in points:
            lines[line_label(row)].append(row)
        labels: dict[int, list[tuple[float, float, str, str]]] = {0: [], 1: []}
        for i, (label, members) in enumerate(sorted(lines.items())):
            style = layered(i, len(lines))
            for a, (ax, x_name) in enumerate(zip(axes, ("grad_nfe_backward", "grad_time_s"),
                                                 strict=True)):
                shown = sorted((r for r in members if (getattr(r, x_name) or 0) > 0),
                               key=lambda r: getattr(r, x_name))
                if not shown:
                    continue
                xs = [getattr(r, x_name) for r in shown]
                ys = [r.grad_rel_error for r in shown if r.grad_rel_error is not None]  # all
                ax.plot(xs, ys, label=label, **style)
                labels[a] += [(x, y, tolerance_label(r), style["color"])
                              for r, x, y in zip(shown, xs, ys, strict=True)]
        for ax, xlabel in zip(axes, ("backward NFE (evaluations of f or its VJP)",
                                     "gradient time (forward + backward) [s]"), strict=True):
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel(xlabel)
            ax.set_ylabel("gradient relative error ||g - g_ref|| / ||g_ref||")
            ax.grid(True, alpha=0.3)
        left_out = sum(label_points(ax, labels[a]) for a, ax in enumerate(axes))
        note = f"; {left_out} overlapping point labels left out" if left_out else ""
        fig.suptitle(f"{suite}: gradient error, weights x {scale:g}, points labelled with rtol "
                     f"({caption(points)}{note})", fontsize=9)
        path = out_dir / f"{safe_name(suite)}_scale{scale:g}_gradient_error.png"
        finish(fig, axes[1], path)
        written.append(path)
    return written

"""The gradient study's work-precision plots: per suite and weight scale k, the gradient's
relative error against its backward NFE and against its time (log-log), one line per backend
configuration without its tolerance, each point labelled with its tolerance."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from bench.core.options import format_value
from bench.core.rows import ResultRow
from bench.planning.backend_grid import BackendChoice
from bench.reports.plots import caption, finish, style_line
from bench.store.results import safe_name

#: The tolerance parameters a study line leaves out of its label (its points differ by them).
TOLERANCE_KEYS = ("rtol", "atol", "adjoint_rtol", "adjoint_atol")


def line_label(row: ResultRow) -> str:
    """The row's backend label without its tolerances: one line of the study's plot."""
    params = tuple((k, v) for k, v in dict(row.backend_params).items()
                   if k not in TOLERANCE_KEYS)
    return BackendChoice(row.backend_name or row.backend, params).label


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
        for i, (label, members) in enumerate(sorted(lines.items())):
            for ax, x_name in zip(axes, ("grad_nfe_backward", "grad_time_s"), strict=True):
                shown = sorted((r for r in members if (getattr(r, x_name) or 0) > 0),
                               key=lambda r: getattr(r, x_name))
                if not shown:
                    continue
                xs = [getattr(r, x_name) for r in shown]
                ys = [r.grad_rel_error for r in shown]
                ax.plot(xs, ys, label=label, **style_line(i))
                for r, x, y in zip(shown, xs, ys, strict=True):
                    ax.annotate(tolerance_label(r), (x, y), fontsize=6, alpha=0.8,
                                xytext=(2, 2), textcoords="offset points")
        for ax, xlabel in zip(axes, ("backward NFE (evaluations of f or its VJP)",
                                     "gradient time (forward + backward) [s]"), strict=True):
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel(xlabel)
            ax.set_ylabel("gradient relative error ||g - g_ref|| / ||g_ref||")
            ax.grid(True, alpha=0.3)
        fig.suptitle(f"{suite}: gradient error, weights x {scale:g} ({caption(points)})",
                     fontsize=9)
        path = out_dir / f"{safe_name(suite)}_scale{scale:g}_gradient_error.png"
        finish(fig, axes[1], path)
        written.append(path)
    return written

"""The gradient study's work-precision plots: per suite and weight scale k, the gradient's
relative error against its backward NFE and against its time (log-log), one line per backend
configuration without its tolerance, each point labelled with its tolerance."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from bench.plots import caption, finish, style_line
from bench.results import safe_name
from bench.rows import ResultRow


def plot_study(rows: Sequence[ResultRow], out_dir: Path) -> list[Path]:
    """``<suite>_scale<k>_gradient_error.png`` for each suite and scale with measured points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bench.gradient_study import line_label, tolerance_label

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

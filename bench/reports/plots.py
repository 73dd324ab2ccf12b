"""Run-level plots in the spirit of Chen et al. 2018, Figure 3: NFE per training iteration
(forward and backward side by side, one line per backend) and the suite's metric against
training wall time. Written as PNG files into the run directory; framework-neutral (reads the
traces).

One style for every plot (:func:`style_line`, :func:`finish`): units on the axes, colours and
line styles cycling together (so more than ten lines stay apart), the legend outside the axes,
no tick label over another (:func:`tidy_ticks`), and the run's device and budget in the title.
Plots with many lines over the same points layer them (:func:`layered`) and label points only
where the label overlaps no other (:func:`label_points`). The seeds of one configuration are
one line, their median, with a band from their minimum to their maximum."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from bench.core.rows import ResultRow
from bench.reports.compare import options_text
from bench.store.files import atomic_write, is_regular_file, read_bytes
from bench.store.results import RunDirectory, safe_name, warn

LINE_STYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v", "P", "X")


def style_line(i: int) -> dict[str, Any]:
    """Colour, line style and marker of the i-th line: ten colours, then the next line style
    and marker, so lines 0..39 all differ."""
    return {"color": f"C{i % 10}", "linestyle": LINE_STYLES[(i // 10) % len(LINE_STYLES)],
            "marker": MARKERS[i % len(MARKERS)], "markersize": 3}


def layered(i: int, n: int) -> dict[str, Any]:
    """:func:`style_line` of line i of n, layered so that lines on the same points stay visible:
    the first drawn widest, with the biggest markers, underneath; each later one thinner and on
    top (two identical lines show as a thin line inside a wide one)."""
    share = (n - 1 - i) / max(1, n - 1)
    return {**style_line(i), "linewidth": 1.0 + 2.5 * share, "markersize": 3.0 + 5.0 * share,
            "markerfacecolor": "none" if i % 2 else style_line(i)["color"], "zorder": 2 + i}


def _boxes_overlap(a: Any, b: Any, pad: float = 1.0) -> bool:
    return not (a.x1 + pad <= b.x0 or b.x1 + pad <= a.x0 or a.y1 + pad <= b.y0
                or b.y1 + pad <= a.y0)


def tidy_ticks(ax: Any) -> None:
    """Hide tick labels that would overlap another (a log axis over less than a decade labels
    its minor ticks too: 2x10^-3, 3x10^-3, ... run into each other). Major labels are kept
    first, then minor ones where there is room; measured in the figure's drawn text extents."""
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    fig.canvas.draw()
    for axis in (ax.xaxis, ax.yaxis):
        kept: list[Any] = []
        for ticks in (axis.get_major_ticks(), axis.get_minor_ticks()):
            for tick in ticks:
                label = tick.label1
                if not label.get_visible() or not label.get_text():
                    continue
                box = label.get_window_extent(renderer)
                if any(_boxes_overlap(box, other) for other in kept):
                    label.set_visible(False)
                else:
                    kept.append(box)


def label_points(ax: Any, points: list[tuple[float, float, str, Any]],
                 fontsize: float = 6) -> int:
    """Label each ``(x, y, text, colour)`` point beside it where its text overlaps no label
    placed before it (eight positions around the point are tried); a label that fits nowhere is
    left out. Returns how many were left out (a caption says so)."""
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    fig.canvas.draw()
    offsets = ((3, 3), (3, -9), (-3, 3), (-3, -9), (6, -3), (-6, -3), (0, 7), (0, -12))
    placed: list[Any] = []
    left_out = 0
    for x, y, text, color in points:
        for dx, dy in offsets:
            note = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points",
                               fontsize=fontsize, color=color,
                               ha="left" if dx >= 0 else "right")
            box = note.get_window_extent(renderer)
            if not any(_boxes_overlap(box, other) for other in placed):
                placed.append(box)
                break
            note.remove()
        else:
            left_out += 1
    return left_out


def backend_parameters(row: ResultRow) -> tuple[str, tuple[tuple[str, Any], ...]]:
    """The row's backend name and parameters: its ``backend_params``, or, for a row read back
    from a published ``results.csv`` (which keeps only the label), parsed from its backend label
    ``name[key=value,...]``."""
    if row.backend_params:
        return row.backend_name or row.backend.split("[")[0], tuple(
            dict(row.backend_params).items())
    from bench.core.errors import BenchError
    from bench.planning.backend_grid import parse_backends

    try:
        (name, params), = parse_backends(row.backend, "backend label")
    except (BenchError, ValueError):
        return row.backend, ()
    return row.backend_name or name, tuple((k, v[0] if len(v) == 1 else v) for k, v in params)


def caption(rows: list[ResultRow], env: dict | None = None) -> str:
    """The run's device(s) and budget(s), for a plot's title."""
    devices = sorted({r.device + (f" {r.device_name}" if r.device_name else "") for r in rows})
    cpu = (env or {}).get("cpu_model")
    if cpu and devices and all(d.startswith("cpu") for d in devices):
        devices = [f"cpu ({cpu})"]
    budgets = sorted({r.budget for r in rows})
    seeds = sorted({r.seed for r in rows})
    text = f"device {', '.join(devices) or '?'}; budget {', '.join(budgets) or '?'}"
    if len(seeds) > 1:
        text += f"; {len(seeds)} seeds: median line, min-max band"
    return text


def finish(fig: Any, ax: Any, out: Path, legend: bool = True) -> None:
    """Legend outside the axes (right), grid, no overlapping tick labels (:func:`tidy_ticks`,
    on every axes of the figure), saved tightly: drawn into a temporary file in ``out``'s folder
    and renamed into place (never written through a link)."""
    import matplotlib.pyplot as plt

    if legend:
        handles, labels = ax.get_legend_handles_labels()
        if handles:
            ax.legend(handles, labels, fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1),
                      borderaxespad=0, ncol=1 + len(handles) // 25)
    ax.grid(True, alpha=0.3)
    for each in fig.axes:
        tidy_ticks(each)
    try:
        save_figure(fig, out, dpi=120, bbox_inches="tight")
    finally:
        plt.close(fig)


def save_figure(fig: Any, out: str | Path, **options: Any) -> Path:
    """``fig.savefig`` into ``out`` (its format from the suffix) through
    :func:`bench.store.files.atomic_write`: whole, renamed into place, never through a link."""
    out = Path(out)
    fmt = out.suffix.lstrip(".").lower() or "png"
    return atomic_write(out, lambda handle: fig.savefig(handle, format=fmt, **options))


def _traces(run_dir: RunDirectory) -> list[tuple[ResultRow, dict]]:
    found = []
    for row in run_dir.rows():
        path = run_dir.cell_dir(row.cell_id, create=False) / "trace.json"
        if row.status not in ("ok", "diverged") or not is_regular_file(path):
            continue
        try:
            trace = json.loads(read_bytes(path))
        except (OSError, ValueError, RecursionError) as exc:
            warn(f"{path}: not plotted ({getattr(exc, 'strerror', None) or exc})")
            continue
        if isinstance(trace, dict) and isinstance(trace.get("steps"), list):
            found.append((row, trace))
    return found


def configuration(row: ResultRow) -> tuple:
    """What makes cells one line: everything but the seed (backend, identifying options,
    tolerances)."""
    return (row.backend, options_text(row.cell_id), row.rtol, row.atol)


def _label(row: ResultRow, rows: list[ResultRow], seeds: list[int]) -> str:
    label = row.backend
    if len({configuration(r) for r in rows if r.backend == row.backend}) > 1:
        _, options, rtol, atol = configuration(row)
        label += " " + " ".join(p for p in (options, f"rtol={rtol}" if rtol else "",
                                            f"atol={atol}" if atol else "") if p)
    if len(seeds) > 1:
        label += f" ({len(seeds)} seeds)"
    elif seeds:
        label += f" (seed {seeds[0]})"
    return label


def _groups(cells: list[tuple[ResultRow, dict]]) -> list[tuple[str, list[tuple[ResultRow, dict]]]]:
    groups: dict[tuple, list[tuple[ResultRow, dict]]] = {}
    for row, trace in cells:
        groups.setdefault(configuration(row), []).append((row, trace))
    rows = [row for row, _ in cells]
    return [(_label(members[0][0], rows, sorted(r.seed for r, _ in members)), members)
            for members in groups.values()]


def _band(series: list[dict[Any, float]]) -> tuple[list, list, list, list]:
    """x, median, min, max over the series (x values present in every series)."""
    xs = [x for x in series[0] if all(x in s for s in series)]
    values = [[s[x] for s in series] for x in xs]
    return (xs, [statistics.median(v) for v in values], [min(v) for v in values],
            [max(v) for v in values])


def _draw(ax: Any, i: int, label: str, series: list[dict[Any, float]], xs_of: Any = None
          ) -> bool:
    series = [s for s in series if s]
    if not series:
        return False
    xs, mid, lo, hi = _band(series)
    if not xs:
        return False
    plot_xs = xs_of(xs) if xs_of else xs
    style = style_line(i)
    ax.plot(plot_xs, mid, label=label, markevery=max(1, len(xs) // 10), **style)
    if len(series) > 1:
        ax.fill_between(plot_xs, lo, hi, color=style["color"], alpha=0.15, linewidth=0)
    return True


def plot_run(path: str | Path) -> list[Path]:
    """Draw the run's plots; returns the files written (none when nothing was traced)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = RunDirectory.open(Path(path))
    env = run_dir.read_json("environment.json") or {}
    traces = _traces(run_dir)
    written: list[Path] = []
    for suite in dict.fromkeys(row.suite for row, _ in traces):
        cells = [(row, trace) for row, trace in traces if row.suite == suite]
        groups = _groups(cells)
        where = caption([row for row, _ in cells], env)

        fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharex=True)
        for ax, key, what in ((axes[0], "nfe_forward", "forward pass"),
                              (axes[1], "nfe_backward", "backward pass")):
            drawn = False
            for i, (label, members) in enumerate(groups):
                series = [{s["step"]: s[key] for s in trace["steps"] if s.get(key) is not None}
                          for _, trace in members]
                drawn |= _draw(ax, i, label, series)
            ax.set_xlabel("training iteration")
            ax.set_ylabel("NFE per iteration (function evaluations)")
            ax.set_title(what, fontsize=9)
            ax.grid(True, alpha=0.3)
            if not drawn:
                ax.text(0.5, 0.5, "not measured", ha="center", transform=ax.transAxes)
        fig.suptitle(f"{suite}: NFE per training iteration\n{where}", fontsize=10)
        fig.subplots_adjust(wspace=0.3, top=0.82)
        out = run_dir.path / f"{safe_name(suite)}_nfe_per_iteration.png"
        finish(fig, axes[1], out)
        written.append(out)

        metric = cells[0][0].metric_name
        fig, ax = plt.subplots(figsize=(8, 4.5))
        drawn = False
        for i, (label, members) in enumerate(groups):
            series, times = [], []
            for _, trace in members:
                evals = [e for e in trace.get("evaluations", []) if e.get(metric) is not None]
                series.append({e["step"]: e[metric] for e in evals})
                times.append({e["step"]: e["train_time_s"] for e in evals})
            times = [t for t in times if t]

            def median_time(steps: list, times: list = times) -> list[float]:
                return [statistics.median(t[s] for t in times if s in t) for s in steps]

            drawn |= _draw(ax, i, label, series, median_time)
        if drawn:
            ax.set_xlabel("training wall time, s (synchronised; evaluation excluded; "
                          "seeds: median)")
            ax.set_ylabel(f"{metric} ({_unit(metric)})")
            ax.set_title(f"{suite}: {metric} against training time\n{where}\n"
                         "(periodic evaluations may use a subset of the test set)", fontsize=10)
            out = run_dir.path / f"{safe_name(suite)}_{safe_name(metric)}_vs_time.png"
            finish(fig, ax, out)
            written.append(out)
        else:
            plt.close(fig)
    return written


def _unit(metric: str) -> str:
    """The unit a metric's name carries."""
    for suffix, unit in (("_pct", "%"), ("_nats", "nats"), ("_s", "s"), ("_mib", "MiB"),
                         ("_bytes", "bytes")):
        if metric.endswith(suffix):
            return unit
    return "mean squared error" if metric.startswith("mse") else "as the suite defines it"

"""Run-level plots in the spirit of Chen et al. 2018, Figure 3: NFE per training iteration
(forward solid, backward dashed, one colour per backend) and the suite's metric against training
wall time. Written as PNG files into the run directory; framework-neutral (reads the traces)."""

from __future__ import annotations

import json
from pathlib import Path

from bench.results import ResultRow, RunDirectory, safe_name


def _traces(run_dir: RunDirectory) -> list[tuple[ResultRow, dict]]:
    found = []
    for row in run_dir.rows():
        path = run_dir.path / "cells" / safe_name(row.cell_id.replace("/", "__")) / "trace.json"
        if row.status in ("ok", "diverged") and path.exists():
            found.append((row, json.loads(path.read_text())))
    return found


def plot_run(path: str | Path) -> list[Path]:
    """Draw the run's plots; returns the files written (none when nothing was traced)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = RunDirectory.open(Path(path))
    traces = _traces(run_dir)
    written: list[Path] = []
    for suite in dict.fromkeys(row.suite for row, _ in traces):
        cells = [(row, trace) for row, trace in traces if row.suite == suite]
        label = lambda row: f"{row.backend} (seed {row.seed})"  # noqa: E731

        fig, ax = plt.subplots(figsize=(7, 4.5))
        for i, (row, trace) in enumerate(cells):
            colour = f"C{i % 10}"
            steps = [s["step"] for s in trace["steps"]]
            forward = [s["nfe_forward"] for s in trace["steps"]]
            backward = [s["nfe_backward"] for s in trace["steps"]]
            if any(v is not None for v in forward):
                ax.plot(steps, forward, color=colour, label=f"{label(row)} forward")
            if any(v is not None for v in backward):
                ax.plot(steps, backward, color=colour, linestyle="--",
                        label=f"{label(row)} backward")
        ax.set_xlabel("training iteration")
        ax.set_ylabel("function evaluations per iteration (NFE)")
        ax.set_title(f"{suite}: NFE per training iteration")
        ax.legend(fontsize=7)
        fig.tight_layout()
        out = run_dir.path / f"{safe_name(suite)}_nfe_per_iteration.png"
        fig.savefig(out, dpi=120)
        plt.close(fig)
        written.append(out)

        metric = cells[0][0].metric_name
        fig, ax = plt.subplots(figsize=(7, 4.5))
        drawn = False
        for i, (row, trace) in enumerate(cells):
            points = [(e["train_time_s"], e[metric]) for e in trace.get("evaluations", [])
                      if e.get(metric) is not None]
            if points:
                xs, ys = zip(*points, strict=False)
                ax.plot(xs, ys, marker="o", color=f"C{i % 10}", label=label(row),
                        linestyle=("-", "--", ":")[(i // 10) % 3])
                drawn = True
        if drawn:
            ax.set_xlabel("training wall time, s (synchronised; evaluation excluded)")
            ax.set_ylabel(metric)
            ax.set_title(f"{suite}: {metric} against training time\n"
                         "(periodic evaluations may use a subset of the test set)", fontsize=10)
            ax.legend(fontsize=7)
            fig.tight_layout()
            out = run_dir.path / f"{safe_name(suite)}_{safe_name(metric)}_vs_time.png"
            fig.savefig(out, dpi=120)
            written.append(out)
        plt.close(fig)
    return written

"""The gradient frontier (issue 31): every gradient method's gradient error against its cost, with
the Pareto front marked and the NFE beside each point.

Reads any number of run directories or published folders (``bench run`` rows: the error at the
initial weights, ``grad_rel_error``, beside the training step's NFE, time and peak memory;
``bench gradients`` rows: the error beside the gradient's NFE and time, no memory) and writes
into ``--out``:

- ``frontier.csv`` / ``frontier.md``: one row per point (suite, method, tolerance, error, NFE,
  time, memory), with ``front_time`` / ``front_memory`` / ``front_nfe``: whether the point is on
  the Pareto front of that cost (no other point of the suite is both cheaper and more accurate);
- ``<suite>_frontier.png``: error against step time and against peak memory (``bench run``
  rows), or against time and backward NFE (``bench gradients`` rows), log-log, one marker per
  method (its points joined in the order of their tolerance), each point labelled with its
  tolerance and forward + backward NFE, the front drawn as a step line and circled.

A method is the backend configuration without its tolerances (``torch-adjoint[adjoint_norm=
seminorm]``). Usage::

    python benchmarks/gradient_frontier.py RUN [RUN ...] --out DIR
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path

import pandas as pd

TOLERANCE = re.compile(r"(?:,|(?<=\[))(?:rtol|atol)=[^,\]]*")
COLUMNS = ["suite", "method", "backend", "gradient_method", "rtol", "grad_rel_error",
           "nfe_forward", "nfe_backward", "time_s", "time_kind", "peak_memory_mib",
           "saved_for_backward_mib", "front_time", "front_memory", "front_nfe", "timing_flag"]


def method_of(backend: str) -> str:
    """The backend label without rtol/atol (``torch-direct[rtol=0.001,atol=0.001]`` ->
    ``torch-direct``)."""
    label = TOLERANCE.sub("", backend).replace("[,", "[")
    return label[:-2] if label.endswith("[]") else label


def points(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per measured point of a run's frame, in the frontier's columns."""
    frame = frame[(frame["status"] == "ok") & frame["grad_rel_error"].notna()].copy()
    study = "grad_time_s" in frame.columns and frame["grad_time_s"].notna().any()
    out = pd.DataFrame({
        "suite": frame["suite"], "backend": frame["backend"],
        "method": frame["backend"].map(method_of),
        "gradient_method": frame.get("gradient_method"),
        "rtol": frame.get("rtol"), "grad_rel_error": frame["grad_rel_error"],
    })
    if study:
        out["nfe_forward"] = frame["grad_nfe_forward"]
        out["nfe_backward"] = frame["grad_nfe_backward"]
        out["time_s"] = frame["grad_time_s"]
        out["time_kind"] = "gradient (forward + backward), median of 3"
        out["peak_memory_mib"] = math.nan
        out["saved_for_backward_mib"] = math.nan
    else:
        out["nfe_forward"] = frame["nfe_forward"]
        out["nfe_backward"] = frame["nfe_backward"]
        out["time_s"] = frame["train_step_time_s"]
        out["time_kind"] = "training step"
        out["peak_memory_mib"] = frame["peak_memory_bytes"] / 2 ** 20
        out["saved_for_backward_mib"] = frame.get("saved_for_backward_bytes", math.nan) / 2 ** 20
    out["timing_flag"] = frame.get("timing_flag", pd.Series("", index=frame.index)).fillna("")
    return out


def pareto(xs: pd.Series, ys: pd.Series) -> pd.Series:
    """True where no other point has both a smaller-or-equal x and a smaller y (and one strictly
    better): the lower-left front of (cost, error)."""
    on = pd.Series(False, index=xs.index)
    valid = xs.notna() & ys.notna() & (xs > 0)
    best = math.inf
    for index in xs[valid].sort_values(kind="stable").index:
        if ys[index] < best:
            on[index] = True
            best = ys[index]
    return on


def mark_fronts(table: pd.DataFrame) -> pd.DataFrame:
    """The ``front_*`` columns, per suite."""
    table = table.copy()
    table["nfe_total"] = table["nfe_forward"] + table["nfe_backward"]
    for column, cost in (("front_time", "time_s"), ("front_memory", "peak_memory_mib"),
                         ("front_nfe", "nfe_total")):
        table[column] = False
        for _, group in table.groupby("suite"):
            table.loc[group.index, column] = pareto(group[cost], group["grad_rel_error"])
    return table


def plot(table: pd.DataFrame, out: Path) -> list[Path]:
    """``<suite>_frontier.png`` for each suite."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    markers = "osD^v<>pPXh*d8H"
    for suite, group in table.groupby("suite"):
        has_memory = group["peak_memory_mib"].notna().any()
        costs = [("time_s", "front_time", group["time_kind"].iloc[0] + " time [s]")]
        costs.append(("peak_memory_mib", "front_memory", "peak memory of the step [MiB]")
                     if has_memory else
                     ("nfe_total", "front_nfe", "NFE (forward + backward)"))
        fig, axes = plt.subplots(1, 2, figsize=(13, 5.2))
        methods = sorted(group["method"].unique())
        cmap = plt.get_cmap("tab20")
        for ax, (cost, front, xlabel) in zip(axes, costs, strict=True):
            for i, method in enumerate(methods):
                # a method's line joins its points in the order of their tolerance
                rows = group[group["method"] == method].sort_values("rtol", ascending=False)
                rows = rows[rows[cost].notna() & (rows[cost] > 0)]
                ax.plot(rows[cost], rows["grad_rel_error"], marker=markers[i % len(markers)],
                        color=cmap(i % 20), lw=0.8, ms=5, alpha=0.85, label=method)
                for _, r in rows.iterrows():
                    tol = "" if pd.isna(r["rtol"]) else f"{r['rtol']:g}: "
                    ax.annotate(f"{tol}{r['nfe_forward']:.0f}+{r['nfe_backward']:.0f}",
                                (r[cost], r["grad_rel_error"]), fontsize=5, alpha=0.7,
                                xytext=(2, 2), textcoords="offset points")
            on = group[group[front]].sort_values(cost)
            ax.step(on[cost], on["grad_rel_error"], where="post", color="black", lw=1.6,
                    alpha=0.6, label="Pareto front")
            ax.scatter(on[cost], on["grad_rel_error"], s=90, facecolors="none",
                       edgecolors="black", lw=1.2, zorder=5)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel(xlabel)
            ax.set_ylabel("gradient relative error ||g - g_ref|| / ||g_ref||")
            ax.grid(True, which="both", alpha=0.25)
        axes[1].legend(fontsize=6, loc="best", ncol=2)
        flagged = (group["timing_flag"] != "").sum()
        note = f"; {flagged} of {len(group)} times flagged (loaded host)" if flagged else ""
        fig.suptitle(f"{suite}: the gradient frontier (labels: rtol: forward+backward NFE; rtol "
                     f"{', '.join(f'{v:g}' for v in sorted(group['rtol'].dropna().unique()))})"
                     f"{note}", fontsize=9)
        fig.tight_layout()
        path = out / f"{suite}_frontier.png"
        fig.savefig(path, dpi=130)
        plt.close(fig)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run directories or published folders")
    parser.add_argument("--out", required=True, type=Path, help="folder for the outputs")
    args = parser.parse_args(argv)
    from bench import load_run

    tables = [points(load_run(run)) for run in args.runs]
    table = mark_fronts(pd.concat(tables, ignore_index=True))
    table = table.sort_values(["suite", "method", "rtol"], ascending=[True, True, False])
    args.out.mkdir(parents=True, exist_ok=True)
    table[[c for c in [*COLUMNS, "nfe_total"] if c in table]].to_csv(
        args.out / "frontier.csv", index=False)
    shown = table[["suite", "method", "rtol", "grad_rel_error", "nfe_forward", "nfe_backward",
                   "time_s", "peak_memory_mib", "front_time", "front_memory", "front_nfe"]]
    from bench.reports.report import render

    (args.out / "frontier.md").write_text(render(shown, "markdown"))
    for path in plot(table, args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

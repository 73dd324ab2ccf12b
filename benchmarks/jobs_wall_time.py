"""Cells at once against one at a time: the wall time of ``bench run --jobs 2 --threads 1``
against ``--jobs 1 --threads 1``, and how much each cell's ``train_step_time_s`` moved (the
interference of a neighbour cell). The figure is in docs/usage.md (section Running cells in
parallel).

Run on a quiet machine, from the repository root::

    python benchmarks/jobs_wall_time.py --suite cnf --budget quick --plugins all \
        --out runs/jobs-wall-time --rounds 2

Each round runs ``--jobs 1`` then ``--jobs 2`` (interleaved rounds, so a drift of the machine
hits both); it prints the wall times, their ratio (target: at most 0.6) and, per cell, the
median step time at ``--jobs 2`` over ``--jobs 1``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.store.results import RunDirectory


def run(args: argparse.Namespace, jobs: int, out: Path) -> float:
    command = [sys.executable, "-m", "bench.cli.main", "run", "--suite", args.suite, "--plugins",
               args.plugins, "--budget", args.budget, "--threads", "1", "--jobs", str(jobs),
               "--out", str(out)]
    started = time.perf_counter()
    subprocess.run(command, check=False, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", default="cnf")
    parser.add_argument("--budget", default="quick")
    parser.add_argument("--plugins", default="all")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("runs/jobs-wall-time"))
    args = parser.parse_args()
    walls: dict[int, list[float]] = {1: [], 2: []}
    steps: dict[tuple[int, str], list[float]] = {}
    for k in range(args.rounds):
        for jobs in (1, 2):
            out = args.out / f"jobs{jobs}-round{k}"
            walls[jobs].append(run(args, jobs, out))
            for row in RunDirectory.open(out).rows():
                if row.status == "ok" and row.train_step_time_s is not None:
                    steps.setdefault((jobs, row.cell_id), []).append(row.train_step_time_s)
            print(f"round {k} --jobs {jobs}: {walls[jobs][-1]:.1f} s", flush=True)
    one, two = statistics.median(walls[1]), statistics.median(walls[2])
    print(f"\nwall time: --jobs 1 {one:.1f} s, --jobs 2 {two:.1f} s, ratio {two / one:.2f} "
          "(target <= 0.6)")
    print("\n| cell | step s, --jobs 1 | step s, --jobs 2 | ratio |\n| --- | --- | --- | --- |")
    for (jobs, cell), values in sorted(steps.items(), key=lambda kv: kv[0][1]):
        if jobs != 1 or (2, cell) not in steps:
            continue
        a, b = statistics.median(values), statistics.median(steps[(2, cell)])
        print(f"| {cell} | {a:.4g} | {b:.4g} | {b / a:.2f} |")


if __name__ == "__main__":
    main()

"""Time to answer: how long a user waits for the harness itself, printed as ratios against the
previous figures (``benchmarks/time_to_answer.json``) so that a change that slows the harness is
seen.

What it runs (``--only`` picks some; each in a fresh scratch folder under ``--out``):

- ``smoke``: the smoke run of the three training suites with all backends
  (``bench run --suite mnist,cnf,latent-ode --plugins all --budget smoke``) twice, sharing a
  compile cache that starts empty: ``smoke_cold_s`` then ``smoke_warm_s`` (target: warm at most
  0.6x cold, cold within 3 minutes on 2 idle cores), and the cold run once more with
  ``--no-compile-cache`` (``smoke_nocache_s``: what the cache saves within one cold run);
- ``quick``: one quick suite (cnf, all backends), warm cache: ``cnf_quick_s``;
- ``tests``: the fast tests as the README runs them (``pytest -n auto``): ``fast_tests_s``;
- ``jobs``: MNIST quick with ``--jobs 1`` and ``--jobs 2`` (``--threads 1``, warm cache):
  ``jobs1_s``, ``jobs2_s`` and their ratio (target: at most 0.6);

and, for every run, where the cells' time went: each phase of ``phases.json`` summed over the
cells, per framework (process start, imports, set-up, compile, timed steps, evaluation and its
JIT preparation, the suite's finish, gradient probes, memory steps, loop profile), and the
compile cache's and the kept programs' hits.

Run it on a quiet machine, from the repository root::

    python benchmarks/time_to_answer.py --data-dir /path/to/mnist            # everything
    python benchmarks/time_to_answer.py --only smoke --data-dir DIR          # one part
    python benchmarks/time_to_answer.py --save                               # new baseline

Every figure is wall time on this machine: compare ratios only between runs on the same machine
(``host`` and ``cores`` are printed and saved), and say how loaded it was (the 1-minute load
average before and after each part is printed).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BASELINE = Path(__file__).with_name("time_to_answer.json")
SMOKE = ["--suite", "mnist,cnf,latent-ode", "--plugins", "all", "--budget", "smoke"]
PARTS = ("smoke", "quick", "tests", "jobs")
TARGETS = {"smoke_warm_over_cold": 0.6, "smoke_cold_s": 180.0, "smoke_warm_s": 90.0,
           "fast_tests_s": 180.0, "jobs2_over_jobs1": 0.6}


def load() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def timed(command: list[str], log: Path) -> float:
    """Run ``command`` (its output to ``log``) and return its wall time."""
    started = time.perf_counter()
    with open(log, "w") as handle:
        subprocess.run(command, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT, check=False)
    seconds = time.perf_counter() - started
    print(f"  {seconds:7.1f} s  {' '.join(command[2:])}  (load {load():.1f}; log {log})",
          flush=True)
    return seconds


def bench(*args: str) -> list[str]:
    return [sys.executable, "-m", "bench.cli.main", *args]


def phases(run: Path) -> dict[str, dict[str, float]]:
    """Each phase of the run's cells, summed per framework (and ``all``), with the compile
    cache's requests and hits and the cells' count."""
    totals: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for path in sorted((run / "cells").glob("*/phases.json")):
        data = json.loads(path.read_text())
        framework = data.get("framework") or "?"
        for group in (framework, "all"):
            t = totals[group]
            t["cells"] += 1
            for name, seconds in data["phases_s"].items():
                t[name] += seconds
            t["other"] += data.get("other_s", 0.0)
            t["cell_total"] += data.get("cell_total_s", 0.0)
            caches = data.get("compile_cache") or {}
            cell = caches.get("cell") or {}
            t["cache_requests"] += cell.get("requests", 0)
            t["cache_hits"] += cell.get("hits", 0)
            programs = caches.get("cell_programs") or {}  # kept traced programs
            t["program_requests"] += programs.get("requests", 0)
            t["program_hits"] += programs.get("hits", 0)
    return {k: dict(v) for k, v in totals.items()}


def print_phases(title: str, table: dict[str, dict[str, float]]) -> None:
    if not table:
        return
    names = ["cells", "process_start", "imports", "setup", "compile", "train_steps",
             "eval_prepare", "evaluation", "finish", "gradient_probes", "memory_steps",
             "loop_profile", "other", "cell_total", "cache_hits", "cache_requests",
             "program_hits", "program_requests"]
    print(f"\n{title}: seconds summed over the cells")
    print("| framework | " + " | ".join(names) + " |")
    print("|" + " --- |" * (len(names) + 1))
    for group, t in sorted(table.items(), key=lambda kv: kv[0] == "all"):
        print(f"| {group} | " + " | ".join(
            f"{t.get(n, 0):.0f}" if n in ("cells", "cache_hits", "cache_requests",
                                          "program_hits", "program_requests")
            else f"{t.get(n, 0):.1f}" for n in names) + " |")


def run_smoke(out: Path, data: list[str]) -> dict[str, Any]:
    cache = out / "compile-cache"
    shutil.rmtree(cache, ignore_errors=True)
    figures: dict[str, Any] = {}
    for name, extra in (("smoke_nocache_s", ["--no-compile-cache"]),
                        ("smoke_cold_s", ["--compile-cache", str(cache)]),
                        ("smoke_warm_s", ["--compile-cache", str(cache)])):
        run = out / name.removesuffix("_s")
        shutil.rmtree(run, ignore_errors=True)
        figures[name] = timed(bench("run", *SMOKE, *data, *extra, "--out", str(run)),
                              out / f"{name}.log")
        figures[f"phases_{name.removesuffix('_s')}"] = phases(run)
    figures["smoke_warm_over_cold"] = figures["smoke_warm_s"] / figures["smoke_cold_s"]
    figures["smoke_cold_over_nocache"] = figures["smoke_cold_s"] / figures["smoke_nocache_s"]
    return figures


def run_quick(out: Path, data: list[str], cache: Path) -> dict[str, Any]:
    run = out / "cnf_quick"
    shutil.rmtree(run, ignore_errors=True)
    seconds = timed(bench("run", "--suite", "cnf", "--plugins", "all", "--budget", "quick",
                          "--compile-cache", str(cache), *data, "--out", str(run)),
                    out / "cnf_quick.log")
    return {"cnf_quick_s": seconds, "phases_cnf_quick": phases(run)}


def run_tests(out: Path) -> dict[str, Any]:
    seconds = timed([sys.executable, "-m", "pytest", "-n", "auto", "-q", "-p",
                     "no:cacheprovider"], out / "fast_tests.log")
    return {"fast_tests_s": seconds}


def run_jobs(out: Path, data: list[str], cache: Path) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for jobs in (1, 2):
        run = out / f"jobs{jobs}"
        shutil.rmtree(run, ignore_errors=True)
        figures[f"jobs{jobs}_s"] = timed(
            bench("run", "--suite", "mnist", "--plugins", "all", "--budget", "quick",
                  "--jobs", str(jobs), "--compile-cache", str(cache),
                  *data, "--threads", "1", "--out", str(run)),
            out / f"jobs{jobs}.log")
        figures[f"phases_jobs{jobs}"] = phases(run)
    figures["jobs2_over_jobs1"] = figures["jobs2_s"] / figures["jobs1_s"]
    # why --jobs 2 gives what it gives: the cells' own time summed (S), against the wall (W)
    s1 = figures["phases_jobs1"].get("all", {}).get("cell_total", 0.0)
    s2 = figures["phases_jobs2"].get("all", {}).get("cell_total", 0.0)
    if s1 and s2:
        # each cell slower beside another (memory bandwidth, caches, helper threads)
        figures["jobs_cell_slowdown"] = s2 / s1
        # the wall over a perfect packing of the cells into two slots (the last cell alone,
        # the parent's own work between cells)
        figures["jobs_packing"] = figures["jobs2_s"] / (s2 / 2)
        # the serial run's wall outside its cells (the parent: start, plans, report, plots)
        figures["jobs1_outside_cells"] = figures["jobs1_s"] - s1
        print(f"  --jobs 2 / --jobs 1 = {figures['jobs2_over_jobs1']:.2f}: each cell ran "
              f"{figures['jobs_cell_slowdown']:.2f}x as long beside a neighbour; the wall was "
              f"{figures['jobs_packing']:.2f}x a perfect packing of the cells into two slots "
              f"(1.00: no slot ever idle); the serial run spent "
              f"{figures['jobs1_outside_cells']:.0f} s outside its cells")
    return figures


def compare(figures: dict[str, Any], baseline: dict[str, Any]) -> None:
    print("\n| figure | now | previous | now / previous | target |")
    print("| --- | --- | --- | --- | --- |")
    for name, value in figures.items():
        if not isinstance(value, float):
            continue
        before = baseline.get("figures", {}).get(name)
        ratio = f"{value / before:.2f}" if isinstance(before, float) and before else "-"
        target = TARGETS.get(name)
        flag = "" if target is None else (f"<= {target:g}" + (" MISSED" if value > target
                                                               else ""))
        shown = f"{before:.3g}" if isinstance(before, float) else "-"
        print(f"| {name} | {value:.3g} | {shown} | {ratio} | {flag} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(PARTS),
                        help=f"comma-separated parts: {', '.join(PARTS)} (default all)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench-time-to-answer"),
                        help="scratch folder for the runs (default /tmp/bench-time-to-answer)")
    parser.add_argument("--data-dir", default=None, help="the MNIST files (bench run --data-dir)")
    parser.add_argument("--threads", default=None,
                        help="bench run --threads for the smoke and quick runs (default: "
                        "bench's own, every core; on a loaded machine 1 spares the cells "
                        "OpenMP's waits for a descheduled thread)")
    parser.add_argument("--note", default="", help="with --save: how the machine was (its load)")
    parser.add_argument("--save", action="store_true",
                        help=f"write the figures as the new baseline ({BASELINE.name})")
    args = parser.parse_args()
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    data = ["--data-dir", args.data_dir] if args.data_dir else []
    threads = ["--threads", args.threads] if args.threads else []
    cache = args.out / "compile-cache"
    figures: dict[str, Any] = {}
    print(f"host {os.uname().nodename}, {os.cpu_count()} cores, load {load():.1f}", flush=True)
    if "smoke" in parts:
        figures.update(run_smoke(args.out, data + threads))
    if "quick" in parts:
        figures.update(run_quick(args.out, data + threads, cache))
    if "tests" in parts:
        figures.update(run_tests(args.out))
    if "jobs" in parts:
        figures.update(run_jobs(args.out, data, cache))
    for name, table in figures.items():
        if name.startswith("phases_"):
            print_phases(name.removeprefix("phases_"), table)
    baseline = json.loads(BASELINE.read_text()) if BASELINE.is_file() else {}
    if baseline:
        print(f"\nprevious figures: {baseline.get('measured_at')} on {baseline.get('host')} "
              f"({baseline.get('cores')} cores, load {baseline.get('load_1m')}): "
              f"{baseline.get('note') or ''}")
    compare(figures, baseline)
    if args.save:
        saved = {**baseline.get("figures", {}),
                 **{k: v for k, v in figures.items() if isinstance(v, float)}}
        BASELINE.write_text(json.dumps({
            "host": os.uname().nodename, "cores": os.cpu_count(), "load_1m": load(),
            "measured_at": time.strftime("%Y-%m-%d %H:%M"), "note": args.note,
            "figures": saved}, indent=1) + "\n")
        print(f"\nsaved as the new baseline: {BASELINE}")


if __name__ == "__main__":
    main()

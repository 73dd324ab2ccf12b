"""The ``bench`` command: parse the arguments, hand them on, print the outcome.

Commands: ``list`` (backends, suites, budgets, options, plugin load errors), ``run`` (suites x
backends x seeds, one process per cell), ``memory`` (the memory scaling study), ``report`` (a
run's table, or two runs compared), ``compare`` (a regression gate for CI), ``index`` (the index
of a results folder), ``publish`` (a run's table, environment and plots into a results
folder) and ``claims`` (published claims judged on run or published folders). A run is a
:class:`bench.planning.request.RunRequest` carried out by a
:class:`bench.commands.session.RunSession`; errors of the user's input are
:class:`bench.core.errors.BenchError`
(exit 2).
"""

from __future__ import annotations

import argparse
import difflib
import functools
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from bench.cli.arguments import (
    _jobs,
    _max_cells,
    _memory_mb,
    _option,
    _path,
    _positive_float,
    _run_dir,
    _threads,
    add_compile_cache_arguments,
    compile_cache_of,
)
from bench.cli.claims import add_parser as add_claims_parser
from bench.cli.gradients import add_parser as add_gradients_parser
from bench.cli.gradients import run_study
from bench.cli.listing import backend_lines, lines_or_broken, suite_lines
from bench.cli.requests import memory_request, run_request
from bench.commands.session import RunOutcome, RunSession
from bench.core.errors import BenchError
from bench.core.registry import LOAD_PLUGINS_ENV, PluginSelection, Registry
from bench.planning.request import (
    DEFAULT_BUDGET,
    DEFAULT_MEMORY_STEPS,
    MAX_CELLS,
    MIN_MEMORY_MB,
)
from bench.reports.compare import Thresholds, compare_runs, format_comparison
from bench.reports.html_report import PAGE_NAME, report_page
from bench.reports.publish import publish_run
from bench.reports.report import report
from bench.store.files import atomic_write_text
from bench.store.results import RunDirectory
from bench.store.results_index import update_index_if_generated, write_index


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench",
        description="Benchmark ways of integrating and differentiating Neural ODEs.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p_list = sub.add_parser("list", help="list backends, suites, budgets and plugin load errors")
    p_list.set_defaults(func=cmd_list)

    p_run = sub.add_parser("run", help="run suites x backends x seeds, one process per cell")
    p_run.add_argument("--suite", default=None, help="suite name(s), comma-separated, or 'all' "
                       "(default)")
    p_run.add_argument("--backends", "--plugins", dest="backends", default=None,
                       help="backend name(s), comma-separated, or 'all' (default), each with "
                       "parameters if wanted: 'torch-adjoint[solver=bosh3,rtol=1e-6]'; a list "
                       "makes a grid: 'torch-direct[rtol=[1e-3,1e-5]]' (see `bench list`); "
                       "--plugins is the same option")
    p_run.add_argument("--backend-set", dest="backend_set", action="append", default=None,
                       metavar="KEY=VALUE", help="set a backend parameter on every selected "
                       "backend that has it (a list [v1,v2] makes a grid); repeatable")
    p_run.add_argument("--config", type=_path, default=None, metavar="FILE",
                       help="a run file (TOML: suites, backends with parameter grids, budget, "
                       "seeds, options); arguments given here win over it")
    p_run.add_argument("--budget", default=None,
                       help=f"budget name, e.g. smoke, quick, paper (default {DEFAULT_BUDGET})")
    p_run.add_argument("--device", default=None, help="cpu (default), cuda or auto")
    p_run.add_argument("--seeds", default=None, help="seeds: 0,1,2 or 0-4 (default 0)")
    p_run.add_argument("--out", type=_run_dir, default=None,
                       help="run directory (default: a new one under ./runs)")
    p_run.add_argument("--timeout", type=_positive_float, default=None, metavar="SECONDS",
                       help="per-cell time limit; a cell over it is stopped and marked timeout "
                       "(default: none, a cell runs as long as it needs; a run file's timeout_s)")
    p_run.add_argument("--max-memory-mb", type=_memory_mb, default=None, metavar="MIB",
                       help="per-cell limit on resident memory (the cell process and its "
                       f"children) in MiB, at least {MIN_MEMORY_MB:g}; a cell over it is stopped "
                       "and marked failed")
    p_run.add_argument("--threads", type=_threads, default=None,
                       help="CPU threads per cell (OMP/MKL for torch, XLA's pool for JAX); "
                       "default: the cores this process may use divided by --jobs (one cell "
                       "at a time: all of them; on Dask workers 1); auto (or 0): the "
                       "frameworks' own")
    p_run.add_argument("--resume", action="store_true",
                       help="with --out: run only the cells that have no 'ok' row there")
    p_run.add_argument("--jobs", type=_jobs, default=1, metavar="N",
                       help="cells at once (default 1: one after the other); locally each on "
                       "its own --threads cores (and, with --device cuda, its own GPU)")
    p_run.add_argument("--scheduler", default=None, metavar="tcp://HOST:PORT",
                       help="run the cells on this running Dask scheduler's workers (extra: "
                       "neural-ode-bench[dask])")
    p_run.add_argument("--cluster", default=None, metavar="NAME",
                       help="start a Dask cluster for the run: local, slurm, pbs, sge or lsf "
                       "(dask-jobqueue, set up in Dask's config file), --jobs workers")
    p_run.add_argument("--cluster-timeout", type=_positive_float, default=None,
                       metavar="SECONDS", help="with --cluster or --scheduler: end the run "
                       "with a message when no Dask worker has joined after SECONDS (default "
                       "300, or Dask's config key bench.cluster-timeout)")
    p_run.add_argument("--max-cells", type=_max_cells, default=None, metavar="N",
                       help=f"refuse a request that expands to more than N cells (default "
                       f"{MAX_CELLS:,}: a bigger grid is usually a typo)")
    p_run.add_argument("--data-dir", type=_path, default=None,
                       help="folder with a suite's data files (e.g. the four MNIST IDX files)")
    p_run.add_argument("--set", dest="options", type=_option, action="append", default=[],
                       metavar="KEY=VALUE", help="a suite option (see `bench list`)")
    add_compile_cache_arguments(p_run)
    p_run.set_defaults(func=cmd_run)

    p_mem = sub.add_parser(
        "memory", help="memory scaling study: training memory against solver steps L")
    p_mem.add_argument("--backends", "--plugins", dest="backends", default="all",
                       help="backend name(s), comma-separated, or 'all' (default); --plugins "
                       "is the same option")
    p_mem.add_argument("--backend-set", dest="backend_set", action="append", default=[],
                       metavar="KEY=VALUE", help="set a backend parameter on every selected "
                       "backend that has it; repeatable")
    p_mem.add_argument("--steps", default=",".join(map(str, DEFAULT_MEMORY_STEPS)),
                       help="solver steps L to measure: positive integers, 8,16,32 or a range "
                       "(default 8,16,...,512)")
    p_mem.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    p_mem.add_argument("--out", type=_run_dir, default=None,
                       help="run directory (default: a new one under ./runs)")
    p_mem.add_argument("--timeout", type=_positive_float, default=None, metavar="SECONDS",
                       help="per-measurement time limit (default: none, a measurement runs as "
                       "long as it needs)")
    p_mem.add_argument("--max-memory-mb", type=_memory_mb, default=None, metavar="MIB",
                       help="per-measurement limit on resident memory in MiB, at least "
                       f"{MIN_MEMORY_MB:g}")
    p_mem.add_argument("--threads", type=_threads, default=1,
                       help="CPU threads per measurement (OMP/MKL/XLA); default 1, pinned like "
                       "bench run's; auto (or 0): the frameworks' own")
    p_mem.add_argument("--resume", action="store_true",
                       help="with --out: measure only what has no 'ok' row there")
    p_mem.add_argument("--set", dest="options", type=_option, action="append", default=[],
                       metavar="KEY=VALUE", help="a memory-scaling suite option (width, batch)")
    p_mem.add_argument("--max-cells", type=_max_cells, default=MAX_CELLS, metavar="N",
                       help=f"refuse more than N measurements (default {MAX_CELLS:,})")
    add_compile_cache_arguments(p_mem)
    p_mem.set_defaults(func=cmd_memory)

    p_report = sub.add_parser("report", help="print a run's table, or compare two runs")
    p_report.add_argument("runs", nargs="+", type=_path, metavar="RUN_DIR")
    p_report.add_argument("--format", default="markdown",
                          help="markdown (default), csv, latex, html (writes RUN_DIR/index.html, "
                          "a self-contained page)")
    p_report.add_argument("--out", type=_path, default=None, metavar="FILE",
                          help="--format html: the page to write (default RUN_DIR/index.html)")
    p_report.add_argument("--columns", default=None, metavar="A,B,C",
                          help="columns to show, in order (default: markdown the readable table, "
                          "latex the paper columns, csv every column; see --format csv)")
    p_report.set_defaults(func=cmd_report)

    p_cmp = sub.add_parser(
        "compare", help="gate NEW against BASE for CI: exit 1 when a figure moved beyond its "
        "tolerance or a cell is missing, 3 when only step times could not be judged")
    p_cmp.add_argument("base", type=_path, metavar="BASE")
    p_cmp.add_argument("new", type=_path, metavar="NEW")
    p_cmp.add_argument("--max-slowdown", type=float, default=1.10, metavar="RATIO",
                       help="fail when NEW's step time is over RATIO x BASE's, where both are "
                       "comparable: unflagged, same concurrency (default 1.10)")
    p_cmp.add_argument("--max-memory-growth", type=float, default=1.05, metavar="RATIO",
                       help="fail when NEW's peak memory is over RATIO x BASE's (default 1.05)")
    p_cmp.add_argument("--max-metric-change", type=float, default=None, metavar="X",
                       help="fail when the suite metric at the same seed is worse by more than X "
                       "(its unit; default: 1%% of BASE's; 0: any worse value)")
    p_cmp.add_argument("--max-count-change", type=float, default=0.01, metavar="FRACTION",
                       help="fail when an NFE or step count changes by more than FRACTION of "
                       "BASE's (default 0.01; 0: counts must match exactly)")
    p_cmp.add_argument("--max-grad-error-growth", type=float, default=1.10, metavar="RATIO",
                       help="fail when a gradient's relative error is over RATIO x BASE's "
                       "(default 1.10)")
    p_cmp.set_defaults(func=cmd_compare)

    p_idx = sub.add_parser(
        "index", help="write RESULTS_DIR/README.md, the index of its published folders")
    p_idx.add_argument("results", type=_path, metavar="RESULTS_DIR")
    p_idx.add_argument("--regenerate", action="store_true",
                       help="also rebuild every published folder's pages (results.md, a study's "
                       "table, index.html) from its sources (results.csv, NOTES.md, plots, "
                       "config and environment); prints the pages that changed")
    p_idx.add_argument("--check", action="store_true",
                       help="with --regenerate: write nothing, list the stale pages, exit 1 "
                       "when there are any")
    p_idx.add_argument("--plots", action="store_true",
                       help="with --regenerate: first redraw the plots drawn from the rows "
                       "alone (gradient study, work-precision)")
    p_idx.set_defaults(func=cmd_index)

    p_pub = sub.add_parser(
        "publish", help="copy a run's table (markdown + CSV), environment, config and plots "
        "into a results folder")
    p_pub.add_argument("run", type=_path, metavar="RUN_DIR")
    p_pub.add_argument("--to", type=_path, required=True, metavar="DIR",
                       help="destination, e.g. results/mnist-quick-cpu (must not exist)")
    p_pub.add_argument("--allow-flagged-times", action="store_true",
                       help="publish even when some cells' timings are flagged as not "
                       "comparable (NOTES.md then lists them); default: refuse")
    p_pub.set_defaults(func=cmd_publish)

    add_gradients_parser(sub, cmd_gradients)
    add_claims_parser(sub)
    return parser


def _finish(outcome: RunOutcome, results_line: str) -> int:
    """Print a session's outcome; the exit status (130 after an interruption)."""
    if outcome.interrupted:
        return 130
    print(outcome.table)
    print(results_line, file=sys.stderr)
    for line in outcome.warnings:
        print(line, file=sys.stderr)
    counts = {s: sum(r.status == s for r in outcome.rows)
              for s in dict.fromkeys(r.status for r in outcome.rows)}
    print("cells: " + ", ".join(f"{n} {s}" for s, n in counts.items()), file=sys.stderr)
    return 1 if outcome.failed else 0


def cmd_run(args: argparse.Namespace, registry: Registry) -> int:
    request = run_request(args, registry)
    session = RunSession(registry, request, _selection(), compile_cache=compile_cache_of(args))
    if request.scheduler or request.cluster:  # before the run directory is made
        from bench.engine.dask_engine import cluster_timeout, require

        require(request.cluster, request.scheduler)
        with cluster_timeout(args.cluster_timeout):
            outcome = session.run()
    else:
        if args.cluster_timeout is not None:
            raise BenchError("--cluster-timeout is for runs on Dask (--cluster or --scheduler)")
        outcome = session.run()
    path = outcome.run_dir.path
    return _finish(outcome, f"results: {path}  (bench report {path} --format csv)")


def cmd_gradients(args: argparse.Namespace, registry: Registry) -> int:
    outcome = run_study(args, registry, _selection())
    return _finish(outcome, f"results: {outcome.run_dir.path}/gradients.md, gradients.csv and "
                            "<suite>_scale<k>_gradient_error.png")


def cmd_memory(args: argparse.Namespace, registry: Registry) -> int:
    outcome = RunSession(registry, memory_request(args, registry), _selection(),
                         compile_cache=compile_cache_of(args)).memory_study()
    return _finish(outcome, f"results: {outcome.run_dir.path}")


def cmd_list(args: argparse.Namespace, registry: Registry) -> int:
    broken: dict[str, list[str]] = {}  # plugin -> what of it raised
    print("Backends:")
    if not registry.backends:
        print("  (none)")
    for name, b in sorted(registry.backends.items()):
        for line in lines_or_broken("backend", name, functools.partial(backend_lines, name, b),
                                     broken, registry):
            print(line)
    print("Suites:")
    if not registry.suites:
        print("  (none)")
    for name, s in sorted(registry.suites.items()):
        for line in lines_or_broken("suite", name, functools.partial(suite_lines, name, s),
                                     broken, registry):
            print(line)
    print("Plugins:")
    clashes = {plugin: [f"{kind} {name!r} also registered by "
                        + ", ".join(repr(o) for o in owners if o != plugin)
                        for (kind, name), owners in sorted(registry.clashes.items())
                        if plugin in owners]
               for plugin in {o for owners in registry.clashes.values() for o in owners}}
    for p in registry.plugins:
        line = f"  {p.name:<22} {p.source}" + (f"  ERROR: {p.error}" if p.error else "")
        line += "".join(f"  CLASH: {clash}" for clash in clashes.get(p.name, []))
        print(line + "".join(f"  BROKEN: {problem}" for problem in broken.get(p.name, [])))
    for kind, name in sorted(registry.clashes):  # using such a name is an error: say so loudly
        print(f"bench: ERROR: {registry.duplicate_name(kind, name)}", file=sys.stderr)
    unmatched = registry.unmatched_plugin_names()
    if unmatched is not None:
        available = ", ".join(registry.available_plugin_names()) or "(none)"
        raw = os.environ.get(LOAD_PLUGINS_ENV, "")
        what = (f"{', '.join(map(repr, unmatched))} matched no plugin" if unmatched
                else "names no plugin (unset it to load them all)")
        close = [m for name in unmatched for m in difflib.get_close_matches(
            name, registry.available_plugin_names(), n=1, cutoff=0.5)]
        if close:
            what += f" (did you mean {', '.join(map(repr, close))}?)"
        print(f"bench: {LOAD_PLUGINS_ENV}={raw!r}: {what}. Available plugins: {available}",
              file=sys.stderr)
        if not registry.plugins:
            return 2
    return 0


def cmd_report(args: argparse.Namespace, registry: Registry) -> int:
    columns = ([c.strip() for c in args.columns.split(",") if c.strip()]
               if args.columns is not None else None)
    if columns is not None and not columns:
        raise BenchError("--columns: no column given (e.g. --columns suite,backend,nfe_forward)")
    if args.format == "html":
        page = report_page([str(p) for p in args.runs], columns)
        out = args.out if args.out is not None else args.runs[0] / PAGE_NAME
        try:
            atomic_write_text(out, page)  # whole, never through a link
        except OSError as exc:
            raise BenchError(f"cannot write {str(out)!r}: {exc.strerror or exc}") from None
        print(out)
        return 0
    if args.out is not None:
        raise BenchError("--out is for --format html (the other formats print the table)")
    sys.stdout.write(report([str(p) for p in args.runs], args.format, columns))
    return 0


def cmd_publish(args: argparse.Namespace, registry: Registry) -> int:
    rows = RunDirectory.open(args.run).rows()
    if not any(r.status == "ok" for r in rows):
        counts = ", ".join(f"{sum(r.status == s for r in rows)} {s}"
                           for s in dict.fromkeys(r.status for r in rows)) or "no rows"
        raise BenchError(f"{str(args.run)!r} has no 'ok' row ({counts}): nothing to publish; "
                         "finish its cells first (bench run --resume --out RUN_DIR)")
    written = publish_run(args.run, args.to, allow_flagged_times=args.allow_flagged_times)
    index = update_index_if_generated(args.to.parent)
    for path in written + ([index] if index else []):
        print(path)
    return 0


def cmd_compare(args: argparse.Namespace, registry: Registry) -> int:
    thresholds = Thresholds(args.max_slowdown, args.max_memory_growth, args.max_metric_change,
                            args.max_count_change, args.max_grad_error_growth)
    comparison = compare_runs(args.base, args.new, thresholds)
    sys.stdout.write(format_comparison(comparison))
    return comparison.exit_status


def cmd_index(args: argparse.Namespace, registry: Registry) -> int:
    if not args.regenerate:
        if args.check or args.plots:
            raise BenchError("--check and --plots go with --regenerate")
        print(write_index(args.results))
        return 0
    from bench.cli.regenerate import regenerate

    stale = regenerate(args.results, check=args.check, plots=args.plots)
    for path in stale:
        print(f"{'stale' if args.check else 'rewritten'}: {path}")
    if not stale:
        print(f"every page under {args.results} is as its sources make it")
    return 1 if args.check and stale else 0


def _selection() -> PluginSelection:
    return PluginSelection.from_environment()


def _stop_on_sigterm() -> None:
    """SIGTERM (a batch scheduler, `kill`) stops a run like Ctrl-C: the running cell is ended,
    every finished row is kept."""
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def main(argv: Sequence[str] | None = None) -> int:
    _stop_on_sigterm()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        needs_plugins = args.command not in ("report", "publish", "compare", "index")
        registry = Registry.load(_selection()) if needs_plugins else None
        return args.func(args, registry)
    except BenchError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `bench report ... | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

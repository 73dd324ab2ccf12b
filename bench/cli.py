"""The ``bench`` command: list, run, memory, report, compare, publish, index."""

from __future__ import annotations

import argparse
import ast
import difflib
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.errors import BenchError, UnknownNameError
from bench.registry import LOAD_PLUGINS_ENV, PluginSelection, Registry

DEFAULT_BUDGET = "quick"
DEFAULT_MEMORY_STEPS = (8, 16, 32, 64, 128, 256, 512)


def _names(value: str, kind: str, choices: Sequence[str]) -> list[str]:
    """Parse ``all`` or a comma-separated list, checking each name."""
    if value.strip() == "all":
        if not choices:
            raise BenchError(f"--{kind} all: no {kind}s are loaded (see `bench list` and "
                             f"{LOAD_PLUGINS_ENV})")
        return list(choices)
    names = [n.strip() for n in value.split(",") if n.strip()]
    if not names:
        raise BenchError(f"no {kind} given")
    for name in names:
        if name not in choices:
            raise UnknownNameError(kind, name, choices)
    return list(dict.fromkeys(names))


#: The most values ``--seeds`` / ``--steps`` may expand to (each is at least one cell).
MAX_LIST_VALUES = 1000
#: The smallest ``--max-memory-mb``: below it no Python process can run, so it is a typo.
MIN_MEMORY_MB = 1.0


def parse_int_list(value: str, option: str, minimum: int = 0, limit: int = MAX_LIST_VALUES
                   ) -> list[int]:
    """Integers of ``option`` written as ``0,1,2`` or inclusive ranges ``0-4`` (mixed: ``0-2,7``),
    each at least ``minimum``, at most ``limit`` values in all (duplicates dropped, order kept).
    Negative numbers, reversed ranges and too many values raise :class:`BenchError` saying so."""
    valid = ("positive integers" if minimum == 1 else
             "non-negative integers" if minimum == 0 else f"integers >= {minimum}")
    example = f"e.g. {minimum},{minimum + 1},{minimum + 2} or a range {minimum}-{minimum + 4}"
    values: list[int] = []
    for raw in value.split(","):
        part = raw.strip()
        if not part:
            continue
        lo_text, sep, hi_text = part[1:].partition("-")
        lo_text = part[0] + lo_text
        try:
            lo = int(lo_text)
            hi = int(hi_text) if sep else lo
        except ValueError:
            raise BenchError(f"{option} {value!r}: {part!r} is not an integer or a range; "
                             f"expected {valid}, {example}") from None
        if lo < minimum or hi < minimum:
            raise BenchError(f"{option} {value!r}: {min(lo, hi)} is below {minimum}; "
                             f"expected {valid}, {example}")
        if hi < lo:
            raise BenchError(f"{option} {value!r}: the range {part} is reversed (write {hi}-{lo})")
        if hi - lo + 1 + len(values) > limit:
            raise BenchError(f"{option} {value!r}: more than {limit} values (each is at least "
                             "one cell); split the run")
        values.extend(range(lo, hi + 1))
    if not values:
        raise BenchError(f"{option} {value!r}: no value given; expected {valid}, {example}")
    return list(dict.fromkeys(values))


def _option(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE")
    key, raw = text.split("=", 1)
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    return key.strip(), value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def _threads(text: str) -> int:
    """A positive thread count, or ``auto`` / ``0``: the frameworks' own choice (stored as 0)."""
    if text.strip().lower() == "auto":
        return 0
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a thread count: give a positive integer, or auto (or 0) for the "
            "frameworks' own") from None
    if value < 0:
        raise argparse.ArgumentTypeError(
            f"{text!r} must be a positive integer, or auto (or 0) for the frameworks' own")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite positive number")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be positive")
    return value


def _memory_mb(text: str) -> float:
    value = _positive_float(text)
    if value < MIN_MEMORY_MB:
        raise argparse.ArgumentTypeError(
            f"{text!r} MiB is below the minimum of {MIN_MEMORY_MB:g} MiB (the limit is in MiB)")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench",
        description="Benchmark ways of integrating and differentiating Neural ODEs.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p_list = sub.add_parser("list", help="list backends, suites, budgets and plugin load errors")
    p_list.set_defaults(func=cmd_list)

    p_run = sub.add_parser("run", help="run suites x backends x seeds, one process per cell")
    p_run.add_argument("--suite", default="all", help="suite name(s), comma-separated, or 'all'")
    p_run.add_argument("--plugins", "--backends", dest="plugins", default="all",
                       help="backend name(s), comma-separated, or 'all' (default)")
    p_run.add_argument("--budget", default=DEFAULT_BUDGET,
                       help=f"budget name, e.g. smoke, quick, paper (default {DEFAULT_BUDGET})")
    p_run.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    p_run.add_argument("--seeds", default="0", help="seeds: 0,1,2 or 0-4 (default 0)")
    p_run.add_argument("--out", type=Path, default=None,
                       help="run directory (default: a new one under ./runs)")
    p_run.add_argument("--timeout", type=_positive_float, default=None, metavar="SECONDS",
                       help="per-cell time limit; a cell over it is stopped and marked timeout")
    p_run.add_argument("--max-memory-mb", type=_memory_mb, default=None, metavar="MIB",
                       help="per-cell limit on resident memory (the cell process and its "
                       f"children) in MiB, at least {MIN_MEMORY_MB:g}; a cell over it is stopped "
                       "and marked failed")
    p_run.add_argument("--threads", type=_threads, default=1,
                       help="CPU threads per cell (OMP/MKL for torch, XLA's pool for JAX); "
                       "default 1, pinned for comparable CPU timings; auto (or 0): the "
                       "frameworks' own")
    p_run.add_argument("--resume", action="store_true",
                       help="with --out: run only the cells that have no 'ok' row there")
    p_run.add_argument("--data-dir", type=Path, default=None,
                       help="folder with a suite's data files (e.g. the four MNIST IDX files)")
    p_run.add_argument("--set", dest="options", type=_option, action="append", default=[],
                       metavar="KEY=VALUE", help="a suite option (see `bench list`)")
    p_run.set_defaults(func=cmd_run)

    p_mem = sub.add_parser(
        "memory", help="memory scaling study: training memory against solver steps L")
    p_mem.add_argument("--plugins", "--backends", dest="plugins", default="all",
                       help="backend name(s), comma-separated, or 'all' (default)")
    p_mem.add_argument("--steps", default=",".join(map(str, DEFAULT_MEMORY_STEPS)),
                       help="solver steps L to measure: positive integers, 8,16,32 or a range "
                       "(default 8,16,...,512)")
    p_mem.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    p_mem.add_argument("--out", type=Path, default=None,
                       help="run directory (default: a new one under ./runs)")
    p_mem.add_argument("--timeout", type=_positive_float, default=None, metavar="SECONDS",
                       help="per-measurement time limit")
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
    p_mem.set_defaults(func=cmd_memory)

    p_report = sub.add_parser("report", help="print a run's table, or compare two runs")
    p_report.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR")
    p_report.add_argument("--format", default="markdown",
                          help="markdown (default), csv, latex, html (writes RUN_DIR/index.html, "
                          "a self-contained page)")
    p_report.add_argument("--out", type=Path, default=None, metavar="FILE",
                          help="--format html: the page to write (default RUN_DIR/index.html)")
    p_report.add_argument("--columns", default=None, metavar="A,B,C",
                          help="columns to show, in order (default: markdown the readable table, "
                          "latex the paper columns, csv every column; see --format csv)")
    p_report.set_defaults(func=cmd_report)

    p_cmp = sub.add_parser(
        "compare", help="compare NEW with BASE for CI: exit 1 when a threshold is crossed")
    p_cmp.add_argument("base", type=Path, metavar="BASE")
    p_cmp.add_argument("new", type=Path, metavar="NEW")
    p_cmp.add_argument("--max-slowdown", type=float, default=1.10, metavar="RATIO",
                       help="fail when NEW's step time is over RATIO x BASE's (default 1.10)")
    p_cmp.add_argument("--max-memory-growth", type=float, default=1.05, metavar="RATIO",
                       help="fail when NEW's peak memory is over RATIO x BASE's (default 1.05)")
    p_cmp.add_argument("--max-metric-change", type=float, default=None, metavar="X",
                       help="fail when the suite metric is worse by more than X (its unit; "
                       "default: not checked)")
    p_cmp.set_defaults(func=cmd_compare)

    p_idx = sub.add_parser(
        "index", help="write RESULTS_DIR/README.md, the index of its published folders")
    p_idx.add_argument("results", type=Path, metavar="RESULTS_DIR")
    p_idx.set_defaults(func=cmd_index)

    p_pub = sub.add_parser(
        "publish", help="copy a run's table (markdown + CSV), environment, config and plots "
        "into a results folder")
    p_pub.add_argument("run", type=Path, metavar="RUN_DIR")
    p_pub.add_argument("--to", type=Path, required=True, metavar="DIR",
                       help="destination, e.g. results/mnist-quick-cpu (must not exist)")
    p_pub.set_defaults(func=cmd_publish)
    return parser


def _start_run(args: argparse.Namespace, registry: Registry, suites: list[str],
               backends: list[str], budget: str, extra: dict[str, Any]) -> Any:
    """Create (or, with --resume, reopen) and lock the run directory; record config and env."""
    from bench.environment import capture_environment
    from bench.results import RunDirectory, now_iso

    if args.resume:
        if args.out is None:
            raise BenchError("--resume needs --out RUN_DIR (the run to finish)")
        fresh = not args.out.exists() or (args.out.is_dir() and not any(args.out.iterdir()))
        run_dir = RunDirectory.create(args.out) if fresh else RunDirectory.open(args.out)
    else:
        run_dir = RunDirectory.create(args.out, label="-".join(suites))
    run_dir.check_writable()  # before any cell runs: a measured row must have a place to go
    run_dir.lock()
    config = {
        "command": args.command, "suites": suites, "backends": backends, "budget": budget,
        "device": args.device, "timeout_s": args.timeout, "max_memory_mb": args.max_memory_mb,
        "threads": args.threads,
        "plugins_loaded": [p.name for p in registry.plugins if not p.error],
        "started_at": now_iso(), "command_line": sys.argv, **extra,
    }
    try:
        if run_dir.read_json("config.json") is None:
            run_dir.write_json("config.json", config)
        run_dir.append_jsonl("invocations.jsonl", json.dumps(config, default=str))
        run_dir.write_json("environment.json", capture_environment())
    except OSError as exc:  # e.g. a read-only file in a resumed run: no cell has run yet
        run_dir.unlock()
        where = exc.filename or run_dir.path
        raise BenchError(f"cannot record the run's configuration in {str(run_dir.path)!r}: "
                         f"{exc.strerror or exc} ({where}); make the run directory writable or "
                         "choose another --out") from None
    print(f"run directory: {run_dir.path}", file=sys.stderr)
    return run_dir


def _runner(args: argparse.Namespace, registry: Registry, run_dir: Any) -> Any:
    from bench.runner import Runner

    limit = int(args.max_memory_mb * 1024 * 1024) if args.max_memory_mb else None
    return Runner(registry, _selection(), run_dir, timeout_s=args.timeout,
                  max_memory_bytes=limit, threads=args.threads or None)


def _run_cells(args: argparse.Namespace, registry: Registry, run_dir: Any, cells: list[Any]
               ) -> list[Any] | None:
    """Run the cells into ``run_dir``; the latest row of each, or None after Ctrl-C."""
    runner = _runner(args, registry, run_dir)
    try:
        runner.run(cells, resume=args.resume)
    except KeyboardInterrupt:
        return None
    finally:
        run_dir.unlock()
    ids = {c.cell_id for c in cells}
    saved = [r for r in run_dir.rows() if r.cell_id in ids]
    unsaved = {r.cell_id: r for r in runner.unsaved_rows}
    args.unsaved_rows = len(unsaved)
    if unsaved:
        print(f"bench: error: {len(unsaved)} rows could not be written to "
              f"{run_dir.path / 'rows.jsonl'}; they are printed above as JSON", file=sys.stderr)
    return [r for r in saved if r.cell_id not in unsaved] + list(unsaved.values())


def _status_exit(rows: list[Any], unsaved_rows: int = 0) -> int:
    counts = {s: sum(r.status == s for r in rows) for s in dict.fromkeys(r.status for r in rows)}
    print("cells: " + ", ".join(f"{n} {s}" for s, n in counts.items()), file=sys.stderr)
    return 1 if counts.get("failed") or counts.get("timeout") or unsaved_rows else 0


def plan_memory(args: argparse.Namespace, registry: Registry
                ) -> tuple[str, list[str], list[int], dict[str, Any], list[Any]]:
    """``bench memory``'s arguments checked and expanded into cells (nothing is written or run):
    (budget, backends, steps, options, cells)."""
    from bench.memory import SUITE_NAME
    from bench.runner import expand

    if SUITE_NAME not in registry.suites:
        raise BenchError(f"the {SUITE_NAME!r} suite is not loaded (see `bench list`); it comes "
                         "with the built-in plugins (bench.suites.memory_scaling)")
    suite = registry.suite(SUITE_NAME)
    budget = next(iter(suite.budgets))
    backends = _names(args.plugins, "backend", sorted(registry.backends))
    steps = parse_int_list(args.steps, "--steps", minimum=1)
    options = dict(args.options)
    if "steps" in options:
        raise BenchError("set L with --steps, not --set steps=...")
    cells = [cell for L in steps for cell in expand(
        registry, [SUITE_NAME], backends, budget, [0], args.device, {**options, "steps": L})]
    cells.sort(key=lambda c: (dict(c.options)["steps"], c.backend))  # interleave backends
    return budget, backends, steps, options, cells


def cmd_memory(args: argparse.Namespace, registry: Registry) -> int:
    from bench.memory import SUITE_NAME, plot_scaling, scaling_table
    from bench.report import render
    from bench.results import rows_to_frame

    budget, backends, steps, options, cells = plan_memory(args, registry)
    _check_data(registry, cells)
    run_dir = _start_run(args, registry, [SUITE_NAME], backends, budget,
                         {"steps": steps, "options": options})
    rows = _run_cells(args, registry, run_dir, cells)
    if rows is None:
        return 130
    frame = rows_to_frame(rows)
    frame.to_csv(run_dir.path / "memory_measurements.csv", index=False)
    claims = {name: getattr(registry.backends[name], "memory_claim", None) for name in backends}
    table = scaling_table(frame, {k: v for k, v in claims.items() if v})
    table.to_csv(run_dir.path / "memory_scaling.csv", index=False)
    text = render(table, "markdown") if not table.empty else "(no successful measurements)\n"
    (run_dir.path / "memory_scaling.md").write_text(text)
    if not table.empty:
        plot_scaling(frame, str(run_dir.path / "memory_scaling.png"),
                     f"training memory vs solver steps ({args.device})")
    print(text)
    print(f"results: {run_dir.path}", file=sys.stderr)
    return _status_exit(rows, args.unsaved_rows)


def cmd_list(args: argparse.Namespace, registry: Registry) -> int:
    print("Backends:")
    if not registry.backends:
        print("  (none)")
    for name, b in sorted(registry.backends.items()):
        missing = b.check_available()
        state = f"  [unavailable: {missing}]" if missing else ""
        print(f"  {name:<22} {b.framework:<6} {b.gradient_method:<22} {b.solver:<8}{state}")
        if b.description:
            print(f"  {'':<22} {b.description}")
    print("Suites:")
    if not registry.suites:
        print("  (none)")
    for name, s in sorted(registry.suites.items()):
        print(f"  {name:<22} metric {s.metric_name} ({s.metric_direction} is better); "
              f"frameworks: {', '.join(s.frameworks)}")
        if s.description:
            print(f"  {'':<22} {s.description}")
        for budget in s.budgets.values():
            print(f"    budget {budget.name:<10} {budget.description}")
            tolerances = s.budget_tolerances(budget)
            if tolerances:
                print(f"    {'':<17} solver tolerances {tolerances}: they replace each "
                      "adaptive backend's own (recorded in every row's rtol/atol)")
        for key in s.options:
            spec = s.option_spec(key)
            kind = getattr(spec.type, "__name__", str(spec.type))
            print(f"    option {key}={spec.default!r}  ({kind}; valid: {spec.describe_valid()})"
                  + (f"  {spec.help}" if spec.help else ""))
    print("Plugins:")
    for p in registry.plugins:
        print(f"  {p.name:<22} {p.source}" + (f"  ERROR: {p.error}" if p.error else ""))
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


def plan_run(args: argparse.Namespace, registry: Registry
             ) -> tuple[list[str], list[str], list[int], dict[str, Any], list[Any]]:
    """``bench run``'s names, seeds and options checked and expanded into cells (nothing is
    written or run): (suites, backends, seeds, options, cells)."""
    from bench.runner import expand

    suites = _names(args.suite, "suite", sorted(registry.suites))
    if args.suite.strip() == "all":
        suites = _suites_with_budget(registry, suites, args.budget)
    backends = _names(args.plugins, "backend", sorted(registry.backends))
    options = dict(args.options)
    if args.data_dir is not None:
        options["data_dir"] = str(args.data_dir)
    elif args.resume and args.out is not None and "data_dir" not in options:
        earlier = _recorded_data_dir(args.out)  # a resumed run finds its data where it did
        if earlier is not None:
            options["data_dir"] = earlier
    seeds = parse_int_list(args.seeds, "--seeds", minimum=0)
    cells = expand(registry, suites, backends, args.budget, seeds, args.device, options)
    return suites, backends, seeds, options, cells


def _recorded_data_dir(run: Path) -> str | None:
    """The ``--data-dir`` a run was started with (config.json), if that folder still exists."""
    try:
        config = json.loads((run / "config.json").read_text())
        folder = config.get("options", {}).get("data_dir")
    except (OSError, ValueError, AttributeError):
        return None
    return folder if isinstance(folder, str) and Path(folder).is_dir() else None


def cmd_run(args: argparse.Namespace, registry: Registry) -> int:
    from bench.report import render, table_frame
    from bench.results import rows_to_frame

    suites, backends, seeds, options, cells = plan_run(args, registry)
    _check_data(registry, cells)
    run_dir = _start_run(args, registry, suites, backends, args.budget,
                         {"seeds": seeds, "options": options})
    rows = _run_cells(args, registry, run_dir, cells)
    if rows is None:
        return 130
    table = render(table_frame(rows_to_frame(rows)), "markdown")
    try:
        (run_dir.path / "report.md").write_text(table)
    except OSError as exc:  # the rows are saved (or printed); the table is printed below
        print(f"warning: could not write {run_dir.path / 'report.md'}: {exc}", file=sys.stderr)
    print(table)
    print(f"results: {run_dir.path}  (bench report {run_dir.path} --format csv)",
          file=sys.stderr)
    _warn_timing(rows)
    _write_plots(run_dir, registry)
    return _status_exit(rows, args.unsaved_rows)


def _warn_timing(rows: list[Any]) -> None:
    """Name, at the end of a run, the cells whose timings may not be comparable."""
    flagged = [r for r in rows if getattr(r, "timing_flag", False)]
    if not flagged:
        return
    print(f"warning: the timings of {len(flagged)} cell(s) may not be comparable (column "
          "timing_warning; rerun them on a quiet machine, with --threads pinned):",
          file=sys.stderr)
    for row in flagged:
        print(f"  {row.cell_id}: {row.timing_warning}", file=sys.stderr)


def _suites_with_budget(registry: Registry, suites: list[str], budget: str) -> list[str]:
    """``--suite all``: the suites that have ``budget``; the others are named on stderr."""
    kept = [name for name in suites if budget in registry.suite(name).budgets]
    left_out = [name for name in suites if name not in kept]
    if not kept:
        have = sorted({b for name in suites for b in registry.suite(name).budgets})
        raise UnknownNameError("budget of any loaded suite", budget, have)
    if left_out:
        detail = "; ".join(f"{name} has {', '.join(registry.suite(name).budgets)}"
                           for name in left_out)
        print(f"--suite all: left out {', '.join(left_out)} (no budget {budget!r}: {detail})",
              file=sys.stderr)
    return kept


def _check_data(registry: Registry, cells: list[Any]) -> None:
    """Each suite's data, checked once in the parent before any cell starts (a suite may
    download it here); a missing dataset is one whole message with its remedy, exit 2."""
    checked: set[tuple[str, tuple[tuple[str, Any], ...]]] = set()
    for cell in cells:
        key = (cell.suite, cell.options)
        if key in checked:
            continue
        checked.add(key)
        problem = registry.suite(cell.suite).check_data(dict(cell.options))
        if problem:
            raise BenchError(f"{problem}\nNo cell was run.")


def _write_plots(run_dir: Any, registry: Registry) -> None:
    try:
        from bench.plots import plot_run

        plot_run(run_dir.path)
    except ImportError:
        pass
    except Exception as exc:  # plots never lose results
        print(f"warning: could not draw plots: {exc}", file=sys.stderr)


def cmd_report(args: argparse.Namespace, registry: Registry) -> int:
    from bench.report import report

    columns = ([c.strip() for c in args.columns.split(",") if c.strip()]
               if args.columns is not None else None)
    if columns is not None and not columns:
        raise BenchError("--columns: no column given (e.g. --columns suite,backend,nfe_forward)")
    if args.format == "html":
        from bench.html_report import PAGE_NAME

        page = report([str(p) for p in args.runs], args.format, columns)
        out = args.out if args.out is not None else args.runs[0] / PAGE_NAME
        try:
            out.write_text(page, encoding="utf-8")
        except OSError as exc:
            raise BenchError(f"cannot write {str(out)!r}: {exc.strerror or exc}") from None
        print(out)
        return 0
    if args.out is not None:
        raise BenchError("--out is for --format html (the other formats print the table)")
    sys.stdout.write(report([str(p) for p in args.runs], args.format, columns))
    return 0


def cmd_publish(args: argparse.Namespace, registry: Registry) -> int:
    from bench.results import publish_run
    from bench.results_index import update_index_if_generated

    written = publish_run(args.run, args.to)
    index = update_index_if_generated(args.to.parent)
    for path in written + ([index] if index else []):
        print(path)
    return 0


def cmd_compare(args: argparse.Namespace, registry: Registry) -> int:
    from bench.compare import Thresholds, compare_runs, format_findings

    thresholds = Thresholds(args.max_slowdown, args.max_memory_growth, args.max_metric_change)
    findings, notes = compare_runs(args.base, args.new, thresholds)
    sys.stdout.write(format_findings(findings, notes))
    return 1 if any(f.verdict == "FAIL" for f in findings) else 0


def cmd_index(args: argparse.Namespace, registry: Registry) -> int:
    from bench.results_index import write_index

    print(write_index(args.results))
    return 0


def _selection() -> PluginSelection:
    return PluginSelection.from_environment()


def _stop_on_sigterm() -> None:
    """SIGTERM (a batch scheduler, `kill`) stops a run like Ctrl-C: the running cell is ended,
    every finished row is kept."""
    import signal

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

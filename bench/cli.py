"""The ``bench`` command: ``list``, ``run``, ``report``."""

from __future__ import annotations

import argparse
import ast
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.errors import BenchError, UnknownNameError
from bench.registry import PluginSelection, Registry

DEFAULT_BUDGET = "quick"


def _names(value: str, kind: str, choices: Sequence[str]) -> list[str]:
    """Parse ``all`` or a comma-separated list, checking each name."""
    if value.strip() == "all":
        if not choices:
            raise BenchError(f"--{kind} all: no {kind}s are loaded (see `bench list`)")
        return list(choices)
    names = [n.strip() for n in value.split(",") if n.strip()]
    if not names:
        raise BenchError(f"no {kind} given")
    for name in names:
        if name not in choices:
            raise UnknownNameError(kind, name, choices)
    return list(dict.fromkeys(names))


def _seeds(value: str) -> list[int]:
    """``0,1,2`` or a range ``0-4`` (inclusive)."""
    seeds: list[int] = []
    try:
        for part in value.split(","):
            part = part.strip()
            if "-" in part[1:]:
                lo, hi = part.split("-", 1)
                seeds.extend(range(int(lo), int(hi) + 1))
            elif part:
                seeds.append(int(part))
    except ValueError:
        raise BenchError(f"--seeds {value!r}: expected integers like 0,1,2 or a range 0-4") from None
    if not seeds:
        raise BenchError("--seeds: no seed given")
    return list(dict.fromkeys(seeds))


def _option(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE")
    key, raw = text.split("=", 1)
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    return key.strip(), value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be positive")
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
    p_run.add_argument("--max-memory-mb", type=_positive_float, default=None,
                       help="per-cell address-space limit (RLIMIT_AS) in MiB")
    p_run.add_argument("--resume", action="store_true",
                       help="with --out: run only the cells that have no 'ok' row there")
    p_run.add_argument("--data-dir", type=Path, default=None,
                       help="folder with a suite's data files (e.g. the four MNIST IDX files)")
    p_run.add_argument("--set", dest="options", type=_option, action="append", default=[],
                       metavar="KEY=VALUE", help="a suite option (see `bench list`)")
    p_run.set_defaults(func=cmd_run)

    p_report = sub.add_parser("report", help="print a run's table, or compare two runs")
    p_report.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR")
    p_report.add_argument("--format", default="markdown", help="markdown (default), csv, latex")
    p_report.set_defaults(func=cmd_report)
    return parser


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
        for key, default in s.options.items():
            print(f"    option {key}={default!r}")
    print("Plugins:")
    for p in registry.plugins:
        print(f"  {p.name:<22} {p.source}" + (f"  ERROR: {p.error}" if p.error else ""))
    return 0


def cmd_run(args: argparse.Namespace, registry: Registry) -> int:
    from bench.environment import capture_environment
    from bench.report import render, table_frame
    from bench.results import RunDirectory, now_iso, rows_to_frame
    from bench.runner import Runner, expand

    suites = _names(args.suite, "suite", sorted(registry.suites))
    backends = _names(args.plugins, "backend", sorted(registry.backends))
    options = dict(args.options)
    if args.data_dir is not None:
        options["data_dir"] = str(args.data_dir)
    cells = expand(registry, suites, backends, args.budget, _seeds(args.seeds), args.device,
                   options)
    if args.resume:
        if args.out is None:
            raise BenchError("--resume needs --out RUN_DIR (the run to finish)")
        run_dir = RunDirectory.open(args.out) if args.out.exists() else RunDirectory.create(
            args.out)
    else:
        run_dir = RunDirectory.create(args.out, label="-".join(suites))
    run_dir.lock()
    config = {
        "suites": suites, "backends": backends, "budget": args.budget,
        "seeds": _seeds(args.seeds), "device": args.device, "timeout_s": args.timeout,
        "max_memory_mb": args.max_memory_mb, "options": options,
        "plugins_loaded": [p.name for p in registry.plugins if not p.error],
        "started_at": now_iso(), "command_line": sys.argv,
    }
    if run_dir.read_json("config.json") is None:
        run_dir.write_json("config.json", config)
    run_dir.append_jsonl("invocations.jsonl", json.dumps(config, default=str))
    run_dir.write_json("environment.json", capture_environment())
    print(f"run directory: {run_dir.path}", file=sys.stderr)
    runner = Runner(
        registry, _selection(), run_dir, timeout_s=args.timeout,
        max_memory_bytes=int(args.max_memory_mb * 1024 * 1024) if args.max_memory_mb else None,
    )
    try:
        runner.run(cells, resume=args.resume)
    except KeyboardInterrupt:
        return 130
    finally:
        run_dir.unlock()
    rows = [r for r in run_dir.rows() if r.cell_id in {c.cell_id for c in cells}]
    table = render(table_frame(rows_to_frame(rows)), "markdown")
    (run_dir.path / "report.md").write_text(table)
    print(table)
    print(f"results: {run_dir.path}  (bench report {run_dir.path} --format csv)",
          file=sys.stderr)
    _write_plots(run_dir, registry)
    counts = {s: sum(r.status == s for r in rows) for s in dict.fromkeys(r.status for r in rows)}
    print("cells: " + ", ".join(f"{n} {s}" for s, n in counts.items()), file=sys.stderr)
    return 1 if counts.get("failed") or counts.get("timeout") else 0


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

    sys.stdout.write(report([str(p) for p in args.runs], args.format))
    return 0


def _selection() -> PluginSelection:
    return PluginSelection.from_environment()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        registry = Registry.load(_selection()) if args.command in ("list", "run") else None
        return args.func(args, registry)
    except BenchError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `bench report ... | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""``bench claims``: the command line of the claims (the judging and the tables are
:mod:`bench.reports.claims`; the claims themselves are plugins, :mod:`bench.claims` the
built-in ones). With ``--run`` it first runs, through ``bench run``'s, ``bench memory``'s and
``bench gradients``' own sessions, the cells the selected claims need, into one run directory."""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import html
import sys
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

from bench.cli.arguments import _path, _positive_float
from bench.core.claims import AbstractClaim, Need
from bench.core.errors import BenchError
from bench.core.registry import PluginSelection, Registry
from bench.reports.claims import (
    FORMATS,
    Source,
    claims_page,
    comparison_records,
    flips,
    judge_sources,
    load_source,
    matrix_records,
    render_records,
    summary_line,
    timing_records,
    verdict_records,
    version_records,
)

#: ``--run``'s budget when none is given: seconds per cell.
DEFAULT_RUN_BUDGET = "smoke"


def add_parser(sub: Any) -> None:
    """Add the ``claims`` subcommand to ``bench``'s subparsers."""
    p = sub.add_parser(
        "claims", help="judge published claims (papers, issues) on run or published folders: "
        "a verdict per claim; with --base, exit 1 when a claim that held in BASE fails")
    p.add_argument("paths", nargs="*", type=_path, metavar="PATH",
                   help="run directories or published results folders (results/*), or folders "
                   "of them (each counts as one)")
    p.add_argument("--base", type=_path, action="append", default=[], metavar="BASE",
                   help="compare: the folders the claims are judged on first (repeatable); exit "
                   "1 when a claim that held there fails in PATH")
    p.add_argument("--claims", default=None, metavar="NAMES",
                   help="claim names, comma-separated, shell patterns allowed ('memory-*'); "
                   "default: every registered claim (see --list)")
    p.add_argument("--per-folder", action="store_true",
                   help="one column per PATH (e.g. one per library version) instead of one "
                   "verdict over all of them")
    p.add_argument("--format", default="markdown", choices=FORMATS,
                   help="markdown (default), csv, or html (one self-contained page)")
    p.add_argument("--publish", type=_path, default=None, metavar="DIR",
                   help="with --per-folder: publish the folders into DIR (a new results "
                   "folder): one published run per folder (flagged timings allowed and listed) "
                   "and the tables as claims.md and CSV (bench index --regenerate keeps them)")
    p.add_argument("--list", action="store_true",
                   help="list the registered claims with their sources and the cells they need")
    p.add_argument("--run", action="store_true",
                   help="first run the cells the selected claims need (into --out), then judge")
    p.add_argument("--budget", default=DEFAULT_RUN_BUDGET,
                   help=f"--run: the suites' budget (default {DEFAULT_RUN_BUDGET}); a claim "
                   "that needs another (paper) is skipped unless asked for by name here")
    p.add_argument("--out", type=_path, default=None, metavar="DIR",
                   help="--run: the run directory (default: runs/claims-<budget>-<time>); "
                   "cells already 'ok' there are not run again")
    p.add_argument("--backends", default=None, metavar="NAMES",
                   help="--run: run only these backends of the claims' cells (comma-separated "
                   "names), e.g. the ones a library version under test provides")
    p.add_argument("--data-dir", type=_path, default=None,
                   help="--run: folder with a suite's data files (MNIST's four IDX files)")
    p.add_argument("--timeout", type=_positive_float, default=None, metavar="SECONDS",
                   help="--run: per-cell time limit")
    p.set_defaults(func=cmd_claims)


def select(registry: Registry, names: str | None) -> list[AbstractClaim]:
    """The claims named (patterns allowed), in registration order; every claim when None."""
    if names is None:
        return list(registry.claims.values())
    wanted: list[str] = []
    for item in (n.strip() for n in names.split(",")):
        if not item:
            continue
        if any(c in item for c in "*?["):
            matched = [n for n in registry.claims if fnmatch.fnmatchcase(n, item)]
            if not matched:
                raise BenchError(f"--claims: {item!r} matches no claim; the claims are "
                                 f"{', '.join(registry.claims)}")
        else:
            matched = [registry.claim(item).name]
        wanted += [n for n in matched if n not in wanted]
    if not wanted:
        raise BenchError("--claims: no claim named (e.g. --claims 'memory-*,nfe-per-step')")
    return [registry.claims[n] for n in registry.claims if n in wanted]


def split_backends(text: str) -> list[str]:
    """``--backends`` text split on its top-level commas (a ``[...]`` grid stays whole)."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += char
    parts.append(current.strip())
    return [p for p in parts if p]


def merged_needs(claims: Sequence[AbstractClaim], budget: str, echo: Callable[[str], None],
                 only: Collection[str] | None = None) -> list[Need]:
    """The selected claims' needs at ``budget``, one per command line: needs that differ only
    in their backends are run together. A need of another fixed budget is left out, saying so;
    ``only``: the backend names to keep (a need left with none is dropped)."""
    merged: dict[tuple[Any, ...], Need] = {}
    for claim in claims:
        for need in claim.needs:
            if need.budget and need.budget != budget:
                echo(f"claims: {claim.name} needs budget {need.budget!r}, not run at {budget!r} "
                     f"(bench claims --run --budget {need.budget} --claims {claim.name})")
                continue
            if only is not None:
                kept = [b for b in split_backends(need.backends) if b.split("[")[0] in only]
                if not kept:
                    continue
                need = dataclasses.replace(need, backends=",".join(kept))
            need = dataclasses.replace(need, budget=need.budget or budget)
            key = (need.command, need.suite, need.budget, need.seeds, need.options, need.steps,
                   need.tolerances, need.scales)
            if key in merged:
                have = split_backends(merged[key].backends)
                extra = [b for b in split_backends(need.backends) if b not in have]
                need = dataclasses.replace(merged[key], backends=",".join(have + extra))
            merged[key] = need
    return list(merged.values())


def run_needs(registry: Registry, needs: Sequence[Need], out: Path, args: argparse.Namespace,
              selection: PluginSelection) -> list[str]:
    """Run every need into ``out`` (resuming it); the warnings of the runs."""
    from bench.commands.session import RunSession
    from bench.planning.request import RunRequest
    from bench.studies.gradient_study import study_request, write_outputs

    warnings: list[str] = []
    for need in needs:
        print(f"claims: running {need.describe()}", file=sys.stderr)
        common: dict[str, Any] = {"out": out, "resume": True, "timeout_s": args.timeout}
        if need.command == "memory":
            request = RunRequest.for_memory(registry, backends=need.backends,
                                            steps=need.steps or "8,16,32", **common)
            outcome = RunSession(registry, request, selection).memory_study()
        elif need.command == "gradients":
            request = study_request(registry, suites=need.suite, backends=need.backends,
                                    tolerances=need.tolerances, scales=need.scales or "1",
                                    seeds=need.seeds, options=dict(need.options), **common)
            session = RunSession(registry, request, selection)
            outcome = session.run_cells(session.start())
            if not outcome.interrupted:
                write_outputs(outcome.run_dir.path, outcome.rows, session.echo)
        else:
            request = RunRequest.for_run(registry, suites=need.suite, backends=need.backends,
                                         budget=need.budget or args.budget, seeds=need.seeds,
                                         options=list(need.options), data_dir=args.data_dir,
                                         **common)
            outcome = RunSession(registry, request, selection).run()
        if outcome.interrupted:
            raise KeyboardInterrupt
        warnings += list(outcome.warnings)
        bad = [r for r in outcome.rows if r.status not in ("ok", "unsupported")]
        warnings += [f"claims: {r.cell_id} {r.status}: {(r.error or '').splitlines()[:1]}"
                     for r in bad]
    return warnings


def sources(paths: Sequence[Path]) -> list[Source]:
    """The folders' rows; a plain file among them (``results/*`` holds README.md) is skipped
    with a warning."""
    found = []
    for path in paths:
        if path.is_file():
            print(f"warning: {str(path)!r} is a file, not a folder: skipped", file=sys.stderr)
            continue
        found.append(load_source(path))
    if not found:
        raise BenchError(f"no folder among {', '.join(map(str, paths))}")
    return found


def list_claims(claims: Sequence[AbstractClaim]) -> str:
    lines = []
    for claim in claims:
        lines += [f"{claim.name}", f"  {claim.statement}", f"  source: {claim.source}"]
        lines += [f"  measured by: {need.describe()}" for need in claim.needs]
    return "\n".join(lines) + "\n"


def cmd_claims(args: argparse.Namespace, registry: Registry) -> int:
    claims = select(registry, args.claims)
    if args.list:
        sys.stdout.write(list_claims(claims))
        return 0
    paths: list[Path] = list(args.paths)
    if args.run:
        out = args.out or Path("runs") / f"claims-{args.budget}-{time.strftime('%Y%m%d-%H%M%S')}"
        only = None if args.backends is None else {
            b.strip() for b in args.backends.split(",") if b.strip()}
        unknown = sorted((only or set()) - set(registry.backends))
        if unknown:
            raise registry.unknown_name("backend", unknown[0])
        needs = merged_needs(claims, args.budget, lambda m: print(m, file=sys.stderr), only)
        if not needs:
            raise BenchError("--run: the selected claims need no cell of the backends given")
        try:
            warnings = run_needs(registry, needs, out, args, PluginSelection.from_environment())
        except KeyboardInterrupt:
            return 130
        for line in warnings:
            print(line, file=sys.stderr)
        if out.exists():
            paths.append(out)
    elif any(v is not None for v in (args.out, args.data_dir, args.timeout, args.backends)):
        raise BenchError("--out, --backends, --data-dir and --timeout are for --run")
    if not paths:
        raise BenchError("give run or published folders to judge the claims on (e.g. "
                         "bench claims results/*), or --run to measure them first")
    if args.per_folder and args.base:
        raise BenchError("--per-folder and --base are two different tables: choose one")
    if args.publish is not None:
        if not args.per_folder or args.format != "markdown":
            raise BenchError("--publish writes the --per-folder tables (markdown and CSV): "
                             "give --per-folder, without --format")
        # imported here, not with the module: the page makers cost `bench claims` 0.27 s of
        # start-up that only --publish uses
        from bench.reports.claims_publish import publish_claims
        from bench.store.results_index import update_index_if_generated

        folders = [p for p in paths if not p.is_file()]
        for path in publish_claims(claims, folders, args.publish):
            print(f"wrote {path}", file=sys.stderr)
        index = update_index_if_generated(args.publish.parent)
        if index is not None:
            print(f"index: {index}", file=sys.stderr)
    found = sources(paths)
    new = judge_sources(claims, found)
    if args.base:
        base = judge_sources(claims, sources(args.base))
        write(args.format, "bench claims: BASE against NEW",
              [(f"BASE: {summary_line(base)}; NEW: {summary_line(new)}",
                comparison_records(base, new))])
        regressions = flips(base, new)
        for before, after in regressions:
            print(f"bench: claim {after.claim.name!r} held in BASE "
                  f"({before.judgement.reason}) and fails now: {after.judgement.reason}",
                  file=sys.stderr)
        print(f"BASE: {summary_line(base)}; NEW: {summary_line(new)}", file=sys.stderr)
        return 1 if regressions else 0
    if args.per_folder:
        tables = [(summary_line(new), matrix_records(new))]
        if args.format != "csv":  # one table a CSV
            tables += [("The libraries' versions in each folder (environment.json)",
                        version_records(found)),
                       ("Compile and step time per folder and backend: medians over its "
                        "training cells; flagged: cells timed on a loaded host",
                        timing_records(found))]
    else:
        records = verdict_records(new)
        if args.format == "markdown":  # the statement is in --list
            records = [{k: v for k, v in r.items() if k != "statement"} for r in records]
        tables = [(summary_line(new), records)]
    write(args.format, "bench claims", tables)
    print(summary_line(new), file=sys.stderr)
    return 0


def write(fmt: str, title: str, tables: Sequence[tuple[str, list[dict[str, Any]]]]) -> None:
    """Print the tables: markdown ones one after the other under their captions (the first
    table bare), CSV the first only, HTML as one self-contained page."""
    if fmt == "csv":
        sys.stdout.write(render_records(tables[0][1], fmt))
    elif fmt == "html":
        sys.stdout.write(claims_page(title, [("", f"<p>{html.escape(caption)}</p>\n"
                                              + render_records(records, fmt))
                                             for caption, records in tables if records]))
    else:
        parts = [render_records(tables[0][1], fmt)]
        parts += [f"\n{caption}:\n\n{render_records(records, fmt)}"
                  for caption, records in tables[1:] if records]
        sys.stdout.write("".join(parts))

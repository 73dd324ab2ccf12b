"""``bench gradients``: the gradient study's command line (the logic is
:mod:`bench.studies.gradient_study`; the session and runner are ``bench run``'s)."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from bench.cli.arguments import (
    _memory_mb,
    _option,
    _positive_float,
    _run_dir,
    _threads,
    add_compile_cache_arguments,
    compile_cache_of,
)
from bench.core.registry import PluginSelection, Registry

if TYPE_CHECKING:
    from bench.commands.session import RunOutcome


def add_parser(sub: Any, func: Callable[[argparse.Namespace, Registry], int]) -> None:
    """Add the ``gradients`` subcommand to ``bench``'s subparsers."""

    p = sub.add_parser(
        "gradients", help="gradient study: gradient error against backward NFE and time over a "
        "tolerance grid, at the initial weights and at weights scaled by k (no training)")
    p.add_argument("--suite", default="memory-scaling",
                   help="suite name(s), comma-separated (default memory-scaling)")
    p.add_argument("--backends", "--plugins", dest="backends", default="all",
                   help="backend configurations, e.g. 'torch-adjoint[adjoint_norm=[default,"
                   "seminorm]],rknet' (grids as in bench run), or 'all' (default)")
    p.add_argument("--backend-set", dest="backend_set", action="append", default=[],
                   metavar="KEY=VALUE", help="set a backend parameter on every selected "
                   "backend that has it (lists make grids); repeatable")
    p.add_argument("--tolerances", default=None, metavar="TOLS",
                   help="rtol = atol grid for every adaptive backend that sets neither, e.g. "
                   "1e-3,1e-4,1e-5 (default: each backend's own)")
    p.add_argument("--scales", default="1,4",
                   help="factors k the weights are scaled by, e.g. 1,4 (default)")
    p.add_argument("--seeds", default="0", help="seeds (initial weights): 0,1 or 0-2")
    p.add_argument("--budget", default=None,
                   help="the suite budget that sets the probe batch (default: smoke, else the "
                   "suite's first)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    p.add_argument("--out", type=_run_dir, default=None,
                   help="run directory (default: a new one under ./runs)")
    p.add_argument("--timeout", type=_positive_float, default=None, metavar="SECONDS",
                   help="per-point time limit (default: none, a point runs as long as it "
                   "needs)")
    p.add_argument("--max-memory-mb", type=_memory_mb, default=None, metavar="MIB",
                   help="per-point limit on resident memory in MiB")
    p.add_argument("--threads", type=_threads, default=1,
                   help="CPU threads per point; default 1; auto (or 0): the frameworks' own")
    p.add_argument("--resume", action="store_true",
                   help="with --out: measure only the points that have no 'ok' row there")
    p.add_argument("--set", dest="options", type=_option, action="append", default=[],
                   metavar="KEY=VALUE", help="a suite option (see `bench list`)")
    add_compile_cache_arguments(p)
    p.set_defaults(func=func)


def run_study(args: argparse.Namespace, registry: Registry, selection: PluginSelection
              ) -> RunOutcome:
    """``bench gradients``: the request checked, every point run, the table and plots
    written; the outcome for the CLI to print."""
    from bench.commands.session import RunSession
    from bench.studies.gradient_study import study_request, write_outputs

    request = study_request(
        registry, suites=args.suite, backends=args.backends, backend_set=args.backend_set,
        tolerances=args.tolerances, scales=args.scales, seeds=args.seeds, device=args.device,
        budget=args.budget, options=dict(args.options), out=args.out, resume=args.resume,
        timeout_s=args.timeout, max_memory_mb=args.max_memory_mb, threads=args.threads)
    session = RunSession(registry, request, selection, compile_cache=compile_cache_of(args))
    outcome = session.run_cells(session.start())
    if not outcome.interrupted:
        table = write_outputs(outcome.run_dir.path, outcome.rows, session.echo)
        outcome = dataclasses.replace(outcome, table=table)
    return outcome

"""The requests of ``bench run`` and ``bench memory`` from their arguments (and a run file):
checked, nothing written or run."""

from __future__ import annotations

import argparse
from typing import Any

from bench.cli.arguments import RUN_DIR_ROOM, path_problem
from bench.core.errors import BenchError
from bench.core.registry import Registry
from bench.planning.request import DEFAULT_BUDGET, MAX_CELLS, RunRequest
from bench.planning.run_config import load_run_config, origin


def run_request(args: argparse.Namespace, registry: Registry, check: bool = True
                ) -> RunRequest:
    """``bench run``'s arguments as a checked request (nothing is written or run); ``check``:
    the suites' data too."""
    settings: dict[str, Any] = {"suites": "all", "backends": "all", "budget": DEFAULT_BUDGET,
                                "seeds": "0", "device": "cpu", "threads": None,
                                "max_cells": MAX_CELLS}
    from_file: dict[str, Any] = {}
    if getattr(args, "config", None) is not None:
        from_file = load_run_config(args.config)
        settings.update(from_file)
    given = {"suites": args.suite, "backends": args.backends, "budget": args.budget,
             "seeds": args.seeds, "device": args.device, "threads": args.threads,
             "data_dir": args.data_dir, "out": args.out, "timeout_s": args.timeout,
             "max_memory_mb": args.max_memory_mb, "backend_set": args.backend_set,
             "max_cells": getattr(args, "max_cells", None)}
    given = {key: value for key, value in given.items() if value is not None}
    settings.update(given)
    # suite options: the file's, then --set's over them
    settings["options"] = [*settings.get("options", []), *args.options]
    if args.options:
        given["options"] = args.options
    # a setting from the file is named with the file and key in its errors
    origins = {key: origin(args.config, key) for key in from_file if key not in given}
    for key in ("out", "data_dir"):  # the file's paths: checked as --out would be
        room = RUN_DIR_ROOM if key == "out" else 0
        problem = path_problem(from_file[key], room) if key in origins else None
        if problem:
            raise BenchError(f"{origins[key]}: {problem}")
    return RunRequest.for_run(registry, resume=args.resume, check=check, jobs=args.jobs,
                              scheduler=args.scheduler, cluster=args.cluster,
                              cluster_timeout_s=getattr(args, "cluster_timeout", None) or 300.0,
                              origins=origins, **settings)


def memory_request(args: argparse.Namespace, registry: Registry, check: bool = True
                   ) -> RunRequest:
    """``bench memory``'s arguments as a checked request (nothing is written or run)."""
    return RunRequest.for_memory(
        registry, backends=args.backends, steps=args.steps, device=args.device,
        options=args.options, out=args.out, resume=args.resume, timeout_s=args.timeout,
        max_memory_mb=args.max_memory_mb, threads=args.threads, check=check,
        backend_set=args.backend_set, max_cells=args.max_cells)

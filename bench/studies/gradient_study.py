"""``bench gradients``: the gradient study. No training: for each backend configuration (a
tolerance grid through :mod:`bench.planning.backend_grid`) on each suite's initial weights, and on
the weights scaled by each ``--scales`` factor k (a harder, stiffer variant), the gradient's error
against the float64 reference (:mod:`bench.core.gradients`), its NFE and its time. Each point is a
cell of its own (:class:`bench.planning.cells.CellSpec` with ``mode="gradients"``), run in its own
process by the engine like a training cell (:mod:`bench.engine.gradient_cell`), so a crash loses no
other point; the output is ``gradients.csv``, ``gradients.md`` and one log-log plot per suite and
scale (:mod:`bench.studies.gradient_plots`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.core.errors import BenchError
from bench.core.registry import Registry
from bench.core.rows import ResultRow
from bench.planning.backend_grid import (
    BackendChoice,
    configurations,
    expand_backends,
)
from bench.planning.cells import CellSpec

STUDY_COLUMNS = ("suite", "backend", "gradient_method", "grad_scale", "rtol", "atol",
                 "adjoint_norm", "seed", "status", "grad_rel_error", "grad_cosine",
                 "grad_nfe_forward", "grad_nfe_backward", "grad_time_s", "grad_backward_time_s",
                 "grad_ref_nfe", "notes", "error")


# -- the request ----------------------------------------------------------------------------------


def parse_floats(text: str, option: str) -> list[float]:
    """Comma-separated positive numbers (``1,4`` or ``1e-3,1e-4``)."""
    values = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            value = float(part)
        except ValueError:
            raise BenchError(f"{option} {text!r}: {part!r} is not a number; write e.g. "
                             "1,4 or 1e-3,1e-4") from None
        if not value > 0 or value == float("inf"):
            raise BenchError(f"{option} {text!r}: {part} must be a positive finite number")
        values.append(value)
    if not values:
        raise BenchError(f"{option} {text!r}: no value given")
    return list(dict.fromkeys(values))


def with_tolerances(registry: Registry, choices: Sequence[BackendChoice],
                    tolerances: Sequence[float]) -> list[BackendChoice]:
    """Each choice at rtol = atol = each of ``tolerances`` where its backend declares both and
    the choice sets neither (fixed-step backends and choices with their own stay as they are):
    the grid of :mod:`bench.planning.backend_grid` with atol tied to rtol."""
    if not tolerances:
        return list(choices)
    out: list[BackendChoice] = []
    for choice in choices:
        backend = registry.backend(choice.name)
        given = dict(choice.params)
        if not {"rtol", "atol"} <= {spec.name for spec in backend.parameters} or \
                {"rtol", "atol"} & set(given):
            out.append(choice)
            continue
        grid = {**{k: [v] for k, v in given.items()}, "rtol": [float(t) for t in tolerances],
                "atol": [float(t) for t in tolerances]}
        for params in configurations(backend, grid, {"atol": "rtol"}):
            backend.configure(dict(params))  # checks the combination (raises BenchError)
            out.append(BackendChoice(choice.name, params))
    return list(dict.fromkeys(out))


def study_cells(registry: Registry, suites: Sequence[str], choices: Sequence[BackendChoice],
                scales: Sequence[float], seeds: Sequence[int], device: str,
                budget: str | None, options: Mapping[str, Any]) -> list[CellSpec]:
    """The study's points: per suite (its ``gradient_study_options`` under the user's options;
    ``budget`` or the suite's ``smoke``, else its first budget), scale, backend and seed."""
    from bench.planning.request import expand

    cells: list[CellSpec] = []
    for name in suites:
        suite = registry.suite(name)
        chosen = budget or ("smoke" if "smoke" in suite.budgets else next(iter(suite.budgets)))
        given = {**suite.gradient_study_options,
                 **{k: v for k, v in options.items() if k in suite.options}}
        for scale in scales:
            for cell in expand(registry, [name], list(choices), chosen, seeds, device, given):
                cells.append(dataclasses.replace(cell, mode="gradients", scale=float(scale)))
    unknown = [k for k in options if not any(k in registry.suite(s).options for s in suites)]
    if unknown:
        raise BenchError(f"--set {unknown[0]}: no selected suite has this option")
    return cells


def study_request(registry: Registry, *, suites: str, backends: str,
                  backend_set: Sequence[str] = (), tolerances: str | None = None,
                  scales: str = "1,4", seeds: str = "0", device: str = "cpu",
                  budget: str | None = None, options: Mapping[str, Any] | None = None,
                  out: Path | None = None, resume: bool = False, timeout_s: float | None = None,
                  max_memory_mb: float | None = None, threads: int = 1) -> Any:
    """``bench gradients``' request (a :class:`bench.planning.request.RunRequest` of command
    ``gradients``), checked and expanded; nothing is written or run."""
    from bench.planning.request import RunRequest, check_data, parse_int_list, parse_names

    suite_names = parse_names(suites, "suite", sorted(registry.suites),
                              registry.failed_plugins())
    choices = expand_backends(registry, backends, backend_set)
    tols = parse_floats(tolerances, "--tolerances") if tolerances else []
    choices = with_tolerances(registry, choices, tols)
    scale_list = parse_floats(scales, "--scales")
    seed_list = parse_int_list(seeds, "--seeds", minimum=0)
    cells = study_cells(registry, suite_names, choices, scale_list, seed_list, device, budget,
                        dict(options or {}))
    check_data(registry, cells)
    return RunRequest("gradients", tuple(suite_names), tuple(c.label for c in choices),
                      budget or "", tuple(seed_list), device, dict(options or {}), tuple(cells),
                      out, resume, timeout_s, max_memory_mb, threads, (),
                      tuple(backend_set))


# -- output ---------------------------------------------------------------------------------------


def study_table(rows: Sequence[ResultRow]) -> Any:
    """The study's table (a DataFrame): one row per point, suite, scale and line grouped."""
    from bench.store.results import rows_to_frame

    frame = rows_to_frame(list(rows))
    if frame.empty:
        return frame
    frame = frame.sort_values(["suite", "grad_scale", "backend", "rtol"],
                              ascending=[True, True, True, False], na_position="last")
    return frame[[c for c in STUDY_COLUMNS if c in frame.columns]]


def write_outputs(path: Path, rows: Sequence[ResultRow], echo: Callable[[str], None]) -> str:
    """``gradients.csv``, ``gradients.md`` and the plots in ``path``; returns the table."""
    from bench.reports.report import render
    from bench.store.files import atomic_write_text
    from bench.store.formats import csv_text
    from bench.studies.gradient_plots import plot_study

    table = study_table(rows)
    if table.empty:
        text = "(no measurements)\n"
    else:
        atomic_write_text(path / "gradients.csv", csv_text(table))
        text = render(table, "markdown")
    atomic_write_text(path / "gradients.md", text)
    try:
        plot_study(list(rows), path)
    except ImportError:
        pass
    except Exception as exc:  # noqa: BLE001 - plots never lose results
        echo(f"warning: could not draw the gradient plots: {exc}")
    return text

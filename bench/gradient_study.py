"""``bench gradients``: the gradient study. No training: for each backend configuration (a
tolerance grid through :mod:`bench.backend_grid`) on each suite's initial weights, and on the
weights scaled by each ``--scales`` factor k (a harder, stiffer variant), the gradient's error
against the float64 reference (:mod:`bench.gradients`), its NFE and its time. Each point is a cell
of its own (:class:`bench.cell.CellSpec` with ``mode="gradients"``), run in its own process by
:class:`bench.runner.Runner` like a training cell, so a crash loses no other point; the output is
``gradients.csv``, ``gradients.md`` and one log-log plot per suite and scale
(:mod:`bench.gradient_plots`).
"""

from __future__ import annotations

import dataclasses
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.backend_grid import BackendChoice, configurations, configured_backend, expand_backends
from bench.cell import (
    CellSpec,
    base_row,
    configuration_columns,
    gradient_key,
)
from bench.errors import BenchError
from bench.gradients import (
    GradientSetup,
    measure_study_point,
    no_reference_reason,
    reference_params,
)
from bench.interfaces import AbstractBackend, AbstractSuite, CellContext, solver_settings
from bench.registry import Registry
from bench.rows import ResultRow

DEFAULT_SCALES = (1.0, 4.0)
STUDY_COLUMNS = ("suite", "backend", "gradient_method", "grad_scale", "rtol", "atol",
                 "adjoint_norm", "seed", "status", "grad_rel_error", "grad_cosine",
                 "grad_nfe_forward", "grad_nfe_backward", "grad_time_s", "grad_backward_time_s",
                 "grad_ref_nfe", "notes", "error")


def gradient_setup(registry: Registry, backend: AbstractBackend, cache_dir: Path | None
                   ) -> GradientSetup | None:
    """The reference of ``backend``'s framework, configured (None where it names none or it
    cannot be loaded: a cell then measures no gradient columns)."""
    text = getattr(backend, "gradient_reference", None)
    if not text:
        return None
    try:
        choice = expand_backends(registry, text, echo=lambda _: None)[0]
        ref = configured_backend(registry, choice)
        params = {**dict(choice.params), **reference_params(ref)}
        ref = ref.configure(params) if params else ref
    except Exception:  # noqa: BLE001 - e.g. the reference's plugin is not loaded
        return None
    return GradientSetup(ref, cache_dir)


def run_gradient_cell(spec: CellSpec, backend: AbstractBackend, suite: AbstractSuite,
                      work_dir: Path, setup: GradientSetup | None,
                      log: Callable[[str], None] = print) -> ResultRow:
    """One point of the study (in the cell's process): build the task, measure, return the
    row. Exceptions become ``failed`` rows with ``error.log``."""
    started = time.perf_counter()
    reason = no_reference_reason(backend)
    if reason is None and setup is None:
        reason = f"no reference backend for {backend.framework} is loaded ({backend.name} " \
                 f"names {getattr(backend, 'gradient_reference', None)!r})"
    if reason:
        return base_row(spec, backend, suite, "unsupported", reason, grad_scale=spec.scale)
    fields: dict[str, Any] = {}
    try:
        device = backend.resolve_device(spec.device)
        fields["device"] = device
        ctx = CellContext(backend=backend, budget=suite.budgets[spec.budget], seed=spec.seed,
                          device=device, work_dir=work_dir,
                          options={**suite.options, **dict(spec.options)}, log=log)
        task = suite.build_task(ctx)
        if getattr(task, "solver", None):
            fields["solver"] = task.solver
        fields.update(solver_settings(backend, task))
        fields.update(configuration_columns(backend))
        fields["params"] = task.num_params()
        assert setup is not None
        fields.update(measure_study_point(task, backend, setup, gradient_key(spec, backend, suite),
                                          device, spec.scale))
        status, error = "ok", ""
    except Exception as exc:  # noqa: BLE001 - a failed point is a row
        (work_dir / "error.log").write_text(traceback.format_exc())
        status, error = "failed", f"{type(exc).__name__}: {exc}"
        fields.setdefault("grad_scale", spec.scale)
    fields["total_time_s"] = time.perf_counter() - started
    return base_row(spec, backend, suite, status, error, **fields)


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
    the grid of :mod:`bench.backend_grid` with atol tied to rtol."""
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
    from bench.request import expand

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
    """``bench gradients``' request (a :class:`bench.request.RunRequest` of command
    ``gradients``), checked and expanded; nothing is written or run."""
    from bench.request import RunRequest, check_data, parse_int_list, parse_names

    suite_names = parse_names(suites, "suite", sorted(registry.suites))
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
    from bench.results import rows_to_frame

    frame = rows_to_frame(list(rows))
    if frame.empty:
        return frame
    frame = frame.sort_values(["suite", "grad_scale", "backend", "rtol"],
                              ascending=[True, True, True, False], na_position="last")
    return frame[[c for c in STUDY_COLUMNS if c in frame.columns]]


def write_outputs(path: Path, rows: Sequence[ResultRow], echo: Callable[[str], None]) -> str:
    """``gradients.csv``, ``gradients.md`` and the plots in ``path``; returns the table."""
    from bench.gradient_plots import plot_study
    from bench.report import render

    table = study_table(rows)
    if table.empty:
        text = "(no measurements)\n"
    else:
        table.to_csv(path / "gradients.csv", index=False)
        text = render(table, "markdown")
    (path / "gradients.md").write_text(text)
    try:
        plot_study(list(rows), path)
    except ImportError:
        pass
    except Exception as exc:  # noqa: BLE001 - plots never lose results
        echo(f"warning: could not draw the gradient plots: {exc}")
    return text

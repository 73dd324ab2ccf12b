"""One point of the gradient study, run in the cell's own process (``mode="gradients"``): no
training; the task is built on the initial weights (times the cell's ``scale``) and the gradient's
error against the float64 reference of the backend's framework is measured
(:mod:`bench.core.gradients`). The study that plans these cells and writes their tables is
:mod:`bench.studies.gradient_study`.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.core.gradients import (
    GradientSetup,
    measure_study_point,
    no_reference_reason,
    reference_params,
)
from bench.core.interfaces import AbstractBackend, AbstractSuite, CellContext, solver_settings
from bench.core.registry import Registry
from bench.core.rows import ResultRow, Status
from bench.engine.cell import base_row, configuration_columns, gradient_key
from bench.engine.reference_cache import fingerprint, scope_programs
from bench.planning.backend_grid import configured_backend, expand_backends
from bench.planning.cells import CellSpec
from bench.store.files import atomic_write_text


def gradient_setup(registry: Registry, backend: AbstractBackend, cache_dir: Path | None,
                   outlives_run: bool = False, suite: AbstractSuite | None = None
                   ) -> GradientSetup | None:
    """The reference of ``backend``'s framework, configured (None where it names none or it
    cannot be loaded: a cell then measures no gradient columns). ``outlives_run``: the cache
    folder is shared by later runs (:func:`bench.engine.reference_cache.reference_folder`), so
    its keys hold the code's and libraries' fingerprint."""
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
    stamp = fingerprint(ref, suite) if outlives_run and cache_dir is not None else None
    return GradientSetup(ref, cache_dir, fingerprint=stamp)


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
        return base_row(spec, backend, suite, Status.UNSUPPORTED, reason, grad_scale=spec.scale)
    fields: dict[str, Any] = {}
    try:
        device = backend.resolve_device(spec.device)
        fields["device"] = device
        ctx = CellContext(backend=backend, budget=suite.budgets[spec.budget], seed=spec.seed,
                          device=device, work_dir=work_dir,
                          options={**suite.options, **dict(spec.options)}, log=log)
        scope_programs(spec, backend, suite)
        task = suite.build_task(ctx)
        if getattr(task, "solver", None):
            fields["solver"] = task.solver
        fields.update(solver_settings(backend, task))
        fields.update(configuration_columns(backend))
        fields["params"] = task.num_params()
        assert setup is not None
        fields.update(measure_study_point(task, backend, setup, gradient_key(spec, backend, suite),
                                          device, spec.scale))
        status, error = Status.OK, ""
    except Exception as exc:  # noqa: BLE001 - a failed point is a row
        atomic_write_text(work_dir / "error.log", traceback.format_exc())
        status, error = Status.FAILED, f"{type(exc).__name__}: {exc}"
        fields.setdefault("grad_scale", spec.scale)
    fields["total_time_s"] = time.perf_counter() - started
    return base_row(spec, backend, suite, status, error, **fields)

"""One cell (suite x backend x seed x budget x device): the measured training loop.

It runs in the cell's own process (:mod:`bench.engine.cell_process`). The loop is the same for every
framework: the first training step is the warm-up (its extra time is ``compile_time_s``), the
device is synchronised through the backend before every clock reading, the backend completes a
step's counts after its clock stopped, memory is measured by the backend's tracker in two phases
(first step; steady state, in untimed memory steps that also measure the bytes saved for
backward), and evaluation time is kept out of the training-step times. The gradient-accuracy
columns (:mod:`bench.core.gradients`) are measured after the final evaluation (``_final``, before
the memory steps, which train on) and on a freshly built task after everything else (the initial
weights), never inside a timed step.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import statistics
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.core.errors import BenchError
from bench.core.gradients import GradientSetup, measure_final_gradients, measure_initial_gradients
from bench.core.interfaces import (
    AbstractBackend,
    AbstractSuite,
    CellContext,
    Evaluation,
    StepStats,
    solver_settings,
)
from bench.core.measure import mean_or_none, median_or_none, percentile
from bench.core.rows import ResultRow, Status, metric_problem, now_iso
from bench.engine.phases import (
    CacheWatch,
    PhaseClock,
    nan_hint,
    note_nan_gradients,
    profile_loop,
)
from bench.engine.reference_cache import scope_programs
from bench.planning.cells import CellSpec
from bench.store.files import atomic_write_text


def base_row(spec: CellSpec, backend: AbstractBackend | None, suite: AbstractSuite | None,
             status: Status, error: str = "", **fields: Any) -> ResultRow:
    """A row with the identifying columns filled in."""
    return ResultRow(
        cell_id=spec.cell_id,
        suite=spec.suite,
        backend=spec.backend_label,
        backend_name=spec.backend,
        backend_params=dict(spec.backend_params),
        framework=getattr(backend, "framework", ""),
        gradient_method=getattr(backend, "gradient_method", ""),
        solver=fields.pop("solver", None) or getattr(backend, "solver", ""),
        device=fields.pop("device", spec.device),
        seed=spec.seed,
        budget=spec.budget,
        status=status,
        error=error,
        metric_name=getattr(suite, "metric_name", ""),
        metric_direction=getattr(suite, "metric_direction", "lower"),
        options=dict(spec.options),
        host_load_1m=fields.pop("host_load_1m", _load_average()),
        finished_at=now_iso(),
        **fields,
    )


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


#: Declared backend parameters that have their own row column (the others are in
#: ``backend_config``).
CONFIG_COLUMNS = ("adjoint_norm", "checkpoints", "first_step", "fixed_steps")


def configuration_columns(backend: AbstractBackend) -> dict[str, Any]:
    """The row's configuration columns: every declared parameter's effective value in
    ``backend_config``, and those of :data:`CONFIG_COLUMNS` in their own columns."""
    config = backend.configuration()
    columns: dict[str, Any] = {"backend_config": config}
    for name in CONFIG_COLUMNS:
        if name in config:
            value = config[name]
            columns[name] = value if value is None or name != "first_step" else str(value)
    if "fixed_steps" not in config and "steps" in config:  # rknet's, jax-rknet's
        columns["fixed_steps"] = config["steps"]
    return columns


def gradient_key(spec: CellSpec, backend: AbstractBackend, suite: AbstractSuite | None = None
                 ) -> dict[str, Any]:
    """What a cell's initial-weight reference gradient depends on (with the weights' hash):
    options that only say how the cell solves (the suite's ``solve_options``) are left out."""
    skip = {*spec.unidentifying, *getattr(suite, "solve_options", ())}
    return {"suite": spec.suite, "framework": backend.framework, "seed": spec.seed,
            "budget": spec.budget, "device": spec.device,
            "options": [[k, v] for k, v in spec.options if k not in skip]}


def check_support(backend: AbstractBackend, suite: AbstractSuite) -> str | None:
    """The reason a pair cannot run, or None."""
    missing = backend.check_available()
    if missing:
        return missing
    for support in (backend.supports(suite), suite.supports(backend)):
        if not support.ok:
            return support.reason
    return None


class _Diverged(Exception):
    pass


class _BadMetric(Exception):
    """An evaluation returned a metric that is not a finite number (the message says which)."""


def timed_step(task: Any, backend: AbstractBackend, device: str, step: int,
               clock_stopped: Callable[[], None] | None = None) -> tuple[StepStats, float]:
    """One training step as the harness measures it: synchronised before both clock readings;
    the backend completes the step's counts after the clock stopped (``clock_stopped`` is
    called in between: what the clock saw, e.g. its compilations, without the counting's)."""
    backend.synchronize(device)
    t0 = time.perf_counter()
    stats = task.train_step(step)
    backend.synchronize(device)
    seconds = time.perf_counter() - t0
    if clock_stopped is not None:
        clock_stopped()
    return backend.complete_step_stats(stats), seconds


def run_cell(spec: CellSpec, backend: AbstractBackend, suite: AbstractSuite, work_dir: Path,
             log: Callable[[str], None] = print,
             progress: Callable[[int, int, float], None] | None = None,
             gradients: GradientSetup | None = None,
             phases: PhaseClock | None = None) -> ResultRow:
    """Run one cell and return its row. Exceptions become ``failed`` rows. The pair's support
    is the caller's to check, once (:func:`check_support`; the runner does, in the parent).
    ``gradients``: measure the gradient-accuracy columns after everything else (None: not).
    ``phases``: where the cell's time goes (:mod:`bench.engine.phases`; the process's start
    and imports already in it), written to ``phases.json`` and the row's phase columns."""
    started = time.perf_counter()
    clock = phases if phases is not None else PhaseClock()
    try:
        with clock.phase("setup"):  # the framework's first import (torch: about 1 s)
            device = backend.resolve_device(spec.device)
    except BenchError as exc:
        return base_row(spec, backend, suite, Status.UNSUPPORTED, str(exc))
    fields: dict[str, Any] = {"device": device}
    try:
        ctx = CellContext(backend=backend, budget=suite.budgets[spec.budget], seed=spec.seed,
                          device=device, work_dir=work_dir,
                          options={**suite.options, **dict(spec.options)}, log=log)
        with clock.phase("setup"):
            fields["device_name"] = backend.device_name(device)
            scope_programs(spec, backend, suite)
            task = suite.build_task(ctx)
        if getattr(task, "solver", None):  # e.g. a fixed-step method instead of the default
            fields["solver"] = task.solver
        fields.update(solver_settings(backend, task))  # effective rtol/atol and their source
        fields.update(configuration_columns(backend))
        fields["params"] = task.num_params()

        def final_gradients() -> None:
            with clock.phase("gradient_probes"):
                measure_final_gradients(task, backend, gradients, device, fields,
                                        gradient_key(spec, backend, suite))

        status, error = _train_and_evaluate(task, backend, device, work_dir, fields, progress,
                                            final_gradients, clock)
        if status == Status.OK:  # after every other figure: nothing here can change one
            with clock.phase("gradient_probes"):
                measure_initial_gradients(lambda: suite.build_task(ctx), backend, gradients,
                                          gradient_key(spec, backend, suite), device, fields)
        note_nan_gradients(backend, fields)
    except _BadMetric as exc:
        status, error = Status.FAILED, str(exc)
    except Exception as exc:  # the row keeps what was measured before the failure
        atomic_write_text(work_dir / "error.log", traceback.format_exc())
        status, error = Status.FAILED, f"{type(exc).__name__}: {exc}"
    fields["total_time_s"] = time.perf_counter() - started
    fields.update(clock.columns())
    clock.write(work_dir, fields["total_time_s"],
                {"cell_id": spec.cell_id, "backend": spec.backend_label,
                 "framework": backend.framework})
    return base_row(spec, backend, suite, status, error, **fields)


def _train_and_evaluate(task: Any, backend: AbstractBackend, device: str, work_dir: Path,
                        fields: dict[str, Any],
                        progress: Callable[[int, int, float], None] | None,
                        after_evaluation: Callable[[], None] | None = None,
                        clock: PhaseClock | None = None) -> tuple[Status, str]:
    clock = clock if clock is not None else PhaseClock()
    n_steps = int(task.num_train_steps)
    if n_steps < 2:
        raise BenchError("a task needs at least 2 training steps (the first is the warm-up)")
    tracker = backend.memory_tracker(device)
    fields["peak_memory_method"] = tracker.method
    stats: list[StepStats] = []
    times: list[float] = []
    evals: list[dict[str, Any]] = []
    train_clock = 0.0
    status, error = Status.OK, ""
    caches = CacheWatch(backend, clock)

    def evaluate(step: int, final: bool) -> tuple[Evaluation, float]:
        backend.synchronize(device)
        t0 = time.perf_counter()
        task.prepare_evaluation(final=final)  # JIT compilation: timed apart, never as run time
        backend.synchronize(device)
        t1 = time.perf_counter()
        result = task.evaluate(final=final)
        backend.synchronize(device)
        seconds = time.perf_counter() - t1
        clock.add("eval_prepare", t1 - t0)
        clock.add("evaluation", seconds)
        problem = metric_problem(result.metrics)
        if problem:  # a metric is a finite number, or the cell has failed
            raise _BadMetric(problem + nan_hint(backend))
        evals.append({"step": step, "train_time_s": train_clock, "eval_time_s": seconds,
                      "eval_prepare_time_s": t1 - t0, "final": final, **dict(result.metrics)})
        return result, seconds

    def first_step_done() -> None:  # whether the warm-up's programs came from the caches
        caches.first_step_done(fields)

    try:
        for step in range(n_steps):
            if step == 0:
                tracker.reset()
                caches.first_step_starts()
            elif step == 1:
                fields["peak_memory_first_step_bytes"] = tracker.peak_bytes()
            s, seconds = timed_step(task, backend, device, step,
                                    first_step_done if step == 0 else None)
            train_clock += seconds
            stats.append(s)
            times.append(seconds)
            counting = backend.step_stats_problem(s, step)  # e.g. a block that counts no NFE
            if counting:
                raise BenchError(counting)
            if progress is not None:
                progress(step + 1, n_steps, s.loss)
            if not math.isfinite(s.loss):
                raise _Diverged(f"non-finite loss {s.loss} at step {step}{nan_hint(backend)}")
            if task.eval_every and (step + 1) % task.eval_every == 0 and step + 1 < n_steps:
                evaluate(step + 1, final=False)
    except _Diverged as exc:
        status, error = Status.DIVERGED, str(exc)
    finally:
        _fill_training_fields(fields, stats, times)
        compile_s = max(0.0, fields.get("compile_time_s") or 0.0)
        clock.add("compile", compile_s)
        clock.add("train_steps", sum(times) - compile_s)
        trace = {"steps": [{"step": i, "time_s": t, **dataclasses.asdict(s)}
                           for i, (s, t) in enumerate(zip(stats, times, strict=False))],
                 "evaluations": evals}
        atomic_write_text(work_dir / "trace.json", json.dumps(trace, default=float))
    if status == Status.OK:
        result, seconds = evaluate(n_steps, final=True)
        fields["eval_time_s"] = seconds
        fields["metrics"] = {**fields.get("metrics", {}), **result.metrics}
        fields["notes"] = result.notes
        trace["evaluations"] = evals
        atomic_write_text(work_dir / "trace.json", json.dumps(trace, default=float))
        with clock.phase("finish"):
            task.finish(work_dir, trace)
        if after_evaluation is not None:  # untimed, at the evaluated weights (gradient probe)
            after_evaluation()
        with clock.phase("memory_steps"):
            _measure_memory(task, backend, device, tracker, n_steps, fields)
        with clock.phase("loop_profile"):  # one more untimed step: the loop-time split
            step = n_steps + int(getattr(task, "memory_steps", 0) or 0) + 1
            split, reason = profile_loop(backend, device, lambda: task.train_step(step))
        fields.update(split)
        if reason:
            fields["notes"] = f"{fields.get('notes') or ''}; {reason}".lstrip("; ")
    caches.cell_done()
    return status, error


def _measure_memory(task: Any, backend: AbstractBackend, device: str, tracker: Any,
                    first_step: int, fields: dict[str, Any]) -> None:
    """``peak_memory_bytes``: the largest peak of ``task.memory_steps`` extra training steps
    (``task.memory_step``, after one unmeasured warm-up step in the same fresh thread), each its
    own phase, run after the final evaluation (so they change no metric) and after every timed
    step (so what the tracker and the task switch on for exact figures slows no timed step).
    ``saved_for_backward_bytes`` and the NFE of these steps come from the same steps; a task
    that measures no saved bytes there keeps its timed steps' figure.
    """
    count = int(getattr(task, "memory_steps", 0) or 0)
    if count <= 0:
        return
    memory_step = getattr(task, "memory_step", task.train_step)
    peaks: list[int] = []
    stats: list[StepStats] = []

    def measure() -> None:
        tracker.begin_memory_phase()
        # One unmeasured step first: a fresh thread's first step also pays for the thread's own
        # start-up (its malloc arena, the OpenMP team torch creates for each new calling
        # thread: torch-adjoint's memory study 7.7 MiB against 6.0 for the steps after it).
        # Nothing is trimmed after it: the measured steps start from the allocator's steady
        # state, as every step after the first does. A second trim here returned the pages of
        # free heap chunks that the next step refilled, and only the first measured step paid
        # for them (L = 512: torch-adjoint 6.58 and 5.96 MiB, diffrax-backsolve 6.72 and 6.14;
        # independent code 5.96 and 6.29, benchmarks/memory_independent.py).
        memory_step(first_step)
        backend.synchronize(device)
        for k in range(1, count + 1):
            backend.synchronize(device)
            tracker.reset()
            s = memory_step(first_step + k)
            backend.synchronize(device)
            peak = tracker.peak_bytes()
            if peak is not None:
                peaks.append(peak)
            stats.append(backend.complete_step_stats(s))

    try:
        _in_fresh_thread(measure)
    except Exception as exc:  # the measured metrics stand; say why memory is missing
        fields["notes"] = (f"{fields.get('notes') or ''}; memory steps failed: "
                           f"{type(exc).__name__}: {exc}").lstrip("; ")
    fields["peak_memory_bytes"] = max(peaks) if peaks else None
    saved = [s.saved_for_backward_bytes for s in stats if s.saved_for_backward_bytes is not None]
    if saved:
        fields["saved_for_backward_bytes"] = max(saved)
    for name in ("nfe_forward", "nfe_backward"):
        values = [getattr(s, name) for s in stats if getattr(s, name) is not None]
        fields[f"memory_step_{name}"] = max(values) if values else None


def _in_fresh_thread(fn: Callable[[], None]) -> None:
    """Run ``fn`` in a new thread and wait for it. glibc gives a new thread its own malloc arena,
    empty of the chunks that the timed steps freed in the main one: with the mmap threshold
    fixed, the memory steps' large tensors are then mapped and unmapped as they live and die, so
    the resident peak is what the step really held (memory study, torch-direct at L = 512:
    1060 MiB resident for 1025 MiB saved for backward; 2920 MiB in the main thread)."""
    error: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            error.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if error:
        raise error[0]


def _fill_training_fields(fields: dict[str, Any], stats: list[StepStats], times: list[float]
                          ) -> None:
    fields["train_steps"] = len(stats)
    steady = times[1:]
    median = median_or_none(steady)
    fields["train_step_time_s"] = median
    if steady:
        fields["train_step_time_mean_s"] = statistics.fmean(steady)
        fields["train_step_time_p90_s"] = percentile(steady, 90)
        fields["train_step_time_max_s"] = max(steady)
    if times and median is not None:  # signed: a first step faster than the median is negative
        fields["compile_time_s"] = times[0] - median
    for name in ("nfe_forward", "nfe_backward", "steps_accepted", "steps_rejected"):
        fields[name] = mean_or_none([getattr(s, name) for s in stats])
    # a task measuring saved bytes in its timed steps; the memory steps' figure replaces this
    saved = [s.saved_for_backward_bytes for s in stats if s.saved_for_backward_bytes is not None]
    fields["saved_for_backward_bytes"] = max(saved) if saved else None
    extra: dict[str, float] = {}
    for s in stats:
        for key, value in s.extra.items():
            extra[key] = max(extra.get(key, value), value)
    if extra:
        fields["metrics"] = {**extra, **fields.get("metrics", {})}


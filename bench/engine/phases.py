"""Where a cell's time goes, measured around (never inside) its timed steps.

A cell's wall time is split into phases (:class:`PhaseClock`): the process start (spawn, the
interpreter, the engine's own imports), the plugins' imports (the registry), the task's set-up
(data, model, framework imports), the warm-up step's extra time (compilation), the timed steps,
the evaluations (their JIT preparation apart), the suite's ``finish`` (plots), the gradient
probes, the memory steps and the loop-time profile. They go to the cell folder as
``phases.json`` and, the ones a user waits for, into the row (``startup_time_s``,
``setup_time_s``, ``eval_prepare_time_s``, ``gradient_probe_time_s``,
``memory_steps_time_s``).

Optional backend hooks (framework layers implement them; the core names no framework):

- ``compile_cache_counts()``: ``(requests, hits)`` of the persistent compilation cache in this
  process so far, or None when the framework has no such cache or it is off. The warm-up
  step's compilations are read around it: the row's ``compile_cache`` says ``hit``, ``miss``
  or ``partial`` (so that ``compile_time_s`` of a cache load is never taken for a compilation).
- ``program_cache_counts()``: the same for programs kept traced across runs
  (``(programs asked for, programs loaded)``, JAX: :mod:`bench.frameworks.jax._programs`): the
  row's ``program_cache``, read around the warm-up step like ``compile_cache``.
- ``program_scope(text)``: called before the task is built with the text that names the cell
  and its code (:func:`bench.engine.reference_cache.program_scope`), which a framework that keeps
  traced programs starts their keys with.
- ``nan_hint()``: what to add to the message of a NaN loss, metric or gradient error (JAX: a
  failed solve returns NaN while the compile cache is on).
- ``profile_solves(device)``: a context manager around one extra, untimed training step that
  yields a dict, filled when the block ends, with the forward solves' time (``solve_time_s``),
  the dynamics' evaluations' share of it (``dynamics_time_s``), their count (``nfe``) and the
  number of solves (``solves``); or ``reason`` when it could not profile. The row's
  ``solver_loop_time_s`` is the rest of the solve: the solver's own loop.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench.store.files import atomic_write_text

#: The phases of a cell, in the order they run (``phases.json`` lists them in this order).
PHASES = ("process_start", "imports", "setup", "compile", "train_steps", "eval_prepare",
          "evaluation", "finish", "gradient_probes", "memory_steps", "loop_profile")

#: The backend hook of the kept traced programs' counts (``compile_cache_counts``'s counterpart).
PROGRAMS = "program_cache_counts"

#: The row's columns that sum phases (column -> phases).
PHASE_COLUMNS = {
    "startup_time_s": ("process_start", "imports"),
    "setup_time_s": ("setup",),
    "eval_prepare_time_s": ("eval_prepare",),
    "gradient_probe_time_s": ("gradient_probes",),
    "memory_steps_time_s": ("memory_steps",),
}


class PhaseClock:
    """Wall time per phase of one cell (seconds, summed when a phase runs more than once)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.cache: dict[str, Any] = {}

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + max(0.0, float(seconds))

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the block as phase ``name`` (also when it raises)."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - t0)

    def columns(self) -> dict[str, float]:
        """The row's phase columns, for the phases that ran."""
        out: dict[str, float] = {}
        for column, names in PHASE_COLUMNS.items():
            ran = [self.seconds[n] for n in names if n in self.seconds]
            if ran:
                out[column] = sum(ran)
        return out

    def write(self, work_dir: Path, total_s: float, about: dict[str, str] | None = None
              ) -> None:
        """``phases.json``: ``about`` (the cell's id, backend, framework), every phase that ran,
        the rest of the cell's time (``other``), the total, and the compile cache's counts.
        Never fails the cell."""
        phases = {n: self.seconds[n] for n in PHASES if n in self.seconds}
        phases.update({n: s for n, s in self.seconds.items() if n not in phases})
        inside = sum(s for n, s in phases.items() if n not in ("process_start", "imports"))
        data = {**(about or {}), "phases_s": phases, "other_s": max(0.0, total_s - inside),
                "cell_total_s": total_s, "compile_cache": self.cache}
        with contextlib.suppress(OSError, TypeError, ValueError):
            atomic_write_text(work_dir / "phases.json", json.dumps(data, indent=1))


# -- the compile cache ----------------------------------------------------------------------------


def cache_counts(backend: Any, hook_name: str = "compile_cache_counts"
                 ) -> tuple[int, int] | None:
    """``(requests, hits)`` of the backend framework's persistent compilation cache (or with
    ``hook_name="program_cache_counts"``: its kept traced programs) so far in this process;
    None where it has none, it is off, or the hook fails."""
    hook: Callable[[], Any] | None = getattr(backend, hook_name, None)
    if hook is None:
        return None
    try:
        counts = hook()
    except Exception:  # noqa: BLE001 - a figure about the harness, never a failed cell
        return None
    if counts is None:
        return None
    requests, hits = counts
    return int(requests), int(hits)


def cache_delta(before: tuple[int, int] | None, after: tuple[int, int] | None
                ) -> dict[str, int] | None:
    """Compilations through the persistent cache between two :func:`cache_counts`, and how
    many of them hit (None: no counts)."""
    if before is None or after is None:
        return None
    return {"requests": after[0] - before[0], "hits": after[1] - before[1]}


def cache_state(backend: Any, before: tuple[int, int] | None,
                after: tuple[int, int] | None, hook_name: str = "compile_cache_counts") -> str:
    """The row's ``compile_cache`` for the compilations between two :func:`cache_counts`:
    ``hit`` (all loaded from the cache), ``miss`` (none), ``partial``, ``none`` (nothing went
    through the cache), ``off`` (the framework has a cache, switched off) or ``''`` (a
    framework without one)."""
    if before is None or after is None:
        return "off" if hasattr(backend, hook_name) else ""
    requests, hits = after[0] - before[0], after[1] - before[1]
    if requests <= 0:
        return "none"
    if hits >= requests:
        return "hit"
    return "miss" if hits <= 0 else "partial"


class CacheWatch:
    """A cell's compile cache and kept programs (the backend's ``compile_cache_counts`` and
    ``program_cache_counts`` hooks): counted from the cell's start and around its warm-up
    step, into the row (``compile_cache``, ``program_cache``) and ``phases.json``."""

    HOOKS = (("compile_cache_counts", "compile_cache", "first_step", "cell"),
             (PROGRAMS, "program_cache", "first_step_programs", "cell_programs"))

    def __init__(self, backend: Any, clock: PhaseClock):
        self.backend, self.clock = backend, clock
        self.start = self.before = self._counts()

    def _counts(self) -> dict[str, tuple[int, int] | None]:
        return {hook: cache_counts(self.backend, hook) for hook, *_ in self.HOOKS}

    def first_step_starts(self) -> None:
        self.before = self._counts()

    def first_step_done(self, fields: dict[str, Any]) -> None:
        after = self._counts()
        for hook, column, key, _ in self.HOOKS:
            fields[column] = cache_state(self.backend, self.before[hook], after[hook], hook)
            self.clock.cache[key] = cache_delta(self.before[hook], after[hook])

    def cell_done(self) -> None:
        after = self._counts()
        for hook, _, _, key in self.HOOKS:
            self.clock.cache[key] = cache_delta(self.start[hook], after[hook])


# -- the loop-time split --------------------------------------------------------------------------


def loop_split_columns(profile: dict[str, Any]) -> dict[str, float]:
    """``solve_time_s``, ``dynamics_time_s`` and ``solver_loop_time_s`` from a
    ``profile_solves`` result (empty when it measured nothing)."""
    solve, dynamics = profile.get("solve_time_s"), profile.get("dynamics_time_s")
    if not isinstance(solve, (int, float)) or not isinstance(dynamics, (int, float)):
        return {}
    if not (math.isfinite(solve) and math.isfinite(dynamics)) or solve <= 0:
        return {}
    return {"solve_time_s": float(solve), "dynamics_time_s": float(dynamics),
            "solver_loop_time_s": float(solve) - float(dynamics)}


def profile_loop(backend: Any, device: str, step: Callable[[], Any]) -> tuple[dict[str, float],
                                                                            str]:
    """Run ``step`` (one untimed training step) inside the backend's ``profile_solves`` and
    return the loop-time columns and, when none could be measured, why ('' when measured, or
    when the backend has no profiler: nothing to say)."""
    hook = getattr(backend, "profile_solves", None)
    if hook is None:
        return {}, ""
    try:
        with hook(device) as profile:
            step()
    except Exception as exc:  # noqa: BLE001 - the cell's measured figures stand
        return {}, f"loop-time profile failed: {type(exc).__name__}: {exc}"
    columns = loop_split_columns(profile)
    if columns:
        return columns, ""
    reason = profile.get("reason") or "the profiled step ran no solve"
    return {}, f"loop-time split not measured: {reason}"


# -- where a NaN may come from --------------------------------------------------------------------


def nan_hint(backend: Any) -> str:
    """The backend's note on where a NaN may come from (its optional ``nan_hint()``; '' without
    one): JAX's failed solves return NaN while the compile cache is on."""
    hint = getattr(backend, "nan_hint", None)
    return str(hint()) if callable(hint) else ""


def note_nan_gradients(backend: Any, fields: dict[str, Any]) -> None:
    """Say in ``notes`` where a NaN gradient error may come from (see :func:`nan_hint`)."""
    hint = nan_hint(backend)
    if hint and any(isinstance(fields.get(k), float) and math.isnan(fields[k])
                    for k in ("grad_rel_error", "grad_rel_error_final")):
        fields["notes"] = f"{fields.get('notes') or ''}; a gradient error is NaN{hint}".lstrip("; ")

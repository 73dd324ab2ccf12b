"""Gradient probes of the JAX suites (:meth:`bench.core.interfaces.AbstractTask.gradient_probe`):
the cell's gradient in float32, or the reference's in float64 inside ``jax.enable_x64`` (a
context: the float32 programs of the cell, traced outside it, stay as they are).

A cell probes twice: its trained task (``_final``), then a freshly built task of the same
settings (the initial weights). With a ``program_key`` the two share their compiled programs
(:data:`_SHARED`): the fresh task's probe and reference run the programs the trained task's
compiled, at the same shapes, instead of tracing and compiling (or loading) them again."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from bench.core.gradients import GradientProbe, weights_hash


def _scale(tree: Any, scale: float) -> Any:
    """Every weight array (at least one dimension) times ``scale``; scalars kept."""
    import jax

    if scale == 1.0:
        return tree
    return jax.tree_util.tree_map(lambda a: a * scale if a.ndim >= 1 else a, tree)


def x64_context() -> Any:
    """A context under which JAX computes in float64: ``jax.enable_x64(True)``, or before JAX
    had it at the top level (0.4.x, the claims across versions' diffrax 0.5 and 0.6
    environments) ``jax.experimental.enable_x64()``."""
    import jax

    enable = getattr(jax, "enable_x64", None)
    if enable is not None:
        return enable(True)
    from jax.experimental import enable_x64  # type: ignore[attr-defined]

    return enable_x64()


def _to64(tree: Any) -> Any:
    import jax

    def cast(a: Any) -> Any:  # on the host: an eager astype compiles a program per shape
        if a is None:
            return None
        host = np.asarray(a)  # put, not converted: jnp.asarray compiles a copy per shape
        return jax.device_put(host.astype(np.float64) if np.issubdtype(host.dtype, np.floating)
                              else host)

    return jax.tree_util.tree_map(cast, tree)


#: Gradient programs shared by the probers of one process that name the same ``program_key``:
#: (program_key, id(backend), reference) -> (backend, jitted value-and-grad).
_SHARED: dict[tuple[Any, int, bool], tuple[Any, Any]] = {}


class GradientProber:
    """A task's probe: ``loss_for(backend)`` is its loss ``(params, *args) -> loss`` solving with
    ``backend``; ``flatten(tree)`` lists the arrays of a parameter (or gradient) tree in the
    suite's neutral weight order. Each backend's gradient function is compiled once per
    prober, or once per process for the probers that pass the same ``program_key``: a hashable
    value naming everything ``loss_for``'s program depends on besides its arguments (the
    suite, its tolerances), so that the freshly built task of the initial-weight probe runs
    the trained task's programs.

    The reference's counts are its forward NFE only (``grad_ref_nfe``): its backward count is
    never computed (diffrax-checkpoint's would replay its checkpoint schedule: two more
    programs and a host callback per step of the float64 solve, for no figure)."""

    def __init__(self, loss_for: Callable[[Any], Callable[..., Any]],
                 flatten: Callable[[Any], Sequence[Any]], program_key: Any = None):
        self.loss_for = loss_for
        self.flatten = flatten
        self.program_key = program_key
        self._compiled: dict[tuple[int, bool], tuple[Any, Any]] = {}

    def _function(self, backend: Any, reference: bool) -> Any:
        table: dict[Any, tuple[Any, Any]] = (
            self._compiled if self.program_key is None else _SHARED)
        key = ((id(backend), reference) if self.program_key is None
               else (self.program_key, id(backend), reference))
        held = table.get(key)
        if held is None or held[0] is not backend:  # an id reused by another backend
            from bench.frameworks.jax._programs import TracedOnce

            name = "gradient-reference" if reference else "gradient-probe"
            held = (backend, TracedOnce(backend.value_and_grad(self.loss_for(backend)), name))
            table[key] = held
        return held[1]

    def __call__(self, backend: Any, params: Any, args: Sequence[Any], reference: bool,
                 scale: float = 1.0) -> GradientProbe:
        import jax

        key = weights_hash(np.asarray(a) for a in self.flatten(params))
        context = x64_context() if reference else contextlib.nullcontext()
        with context:
            if reference:
                params, args = _to64(params), _to64(tuple(args))
            params = _scale(params, scale)
            fn = self._function(backend, reference)
            loss, grads, counts = jax.block_until_ready(fn(params, *args))
            pending = backend.step_stats(loss, counts)
            stats = (backend.complete_step_stats(pending, backward=False) if reference
                     else backend.complete_step_stats(pending))
            flat = np.concatenate([np.asarray(a, np.float64).ravel()
                                   for a in self.flatten(grads)])
        return GradientProbe(flat, stats.nfe_forward, stats.nfe_backward, None, key)

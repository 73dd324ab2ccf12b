"""Gradient probes of the JAX suites (:meth:`bench.core.interfaces.AbstractTask.gradient_probe`):
the cell's gradient in float32, or the reference's in float64 inside ``jax.enable_x64`` (a
context: the float32 programs of the cell, traced outside it, stay as they are)."""

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
    import jax.numpy as jnp

    def cast(a: Any) -> Any:
        if a is None:
            return None
        a = jnp.asarray(a)
        return a.astype(jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating) else a

    return jax.tree_util.tree_map(cast, tree)


class GradientProber:
    """A task's probe: ``loss_for(backend)`` is its loss ``(params, *args) -> loss`` solving with
    ``backend``; ``flatten(tree)`` lists the arrays of a parameter (or gradient) tree in the
    suite's neutral weight order. Each backend's gradient function is compiled once."""

    def __init__(self, loss_for: Callable[[Any], Callable[..., Any]],
                 flatten: Callable[[Any], Sequence[Any]]):
        self.loss_for = loss_for
        self.flatten = flatten
        self._compiled: dict[tuple[int, bool], Any] = {}

    def __call__(self, backend: Any, params: Any, args: Sequence[Any], reference: bool,
                 scale: float = 1.0) -> GradientProbe:
        import jax

        key = weights_hash(np.asarray(a) for a in self.flatten(params))
        context = x64_context() if reference else contextlib.nullcontext()
        with context:
            if reference:
                params, args = _to64(params), _to64(tuple(args))
            params = _scale(params, scale)
            fn = self._compiled.get((id(backend), reference))
            if fn is None:
                fn = jax.jit(backend.value_and_grad(self.loss_for(backend)))
                self._compiled[(id(backend), reference)] = fn
            loss, grads, counts = jax.block_until_ready(fn(params, *args))
            stats = backend.complete_step_stats(backend.step_stats(loss, counts))
            flat = np.concatenate([np.asarray(a, np.float64).ravel()
                                   for a in self.flatten(grads)])
        return GradientProbe(flat, stats.nfe_forward, stats.nfe_backward, None, key)

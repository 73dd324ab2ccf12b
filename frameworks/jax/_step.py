"""A whole training step compiled once, evaluation pre-compilation, and the optimisers of the JAX
suites (plain pytrees, matching torch's SGD with momentum and Adam)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class CompiledStep:
    """``fn`` compiled ahead of time at its first call (so compilation falls in the first,
    warm-up step), then called through ``jax.jit``'s dispatch, which reuses that executable:
    arguments of another shape or dtype raise TypeError (after jax has compiled them: the error is
    for a task's bug, not a path to take).

    A call returns the outputs as jax dispatched them, without blocking on them, as a plain
    training loop's jitted call does: reading the loss (:meth:`JaxBackend.step_stats` does) waits
    for the step, and the core's ``backend.synchronize`` waits for every live array before the
    step's clock stops. Blocking here on the whole output pytree (flattening the model and
    optimiser state) cost 0.1-0.2 ms of a 7-13 ms CNF step.

    Calling the ``jax.stages.Compiled`` object itself takes a slower Python path: 1.5 ms more per
    step on the CNF (10.9 against 9.4 ms for diffrax-checkpoint), which a plain training loop
    calling a jitted function does not pay.

    ``xla_temp_bytes`` is XLA's compiled memory analysis of the step (temporary buffers); None
    where the platform reports none (an analysis of all zeros: jaxlib 0.4.28 on CPU).
    """

    def __init__(self, fn: Callable[..., Any], donate_argnums: tuple[int, ...] = ()):
        self.fn = fn
        self.donate_argnums = donate_argnums
        self.compiled: Any = None
        self.xla_temp_bytes: int | None = None
        self.calls = 0
        self._jitted: Any = None

    def lower(self, *args: Any) -> Any:
        if self._jitted is None:
            from bench.frameworks.jax import _programs

            # a kept program where the engine keeps them (_programs), else jax.jit
            self._jitted = _programs.jitted("train-step", self.fn, args, self.donate_argnums)
        return self._jitted.lower(*args)

    def __call__(self, *args: Any) -> Any:
        if self.compiled is None:
            self.compiled = self.lower(*args).compile()
            try:
                analysis = self.compiled.memory_analysis()
                self.xla_temp_bytes = int(analysis.temp_size_in_bytes)
                if not analysis.argument_size_in_bytes and not analysis.output_size_in_bytes:
                    # a step has arguments: an analysis of all zeros reported nothing (jaxlib
                    # 0.4.28's on CPU), not a step without temporaries
                    self.xla_temp_bytes = None
            except Exception:  # not every platform reports it
                self.xla_temp_bytes = None
        from bench.frameworks.jax import _profile

        profile = _profile.active()
        if profile is not None:  # the loop-time profile: this step's solves, once, eagerly
            profile.capture(self.fn, args)
        out = self._jitted(*args)
        self.calls += 1
        cache_size = getattr(self._jitted, "_cache_size", None)
        if cache_size is not None and cache_size() > 1:
            raise TypeError("a compiled training step was called with arguments of another "
                            "shape or dtype than at its first call, which made jax compile it "
                            "again (a task must keep its shapes fixed)")
        return out

    def extra(self) -> dict[str, float]:
        """``{"xla_temp_bytes": ...}`` for :class:`StepStats`, when known."""
        return {} if self.xla_temp_bytes is None else {"xla_temp_bytes": float(self.xla_temp_bytes)}


class CompileOnce:
    """For ``prepare_evaluation``: run a jitted call once per input-shape key, so that each shape
    is compiled before the evaluation's clock starts and no later evaluation runs it again."""

    def __init__(self) -> None:
        self._done: set[Any] = set()

    def __call__(self, key: Any, call: Callable[[], Any]) -> None:
        if key in self._done:
            return
        self._done.add(key)
        import jax

        jax.block_until_ready(call())


# -------------------------------------------------------------------------------------------------
# Optimisers (plain pytrees; no optax dependency)
# -------------------------------------------------------------------------------------------------


def _zeros_like(params: Any) -> Any:
    """Zeros like every leaf: made on the host and put on JAX's default device (an eager
    ``jnp.zeros_like`` compiles a program per shape; the task puts them on its own device)."""
    import jax
    import numpy as np

    return jax.device_put(jax.tree_util.tree_map(lambda a: np.zeros(np.shape(a), a.dtype),
                                                 params))


def sgd_momentum_init(params: Any) -> Any:
    """Momentum buffers of :func:`sgd_momentum_update` (zeros like the float leaves)."""
    return _zeros_like(params)


def sgd_momentum_update(params: Any, grads: Any, buffers: Any, lr: Any, momentum: float
                        ) -> tuple[Any, Any]:
    """torch.optim.SGD(momentum=m) without dampening, Nesterov or weight decay:
    ``b = m * b + g; p = p - lr * b`` (torch's first step sets b = g, the same as b = 0 here)."""
    import jax

    buffers = jax.tree_util.tree_map(lambda b, g: momentum * b + g, buffers, grads)
    params = jax.tree_util.tree_map(lambda p, b: p - lr * b, params, buffers)
    return params, buffers


def adam_init(params: Any) -> Any:
    """(step, first moments, second moments) for :func:`adam_update`."""
    import jax
    import numpy as np

    return jax.device_put(np.int32(0)), _zeros_like(params), _zeros_like(params)


def adam_update(params: Any, grads: Any, state: Any, lr: Any, b1: float = 0.9,
                b2: float = 0.999, eps: float = 1e-8) -> tuple[Any, Any]:
    """torch.optim.Adam (no weight decay, no amsgrad)."""
    import jax
    import jax.numpy as jnp

    step, m, v = state
    step = step + 1
    m = jax.tree_util.tree_map(lambda m_, g: b1 * m_ + (1 - b1) * g, m, grads)
    v = jax.tree_util.tree_map(lambda v_, g: b2 * v_ + (1 - b2) * g * g, v, grads)
    c1 = 1 - b1 ** step.astype(jnp.float32)
    c2 = 1 - b2 ** step.astype(jnp.float32)
    params = jax.tree_util.tree_map(
        lambda p, m_, v_: p - lr * (m_ / c1) / (jnp.sqrt(v_ / c2) + eps), params, m, v)
    return params, (step, m, v)

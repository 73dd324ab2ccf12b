"""``example-jax-rk4``: a complete JAX backend that does not use diffrax.

Classical fourth-order Runge-Kutta (4 evaluations of the dynamics a step) with a fixed number of
equal steps in a ``jax.lax.scan``, differentiated by JAX's autodiff through the stored stages.
Importing this module never imports jax (the registry imports it even where jax is missing):
jax is imported inside :meth:`Rk4Backend.solve`, and ``required_modules`` makes a missing jax an
``unsupported`` cell with the install hint.

Walked through in docs/plugins.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench.frameworks.fixed_grid import steps_in_interval
from bench.frameworks.jax import JaxBackend, record_solve

import bench
from bench.core.errors import BenchError
from bench.core.interfaces import AbstractBackend, Tolerances
from bench.core.options import OptionSpec, positive


class Rk4Backend(JaxBackend):
    """Classical RK4, ``steps`` fixed steps over the solve's interval, backpropagation."""

    name = "example-jax-rk4"  # unique across all plugins; what --backends takes
    gradient_method = "backprop"  # JAX's autodiff through the stored stages
    solver = "rk4-classical-fixed"  # the row's solver column
    adaptive = False  # fixed steps: no tolerances apply ...
    rtol = atol = None  # ... and the rows record none
    memory_claim = "O(L)"
    required_modules = ("jax",)  # no diffrax needed
    install_hint = "pip install jax"
    in_all = False  # an example: run by name (a real backend leaves it True)
    parameters = (
        OptionSpec("steps", int, 8, "RK4 steps over the solve's interval",
                   validator=positive, valid="a positive integer"),
    )

    def __init__(self, steps: int = 8):
        self.steps = _positive(steps, "example-jax-rk4 steps")
        self.description = (f"classical RK4 in JAX, {self.steps} fixed steps ({4 * self.steps} "
                            "evaluations), backpropagation through the steps (example plugin)")

    def solve(self, f: Callable[[Any, Any, Any], Any], params: Any, y0: Any, t0: float,
              t1: float, *, ts: Any = None, fixed_steps: int | None = None,
              tolerances: Tolerances | None = None) -> tuple[Any, dict[str, Any]]:
        """``steps`` (or ``fixed_steps``) RK4 steps over [t0, t1]; with ``ts`` (concrete times,
        ``ts[0] == t0``), every interval between them gets the same number of equal steps, the
        most that any interval needs at the step (t1 - t0) / steps. ``tolerances`` do not apply
        to a fixed step and are ignored."""
        import jax
        import jax.numpy as jnp
        import numpy as np

        steps = self.steps if fixed_steps is None else _positive(fixed_steps, "fixed_steps")
        tree = jax.tree_util.tree_map

        def rk4_step(y: Any, t: Any, h: Any) -> Any:
            k1 = f(t, y, params)  # t: a 0-dim array; y: y0's pytree
            k2 = f(t + h / 2, tree(lambda y, k: y + h / 2 * k, y, k1), params)
            k3 = f(t + h / 2, tree(lambda y, k: y + h / 2 * k, y, k2), params)
            k4 = f(t + h, tree(lambda y, k: y + h * k, y, k3), params)
            return tree(lambda y, a, b, c, d: y + h / 6 * (a + 2 * b + 2 * c + d),
                        y, k1, k2, k3, k4)

        def integrate(y: Any, start: Any, h: Any, n: int) -> Any:
            """n steps of h from start (h < 0: backwards in time)."""
            def body(y: Any, i: Any) -> tuple[Any, None]:
                return rk4_step(y, start + i * h, h), None

            index = jnp.arange(n, dtype=jnp.result_type(float))  # float64 under x64
            return jax.lax.scan(body, y, index)[0]

        if ts is None:
            out = integrate(y0, t0, (t1 - t0) / steps, steps)
            total = steps
        else:
            try:
                times = np.asarray(ts, dtype=np.float64)
            except jax.errors.TracerArrayConversionError as exc:
                raise BenchError(f"backend {self.name!r}: ts must be concrete (the number of "
                                 "steps per interval is static)") from exc
            if times.ndim != 1 or len(times) < 2 or times[0] != t0:
                raise BenchError(f"backend {self.name!r}: ts must be a 1-D array of at least "
                                 f"two times starting at t0={t0}")
            step = abs(t1 - t0) / steps
            n = max(steps_in_interval(b - a, step, steps)
                    for a, b in zip(times[:-1], times[1:], strict=True))

            def interval(y: Any, ends: Any) -> tuple[Any, Any]:
                y = integrate(y, ends[0], (ends[1] - ends[0]) / n, n)
                return y, y

            ends = jnp.asarray(np.stack([times[:-1], times[1:]], axis=1),
                               dtype=jnp.result_type(float))
            _, later = jax.lax.scan(interval, y0, ends)
            # time-major: each leaf (len(ts), *leaf.shape), the first entry being y0
            out = tree(lambda first, rest: jnp.concatenate([first[None], rest]), y0, later)
            total = n * (len(times) - 1)
        count = jnp.asarray(total, jnp.int32)
        stats = {
            "nfe_forward": 4 * count,  # every stage of every step is one evaluation of f
            "num_steps": count,
            "num_accepted_steps": count,  # a fixed step is always accepted
            "num_rejected_steps": jnp.asarray(0, jnp.int32),
            "nfe_backward": 4 * count,  # one VJP of f per stored stage
        }
        return out, record_solve(stats)  # the step's counts are the recorded solves'


def _positive(value: Any, what: str) -> int:
    """``value`` as a positive int, or a BenchError naming ``what`` (2.5, 0, True refused)."""
    if isinstance(value, bool) or not float(value).is_integer() or value < 1:
        raise BenchError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


@bench.hookimpl
def bench_register_backends(register: Callable[[AbstractBackend], None]) -> None:
    register(Rk4Backend())

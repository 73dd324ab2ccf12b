"""``jax-rknet``: RK-Net in JAX, classical RK4 with a fixed number of steps, backpropagated
through the stored steps (registered by :mod:`bench.plugins.jax_diffrax` with the diffrax
backends; importing this module never imports jax)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from bench.frameworks.fixed_grid import steps_in_interval
from bench.frameworks.jax import JaxBackend, current_recorder, rk4_step

import bench
from bench.core.errors import BenchError
from bench.core.interfaces import AbstractBackend, Tolerances
from bench.core.options import OptionSpec, positive


class JaxRkNetBackend(JaxBackend):
    """RK-Net: a fixed number of RK4 steps (the classical tableau, or 3/8; stages written out as
    torch's rknet computes them: :func:`bench.frameworks.jax.rk4_step`) in a ``lax.scan``,
    backpropagated through by JAX's autodiff (all stages stored, O(steps) memory)."""

    solver = "rk4"
    gradient_method = "backprop"
    parameters = (OptionSpec("steps", int, 6, "RK4 steps over the solve's interval",
                             validator=positive, valid="a positive integer"),)
    parameter_aliases = {"fixed_steps": "steps"}

    def __init__(self, name: str = "jax-rknet", steps: int = 6, tableau: str = "classical"):
        if tableau not in ("classical", "3/8"):
            raise ValueError(f"tableau must be 'classical' or '3/8', not {tableau!r}")
        if int(steps) < 1:
            raise ValueError(f"the number of steps must be at least 1, not {steps}")
        self.name = name
        self.steps = int(steps)
        self.tableau = tableau
        self.fixed_step_solver = "rk4" if tableau == "classical" else "rk4-3/8"
        self.description = (f"RK4 ({tableau} tableau), {self.steps} fixed steps by default "
                            f"({4 * self.steps} evaluations), backprop through the steps")

    def configure(self, values: Mapping[str, Any]) -> JaxRkNetBackend:
        if not values:
            return self
        merged = {**self.user_parameters, **values}
        backend = JaxRkNetBackend(self.name, tableau=self.tableau, **merged)
        backend.user_parameters = merged
        return backend

    def solve(self, f: Callable[[Any, Any, Any], Any], params: Any, y0: Any, t0: float,
              t1: float, *, ts: Any = None, fixed_steps: int | None = None,
              tolerances: Tolerances | None = None) -> tuple[Any, dict[str, Any]]:
        """``steps`` (or ``fixed_steps``) equal steps over [t0, t1]. With ``ts`` (concrete, not
        traced: the step counts are static), as torch's rknet: each interval between consecutive
        times of (t0, *ts) gets ceil(length / step) equal steps, step = (t1 - t0) / steps; an
        empty interval (ts[0] == t0) takes none."""

        import jax
        import jax.numpy as jnp
        import numpy as np

        steps = int(fixed_steps if fixed_steps is not None else self.steps)
        if steps < 1:
            raise BenchError(f"the number of steps must be at least 1, not {steps}")
        rule = self.tableau

        def dynamics(t: Any, y: Any) -> Any:
            return f(t, y, params)

        def integrate(y: Any, ta: Any, dt: Any, n: int) -> Any:
            """n steps of dt from ta; ta and dt float32 (concrete or traced)."""
            def rk_step(y: Any, i: Any) -> tuple[Any, None]:
                t = ta + i * dt
                return rk4_step(dynamics, t, y, dt, rule), None

            y, _ = jax.lax.scan(rk_step, y, jnp.arange(n, dtype=jnp.float32))
            return y

        if ts is None:
            ys = integrate(y0, np.float32(t0), np.float32((float(t1) - float(t0)) / steps), steps)
            total = steps
        else:
            try:
                times = [float(t0)] + [float(t) for t in np.asarray(ts).ravel()]
            except jax.errors.TracerArrayConversionError as exc:
                raise BenchError(f"backend {self.name!r}: ts must be concrete (not traced), "
                                 "since the number of RK4 steps per interval is static") from exc
            step = abs(float(t1) - float(t0)) / steps
            intervals = [(a, b, 0 if b == a else steps_in_interval(b - a, step, steps))
                         for a, b in zip(times[:-1], times[1:], strict=False)]
            total = sum(n for _, _, n in intervals)
            ys = _rk_intervals(integrate, y0, intervals)
        n = _int32(total)
        stats = {"num_steps": n, "num_accepted_steps": n, "num_rejected_steps": _int32(0),
                 "nfe_forward": 4 * n, "nfe_backward_vjp": 4 * n}
        recorder = current_recorder()
        if recorder is not None:
            recorder.records.append(stats)
        return ys, stats

    def backward_counts(self, solves: list[Any], probe: Any) -> tuple[float, dict[str, float]]:
        import numpy as np

        vjp = float(sum(np.sum(r["nfe_backward_vjp"]) for r in solves))
        return vjp, {"nfe_backward_vjp": vjp, "nfe_backward_recomputed": 0.0}


def _rk_intervals(integrate: Callable[[Any, Any, Any, int], Any], y0: Any,
                  intervals: list[tuple[float, float, int]]) -> Any:
    """The states at the end of each interval (a, b, n): n steps of (b - a) / n from a, stacked.

    Consecutive intervals with the same n form one ``lax.scan`` over the intervals (n is static
    inside it), so a trajectory with hundreds of output times compiles one loop, not one per
    interval (jax-rknet on the latent ODE: 199 intervals, about 2 minutes of compilation when
    unrolled). The arithmetic per step is what one loop per interval did: t = a + i * dt in
    float32, a and dt rounded to float32 from their double-precision values.
    """
    import itertools

    import jax
    import jax.numpy as jnp
    import numpy as np

    runs, y = [], y0
    for n, grouped in itertools.groupby(intervals, key=lambda interval: interval[2]):
        group = list(grouped)
        if n == 0:  # empty intervals: the state as it is
            runs.append(_repeat(y, len(group)))
            continue
        starts = np.array([a for a, _, _ in group], dtype=np.float32)
        dts = np.array([(b - a) / n for a, b, _ in group], dtype=np.float32)

        def interval(y: Any, start_dt: Any, n: int = n) -> tuple[Any, Any]:
            y = integrate(y, start_dt[0], start_dt[1], n)
            return y, y

        y, states = jax.lax.scan(interval, y, (starts, dts))
        runs.append(states)
    return jax.tree_util.tree_map(lambda *leaves: jnp.concatenate(leaves), *runs)


def _repeat(tree: Any, k: int) -> Any:
    """``tree``'s leaves stacked k times along a new leading axis."""
    import jax
    import jax.numpy as jnp

    return jax.tree_util.tree_map(lambda leaf: jnp.broadcast_to(leaf, (k, *jnp.shape(leaf))),
                                  tree)




def _int32(x: Any) -> Any:
    import jax.numpy as jnp

    return jnp.asarray(x, jnp.int32)


@bench.hookimpl
def bench_register_backends(register: Callable[[AbstractBackend], None]) -> None:
    register(JaxRkNetBackend("jax-rknet"))

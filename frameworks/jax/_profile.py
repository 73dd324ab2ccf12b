"""The loop-time split of a JAX training step: how much of its forward solves is the dynamics'
evaluations and how much the solver's own loop (step-size control, stage arithmetic,
bookkeeping). The torchode paper reports the latter apart; torchdiffeq#278 asks for it.

A compiled step cannot be timed from inside, so :func:`profile_solves` measures outside it, in
one extra untimed training step (the core runs it after the memory steps): the
:class:`~bench.frameworks.jax.CompiledStep` of the task calls its function once more *eagerly*
(no jit), and :meth:`JaxBackend.value_and_grad` then runs the loss eagerly with every
``backend.solve`` it calls intercepted. Each intercepted solve, at its real inputs:

- ``solve_time_s``: the forward solve alone, jitted (no gradient), the fastest of
  :data:`REPEATS` synchronised runs after a warm-up that compiles it;
- ``dynamics_time_s``: its NFE times one evaluation of the dynamics at the solve's state, timed
  as a jitted chain of up to :data:`CHAIN` evaluations (each input depending on the previous
  output, so none is hoisted or fused away) minus the same chain without the dynamics (the
  chain's own loop and call);
- the rest, ``solve_time_s - dynamics_time_s``, is the solver's loop.

Then the loss stops (nothing is differentiated) and the step runs compiled as usual.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

#: Timed runs of each profiled program (after one warm-up); the fastest is kept (the least
#: disturbed by other work on the machine).
REPEATS = 20
#: The most evaluations of the dynamics in one timed chain: a short program is less often
#: interrupted by other work than a long one (a chain of 80 evaluations of a small MLP took
#: 3.5x a chain of 20 per evaluation on a loaded 2-core machine, 20 took the solve's time).
CHAIN = 8

_ACTIVE: list[SolveProfile] = []


class _Captured(Exception):
    """Ends the eager loss once its solves are profiled."""


class SolveProfile:
    """One profile: what :func:`profile_solves` yields is :attr:`result`, filled at the end."""

    def __init__(self, device: str):
        self.device = device
        self.result: dict[str, Any] = {}
        self.capturing = False
        self.captured = False
        self.solves: list[dict[str, float]] = []

    def capture(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        """Run a compiled step's function eagerly once, its solves profiled (see the module's
        docstring); a failure is kept as the profile's reason, never raised."""
        if self.captured:
            return
        self.captured, self.capturing = True, True
        try:
            fn(*args)
            self.result.setdefault("reason", "the step's function never called "
                                   "backend.value_and_grad eagerly")
        except _Captured:
            pass
        except Exception as exc:  # noqa: BLE001 - a profile never fails the step
            self.result["reason"] = f"{type(exc).__name__}: {exc}"
        finally:
            self.capturing = False

    def run_loss(self, backend: Any, loss_fn: Callable[..., Any], params: Any,
                 args: tuple[Any, ...]) -> None:
        """Run ``loss_fn`` eagerly with ``backend.solve`` profiled, then end the step's
        function (:class:`_Captured`)."""
        original = type(backend).solve.__get__(backend)

        def profiled(f: Callable[..., Any], params: Any, y0: Any, t0: float, t1: float,
                     **kwargs: Any) -> tuple[Any, Any]:
            y, stats, numbers = profile_one(original, f, params, y0, t0, t1, kwargs,
                                            index=len(self.solves))
            self.solves.append(numbers)
            return y, stats

        backend.solve = profiled  # the instance's attribute shadows the class's method
        try:
            loss_fn(params, *args)
        finally:
            del backend.solve
        raise _Captured

    def finish(self) -> None:
        if not self.solves:
            self.result.setdefault("reason", "the profiled step ran no solve through "
                                   "bench.frameworks.jax.CompiledStep")
            return
        self.result.update(
            solve_time_s=sum(s["solve_time_s"] for s in self.solves),
            dynamics_time_s=sum(s["dynamics_time_s"] for s in self.solves),
            nfe=sum(s["nfe"] for s in self.solves), solves=len(self.solves))
        self.result.pop("reason", None)


def active() -> SolveProfile | None:
    """The profile running now (None: none)."""
    return _ACTIVE[-1] if _ACTIVE else None


@contextlib.contextmanager
def profile_solves(device: str) -> Iterator[dict[str, Any]]:
    """Profile the next training step's solves (see the module's docstring); the yielded dict
    is filled when the block ends: ``solve_time_s``, ``dynamics_time_s``, ``nfe``, ``solves``,
    or ``reason``."""
    profile = SolveProfile(device)
    _ACTIVE.append(profile)
    try:
        yield profile.result
    finally:
        _ACTIVE.remove(profile)
        profile.finish()


def _fastest_times(calls: list[Callable[[], Any]]) -> list[float]:
    """The fastest of :data:`REPEATS` synchronised runs of each call, after one warm-up run each
    (which compiles it); the calls take turns, so that a machine's load hits them alike."""
    import jax

    for call in calls:
        jax.block_until_ready(call())
    best = [float("inf")] * len(calls)
    for _ in range(REPEATS):
        for k, call in enumerate(calls):
            t0 = time.perf_counter()
            jax.block_until_ready(call())
            best[k] = min(best[k], time.perf_counter() - t0)
    return best


def profile_one(solve: Callable[..., Any], f: Callable[..., Any], params: Any, y0: Any,
                t0: float, t1: float, kwargs: dict[str, Any], index: int = 0
                ) -> tuple[Any, Any, dict[str, float]]:
    """Time one solve (the ``index``-th of the step) and its dynamics at these (concrete)
    inputs; returns the solve's output, its stats and ``{"solve_time_s", "dynamics_time_s",
    "nfe"}``. Its programs are kept across runs like the cell's others
    (:mod:`bench.frameworks.jax._programs`)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from bench.frameworks.jax._programs import jitted as kept

    def forward(params: Any, y0: Any) -> Any:
        # ts stays as the suite passed it, concrete (closed over, not a traced argument): a
        # fixed-step solve reads it on the host to count its steps (jax-rknet)
        return solve(f, params, y0, t0, t1, **kwargs)

    jitted = kept(f"profile-solve-{index}", forward, (params, y0))
    y, stats = jitted(params, y0)
    nfe = int(np.sum(np.asarray(jax.device_get(stats["nfe_forward"]))))
    leaves = jax.tree_util.tree_leaves(y0)
    dtype = leaves[0].dtype if leaves else jnp.float32
    t = jnp.asarray(0.5 * (t0 + t1), dtype)
    chain_length = max(1, min(nfe, CHAIN))

    def chain(params: Any, y0: Any, with_f: bool) -> Any:
        def body(i: Any, y: Any) -> Any:
            dy = f(t, y, params) if with_f else y
            return jax.tree_util.tree_map(lambda a, b: a + jnp.asarray(1e-7, a.dtype) * b, y, dy)

        return jax.lax.fori_loop(0, chain_length, body, y0)

    with_f = kept(f"profile-chain-{index}-with-f", lambda p, y: chain(p, y, True), (params, y0))
    without_f = kept(f"profile-chain-{index}-without-f", lambda p, y: chain(p, y, False),
                     (params, y0))
    solve_s, chain_s, loop_s = _fastest_times([lambda: jitted(params, y0),
                                               lambda: with_f(params, y0),
                                               lambda: without_f(params, y0)])
    dynamics_s = max(chain_s - loop_s, 0.0) * nfe / chain_length if nfe else 0.0
    return y, stats, {"solve_time_s": solve_s, "dynamics_time_s": dynamics_s, "nfe": float(nfe)}

"""diffrax building blocks that match torchdiffeq (for backends comparing the two frameworks):
torchdiffeq's error norm and initial-step heuristic, and the fixed-step RK4 tableaux."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any


def torchdiffeq_norm(tree: Any) -> Any:
    """torchdiffeq's error norm: RMS of one tensor; for several, the maximum of their RMS."""
    import jax
    import jax.numpy as jnp

    leaves = jax.tree_util.tree_leaves(tree)
    norms = [jnp.sqrt(jnp.mean(jnp.square(jnp.abs(x)))) for x in leaves]
    return functools.reduce(jnp.maximum, norms)


def reverse_seminorm(state: Any) -> Any:
    """The seminorm of the adjoint's reverse solve (Kidger, Chen & Lyons 2021), in torchdiffeq's
    norm: the state and its adjoint count for step-size control, the parameters' adjoint does not
    (torchdiffeq ``adjoint_options=dict(norm="seminorm")``; diffrax's ``adjoint_rms_seminorm``
    is the same idea with one RMS over all). The reverse state is (y, a_y, a_args, a_terms)."""
    y, a_y, _, _ = state
    return torchdiffeq_norm((y, a_y))


def torchdiffeq_first_step(f: Callable[[Any, Any], Any], t0: Any, y0: Any, f0: Any, order: int,
                           rtol: float, atol: float) -> Any:
    """torchdiffeq's ``_select_initial_step`` (one more evaluation of f, at t0 + h0).

    :param order: as torchdiffeq passes it: the solver's order minus one (4 for dopri5).
    """
    import jax
    import jax.numpy as jnp

    tm = jax.tree_util.tree_map
    scale = tm(lambda y: atol + jnp.abs(y) * rtol, y0)
    d0 = torchdiffeq_norm(tm(lambda y, s: y / s, y0, scale))
    d1 = torchdiffeq_norm(tm(lambda k, s: k / s, f0, scale))
    small = (d0 < 1e-5) | (d1 < 1e-5)
    h0 = jnp.abs(jnp.where(small, 1e-6, 0.01 * d0 / jnp.where(small, 1.0, d1)))
    y1 = tm(lambda y, k: y + h0 * k, y0, f0)
    f1 = f(t0 + h0, y1)
    d2 = jnp.abs(torchdiffeq_norm(tm(lambda a, b, s: (a - b) / s, f1, f0, scale)) / h0)
    flat = (d1 <= 1e-15) & (d2 <= 1e-15)
    dmax = jnp.where(flat, 1.0, jnp.maximum(d1, d2))
    h1 = jnp.where(flat, jnp.maximum(1e-6, h0 * 1e-3), (0.01 / dmax) ** (1.0 / (order + 1)))
    return jnp.minimum(100 * h0, jnp.abs(h1))


#: The stages of the two fixed-step RK4 rules: (c, a row) of stages 2-4 and the weights with
#: their common denominator, so the update is y + h / denominator * sum(weight * k), as torch's
#: RK4Block computes it.
RK4_RULES = {
    "classical": (((0.5, (0.5,)), (0.5, (0.0, 0.5)), (1.0, (0.0, 0.0, 1.0))), (1, 2, 2, 1), 6),
    "3/8": (((1 / 3, (1 / 3,)), (2 / 3, (-1 / 3, 1.0)), (1.0, (1.0, -1.0, 1.0))), (1, 3, 3, 1), 8),
}


def rk4_step(f: Callable[[Any, Any], Any], t: Any, y: Any, h: Any, rule: str = "classical"
             ) -> Any:
    """One step of ``rule`` (a key of :data:`RK4_RULES`) from (t, y) with step h: four
    evaluations of ``f(t, y)``, stages written out (no loop, nothing stored beyond what
    autodiff keeps). diffrax's ERK step stores its stages through dynamic slices into zeroed
    buffers, which on XLA:CPU cost more than a third of an RK-Net training step on MNIST."""
    import jax

    stages, weights, denominator = RK4_RULES[rule]
    tm = jax.tree_util.tree_map

    def combine(base: Any, coefficients: Any, ks: list[Any], scale: Any) -> Any:
        """base + scale * sum(a * k), over the nonzero coefficients a."""
        used = [(a, k) for a, k in zip(coefficients, ks, strict=True) if a != 0]
        total = tm(lambda *leaves: sum(a * leaf for (a, _), leaf in zip(used, leaves,
                                                                         strict=True)),
                   *[k for _, k in used])
        return tm(lambda b, s: b + scale * s, base, total)

    ks = [f(t, y)]
    for c, row in stages:
        ks.append(f(t + c * h, combine(y, row, ks, h)))
    return combine(y, weights, ks, h / denominator)


@functools.cache
def rk4_solvers() -> Any:
    """``ClassicalRK4`` and ``ThreeEighthsRK4``: diffrax explicit Runge-Kutta solvers from the
    Butcher tableaux of :data:`RK4_RULES` (diffrax has neither), built on first use (they need
    diffrax)."""
    import types

    import diffrax
    import numpy as np

    def butcher_tableau(rule: str) -> Any:
        """The Butcher tableau of :data:`RK4_RULES`' ``rule`` (no embedded error estimate)."""
        stages, weights, denominator = RK4_RULES[rule]
        return diffrax.ButcherTableau(
            c=np.array([c for c, _ in stages]),
            b_sol=np.array(weights) / denominator,
            b_error=np.zeros(4),
            a_lower=tuple(np.array(row) for _, row in stages),
        )

    class ClassicalRK4(diffrax.AbstractERK):
        """The classical 4th-order Runge-Kutta method (1/6, 1/3, 1/3, 1/6), from its Butcher
        tableau; no embedded error estimate (fixed steps only)."""

        tableau = butcher_tableau("classical")
        interpolation_cls = diffrax.ThirdOrderHermitePolynomialInterpolation.from_k

        def order(self, terms: Any) -> int:
            return 4

    class ThreeEighthsRK4(ClassicalRK4):
        """Kutta's 3/8 rule (torchdiffeq's ``method="rk4"``)."""

        tableau = butcher_tableau("3/8")

    return types.SimpleNamespace(ClassicalRK4=ClassicalRK4, ThreeEighthsRK4=ThreeEighthsRK4)

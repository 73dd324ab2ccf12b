"""Continuous normalizing flows on 2-D toy densities (FFJORD, Grathwohl et al. 2019): test NLL in
nats.

This module declares the suite. The data streams, the Hutchinson probe vectors, the initial weights
and the budgets are framework-neutral, in :mod:`bench.suites.cnf_data`, so every framework's model
(:mod:`bench.suites.cnf_torch`, :mod:`bench.suites.cnf_jax`) trains on the very same batches from
the very same initial weights for a given seed. The eight generators are in
:mod:`bench.suites.cnf_densities`.

The model follows FFJORD's ``train_toy.py``:

- dynamics f(t, z): ConcatSquashLinear 2->64, tanh, 64->64, tanh, 64->64, tanh, 64->2, where
  ConcatSquashLinear(t, x) = (W x + b) * sigmoid(G t + g) + B t (FFJORD's ``concatsquash`` layer);
- the state [z, dlogp] is integrated from t = 0 (data) to t = T (base), d(dlogp)/dt = -tr(df/dz),
  and log p(x) = log N(z(T); 0, I) - dlogp(T); the trace is exact in 2-D (two vector-Jacobian
  products), or Hutchinson's estimate eps^T (df/dz) eps with one Gaussian probe per sample and
  training iteration (suite option ``trace_estimator=hutchinson``); evaluation is always exact;
- the end time T is learned, as in FFJORD's toy defaults (``--time_length 0.5 --train_T True``):
  the backends integrate over s in [0, 1] and the dynamics is rescaled, dz/ds = T f(T s, z), with
  T = sqrt_end_time^2 (FFJORD's parametrisation), which is the same flow;
- Adam, lr 1e-3, weight decay 1e-5 (``train_toy.py``'s default), batch 100, dopri5 at
  rtol = atol = 1e-5 for training and test, test NLL on 1000 fresh samples.

The weight decay 1e-5 and the learned T = 0.5 are FFJORD's script defaults and are kept in every
budget (options of the budget settings).
"""

from __future__ import annotations

from collections.abc import Callable

from bench.suites.cnf_data import BUDGETS, TRACE_ESTIMATORS, CnfData
from bench.suites.cnf_densities import GENERATORS

import bench
from bench.core.interfaces import (
    AbstractBackend,
    AbstractSuite,
    CellContext,
    Support,
)
from bench.core.options import OptionSpec, option_defaults

# -------------------------------------------------------------------------------------------------
# The suite
# -------------------------------------------------------------------------------------------------


class CnfSuite(AbstractSuite):
    name = "cnf"
    description = ("continuous normalizing flow (FFJORD toy setup) on a procedural 2-D density: "
                   "3x64 concatsquash tanh dynamics, exact trace, test NLL in nats")
    metric_name = "nll_nats"
    metric_direction = "lower"
    tasks = {"torch": "bench.suites.cnf_torch:CnfTorchTask",
             "jax": "bench.suites.cnf_jax:CnfJaxTask"}
    budgets = BUDGETS
    option_specs = (
        OptionSpec("dataset", str, "8gaussians", choices=tuple(GENERATORS),
                   help="the 2-D density to learn"),
        OptionSpec("trace_estimator", str, "exact", choices=TRACE_ESTIMATORS,
                   help="training trace of df/dz: exact, or Hutchinson's estimate (one Gaussian "
                   "probe per sample); evaluation is always exact"),
    )
    options = option_defaults(option_specs)

    def supports(self, backend: AbstractBackend) -> Support:
        if not backend.continuous_time:
            return Support.no(
                f"backend {backend.name!r} has no continuous time: a CNF integrates the "
                "log-density along a flow that must be run forwards (density) and backwards "
                "(sampling) in time; use an ODE backend (e.g. torch-adjoint, torch-direct, rknet)")
        return Support.yes()

    def task_inputs(self, ctx: CellContext) -> CnfData:
        options = self.cell_options(ctx)
        return CnfData(str(options["dataset"]), ctx.budget.settings, ctx.seed,
                       str(options["trace_estimator"]))


@bench.hookimpl
def bench_register_suites(register: Callable[[AbstractSuite], None]) -> None:
    register(CnfSuite())

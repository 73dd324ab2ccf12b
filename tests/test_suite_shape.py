"""One shape for every suite: a declaration with a ``tasks`` mapping that the core dispatches
(``AbstractSuite.build_task``), the frameworks derived from it."""

from __future__ import annotations

import importlib

import pytest
from fake_plugins import LinearTask, NumpyEulerBackend

from bench.core.errors import BenchError
from bench.core.interfaces import AbstractSuite, AbstractTask, Budget, CellContext


class DispatchedTask(LinearTask):
    def __init__(self, ctx: CellContext, inputs: dict):
        super().__init__(ctx.backend, dict(ctx.budget.settings), ctx.seed, float(inputs["lr"]))
        self.inputs = inputs


class DeclaredSuite(AbstractSuite):
    name = "declared"
    metric_name = "rate_error"
    tasks = {"numpy": f"{__name__}:DispatchedTask"}
    budgets = {"smoke": Budget("smoke", "3 steps", {"steps": 3})}
    options = {"lr": 2.0}


def _ctx(tmp_path, backend, options=None):
    suite = DeclaredSuite()
    return suite, CellContext(backend=backend, budget=suite.budgets["smoke"], seed=0,
                              device="cpu", work_dir=tmp_path, options=options or {})


def test_build_task_dispatches_the_framework_to_its_task_class(tmp_path):
    suite, ctx = _ctx(tmp_path, NumpyEulerBackend(), {"lr": "0.5"})
    assert suite.frameworks == ("numpy",)
    task = suite.build_task(ctx)
    assert isinstance(task, DispatchedTask)
    assert task.inputs == {"lr": "0.5"} and task.lr == 0.5  # task_inputs: the cell's options


def test_a_framework_without_a_task_and_a_bad_option_are_errors(tmp_path):
    backend = NumpyEulerBackend()
    backend.framework = "jax"
    suite, ctx = _ctx(tmp_path, backend)
    with pytest.raises(BenchError, match="suite declared has no jax model .it has: numpy."):
        suite.build_task(ctx)
    suite, ctx = _ctx(tmp_path, NumpyEulerBackend(), {"nope": 1})
    with pytest.raises(BenchError, match="unknown option"):
        suite.build_task(ctx)


@pytest.mark.parametrize("module", ["cnf", "latent_ode", "mnist", "memory_scaling"])
def test_every_builtin_suite_names_a_task_class_per_framework(module):
    suites = [obj for obj in vars(importlib.import_module(f"bench.suites.{module}")).values()
              if isinstance(obj, type) and issubclass(obj, AbstractSuite)
              and obj is not AbstractSuite]
    (suite_class,) = suites
    suite = suite_class()
    assert suite.frameworks == ("torch", "jax")
    for framework, path in suite.tasks.items():
        name, _, cls = path.partition(":")
        assert name == f"bench.suites.{module}_{framework}"
        pytest.importorskip(framework)
        assert issubclass(getattr(importlib.import_module(name), cls), AbstractTask)

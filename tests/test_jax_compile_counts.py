"""XLA compilations that are not measurement, counted on tiny JAX tasks: building a task compiles
nothing, the initial-weight gradient probe (a freshly built task) runs the trained task's
programs, the float64 reference counts no backward pass, and the smoke budgets draw no plots."""

from __future__ import annotations

import pytest

from bench.core.interfaces import Budget, CellContext


class CompileCounter:
    """XLA backend compilations while active (jax.monitoring; a persistent-cache load is none)."""

    EVENT = "/jax/core/compile/backend_compile_duration"

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, event: str, duration: float, **kwargs: object) -> None:
        if event == self.EVENT:
            self.count += 1

    def __enter__(self) -> CompileCounter:
        import jax.monitoring

        jax.monitoring.register_event_duration_secs_listener(self)
        return self

    def __exit__(self, *exc: object) -> None:
        import jax.monitoring

        jax.monitoring.unregister_event_duration_listener(self)


@pytest.fixture(scope="module")
def registry():
    pytest.importorskip("jax")
    pytest.importorskip("equinox")
    pytest.importorskip("diffrax")
    from bench.core.registry import PluginSelection, Registry

    return Registry.load(PluginSelection(entry_points=False))


def _cnf_tiny() -> Budget:
    from bench.suites.cnf_data import BUDGETS

    return Budget("tiny", "test", {**BUDGETS["smoke"].settings, "steps": 3, "batch_size": 16,
                                   "test_size": 32, "eval_every": 2, "eval_subset": 8})


def _latent_tiny() -> Budget:
    from bench.suites.latent_ode_data import BUDGETS

    return Budget("tiny", "test", {**BUDGETS["smoke"].settings, "num_series": 20,
                                   "num_points": 20, "steps": 3, "batch_size": 4,
                                   "eval_every": 2, "eval_subset": 2})


def _context(backend, budget, tmp_path) -> CellContext:
    return CellContext(backend=backend, budget=budget, seed=0, device="cpu", work_dir=tmp_path,
                       options={}, log=lambda message: None)


@pytest.mark.parametrize("suite_name", ["cnf", "latent-ode"])
def test_building_a_jax_task_compiles_nothing(registry, tmp_path, suite_name):
    """Model placeholders, initial weights and optimiser state are made on the host: an eager
    ``jnp.zeros`` per shape had compiled 9 programs (cnf) and 12 (latent-ode) per cell."""
    import jax

    suite = registry.suite(suite_name)
    budget = _cnf_tiny() if suite_name == "cnf" else _latent_tiny()
    suite.budgets = {**suite.budgets, budget.name: budget}
    backend = registry.backends["jax-rknet"]
    jax.clear_caches()  # what an earlier test compiled in this process must count again
    with CompileCounter() as compiles:
        task = suite.build_task(_context(backend, budget, tmp_path))
    assert task.num_params() > 0
    assert compiles.count == 0


def test_initial_weight_probe_runs_the_trained_tasks_programs(registry, tmp_path):
    """The cell's fresh task (initial weights) probes with the programs its trained task
    compiled (the same shapes): no compilation for its float32 probe nor its reference."""
    suite = registry.suite("cnf")
    budget = _cnf_tiny()
    suite.budgets = {**suite.budgets, budget.name: budget}
    backend = registry.backends["jax-rknet"]
    reference = registry.backends["jax-rknet"]  # fixed-step: a cheap float64 program
    ctx = _context(backend, budget, tmp_path)
    trained = suite.build_task(ctx)
    first = trained.gradient_probe()
    trained.gradient_probe(reference=reference)
    fresh = suite.build_task(ctx)
    with CompileCounter() as compiles:
        again = fresh.gradient_probe()
        ref = fresh.gradient_probe(reference=reference)
    assert compiles.count == 0
    assert again.weights_key == first.weights_key  # the same initial weights
    assert (again.grad == first.grad).all() and ref.grad.shape == first.grad.shape


def test_reference_probe_counts_no_backward_pass(registry, tmp_path, monkeypatch):
    """diffrax-checkpoint's backward count replays its checkpoint schedule (two programs and a
    host callback per step of the float64 solve): the reference's count is never read."""
    suite = registry.suite("cnf")
    budget = _cnf_tiny()
    suite.budgets = {**suite.budgets, budget.name: budget}
    backend = registry.backends["jax-rknet"]
    task = suite.build_task(_context(backend, budget, tmp_path))

    def no_backward(solves, probe):
        raise AssertionError("the backward pass was counted")

    monkeypatch.setattr(backend, "backward_counts", no_backward)
    ref = task.gradient_probe(reference=backend)
    assert ref.nfe_forward and ref.nfe_forward > 0 and ref.nfe_backward is None
    with pytest.raises(AssertionError, match="counted"):
        task.gradient_probe()  # the cell's own probe counts it (the gradient study reads it)


def test_smoke_budgets_draw_no_plots():
    from bench.suites import cnf_data, latent_ode_data

    smoke = cnf_data.BUDGETS["smoke"].settings
    assert not cnf_data.CnfData("8gaussians", smoke, 0).plots
    assert cnf_data.CnfData("8gaussians", cnf_data.BUDGETS["quick"].settings, 0).plots
    assert latent_ode_data.BUDGETS["smoke"].settings["plot_series"] == 0
    assert latent_ode_data.BUDGETS["quick"].settings["plot_series"] > 0


def test_building_the_mnist_model_compiles_nothing(registry):
    """The MNIST model's placeholders, its initial weights (kernels to HWIO on the host) and its
    optimiser state: 13 programs per cell had been compiled before its first step."""
    import jax
    from bench.frameworks.jax import adam_init, sgd_momentum_init
    from bench.suites.mnist_jax import build_model

    jax.clear_caches()
    with CompileCounter() as compiles:
        model = build_model(0)
        adam_init(model)
        sgd_momentum_init(model)
    assert compiles.count == 0


def test_float64_casts_of_the_reference_compile_nothing(registry):
    """The reference's parameters and batch go to float64 on the host (an eager cast, or
    jnp.asarray of the float64 copy, compiled a program per shape: 8 in a cnf cell)."""
    import jax
    import numpy as np
    from bench.frameworks.jax._gradients import _to64, x64_context

    tree = {"w": jax.device_put(np.ones((3, 5), np.float32)), "n": np.arange(4), "none": None}
    jax.clear_caches()
    with x64_context(), CompileCounter() as compiles:
        cast = _to64(tree)
    assert compiles.count == 0
    assert cast["w"].dtype == np.float64 and cast["n"].dtype.kind == "i" and cast["none"] is None

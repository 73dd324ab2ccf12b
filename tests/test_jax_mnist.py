"""The JAX MNIST model (suites/mnist_jax.py): parameter count, the same initial weights as the
torch model, the same loss and gradient as torch on fixed RK4 steps, and the task's training step
(compiled once, no recompilation) on tiny synthetic data."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("jax")
pytest.importorskip("equinox")

from bench.suites.mnist import MnistSuite  # noqa: E402
from bench.suites.mnist_data import BUDGETS, MnistPipeline, model_weights  # noqa: E402
from bench.suites.mnist_files import MnistArrays  # noqa: E402

from bench.core.interfaces import Budget, CellContext  # noqa: E402

RK4_STEPS = 6
#: 3 steps of batch 4 on 16 training images, evaluation every 2 steps on 4 of 8 test images.
TINY = Budget("tiny", "test", {**BUDGETS["smoke"].settings, "steps": 3, "batch_size": 4,
                               "train_subset": 16, "test_subset": 8, "eval_subset": 4,
                               "test_batch_size": 8, "eval_every": 2})


def _arrays(n_train: int = 40, n_test: int = 10) -> MnistArrays:
    rng = np.random.default_rng(0)
    return MnistArrays(
        rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        (np.arange(n_train) % 10).astype(np.uint8),
        rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        (np.arange(n_test) % 10).astype(np.uint8), Path("."))


def _jax_backend(name: str, **kwargs):
    from bench.plugins import jax_diffrax
    from bench.plugins.jax_rknet import JaxRkNetBackend

    if kwargs:
        assert name == "jax-rknet"
        return JaxRkNetBackend(name, **kwargs)
    return {b.name: b for b in [*jax_diffrax.backends(), JaxRkNetBackend()]}[name]


def _context(backend, tmp_path: Path, seed: int = 0, budget: Budget = TINY) -> CellContext:
    return CellContext(backend=backend, budget=budget, seed=seed, device="cpu",
                       work_dir=tmp_path, options={}, log=lambda _: None)


def _torch_rk4_backend(steps: int = RK4_STEPS):
    """A stand-in torch backend: ``ode_block`` integrates with ``steps`` classical RK4 steps."""
    torch = pytest.importorskip("torch")

    class Rk4Block(torch.nn.Module):
        def __init__(self, dynamics):
            super().__init__()
            self.dynamics = dynamics

        def forward(self, h):
            dt = 1.0 / steps
            for i in range(steps):
                t = torch.tensor(i * dt, dtype=torch.float32)
                k1 = self.dynamics(t, h)
                k2 = self.dynamics(t + dt / 2, h + dt / 2 * k1)
                k3 = self.dynamics(t + dt / 2, h + dt / 2 * k2)
                k4 = self.dynamics(t + dt, h + dt * k3)
                h = h + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
            return h

    class Backend:
        name = "torch-rk4-inline"

        def ode_block(self, make_dynamics, tolerances=None):
            return Rk4Block(make_dynamics(True))

    return Backend()


def _registered_torch_rknet():
    pytest.importorskip("torch")
    from bench.core.registry import PluginSelection, Registry

    registry = Registry.load(PluginSelection(entry_points=False))
    if "rknet" not in registry.backends:
        pytest.skip("the torch rknet backend is not registered (plugins/rknet.py)")
    return registry.backends["rknet"]


def _grad_norm(grads) -> float:
    return math.sqrt(sum(float(np.sum(np.square(np.asarray(g)))) for g in grads))


def test_parameter_count_matches_the_torch_model():
    from bench.suites.mnist_jax import GroupNorm, build_model, num_params

    assert num_params(build_model(0)) == 208_266
    narrow = build_model(0, channels=16)  # a budget's ``channels``: 13,674 as the torch model
    assert num_params(narrow) == 13_674 and narrow.dynamics.norm1.groups == 8
    assert isinstance(narrow.head_norm, GroupNorm) and narrow.head_norm.groups == 8


@pytest.mark.parametrize("seed", [0, 7])
def test_initial_weights_equal_the_torch_models(seed):
    """Every array of the JAX model equals the torch model's tensor of the same name."""
    pytest.importorskip("torch")
    from bench.suites.mnist_jax import build_model, neutral_parameters
    from bench.suites.mnist_torch import build_model as build_torch_model

    torch_model = build_torch_model(_torch_rk4_backend(), seed)
    state = torch_model.state_dict()
    named = torch_model.neutral_parameters()
    jax_arrays = neutral_parameters(build_model(seed))
    assert set(jax_arrays) == set(named) == set(model_weights(True, seed))
    state_by_storage = {t.data_ptr(): key for key, t in state.items()}
    for name, tensor in named.items():
        assert tensor.data_ptr() in state_by_storage  # the state_dict holds this very tensor
        np.testing.assert_array_equal(np.asarray(jax_arrays[name]), tensor.detach().numpy())
    assert len(state) == len(jax_arrays)


def _one_step_torch(torch_backend, seed, x, y):
    import torch
    import torch.nn.functional as F
    from bench.suites.mnist_torch import build_model as build_torch_model

    model = build_torch_model(torch_backend, seed)
    loss = F.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(y))
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params)
    return float(loss.detach()), _grad_norm([g.numpy() for g in grads])


@functools.cache
def _one_step_jax_rknet(steps: int, conv_impl: str = "matmul") -> tuple[float, float]:
    """jax-rknet's loss and gradient norm on the first batch of seed 0 (computed once)."""
    x, y = _batch()
    return _one_step_jax(_jax_backend("jax-rknet", steps=steps), 0, x, y, conv_impl)


def _one_step_jax(jax_backend, seed, x, y, conv_impl="matmul"):
    import jax
    from bench.suites.mnist_jax import build_model, cross_entropy

    def loss_fn(model, x, y):
        logits, _ = model(x, jax_backend)
        return cross_entropy(logits, y)

    loss, grads = jax.jit(jax.value_and_grad(loss_fn))(build_model(seed, conv_impl), x,
                                                       y.astype(np.int32))
    return float(loss), _grad_norm(jax.tree_util.tree_leaves(grads))


def _batch():
    data = MnistPipeline(_arrays(), TINY.settings, seed=0)
    x, y = data.train_batch(0)
    return x, y


@pytest.mark.slow  # JAX compilations of a whole MNIST step: 10-15 s each on 2 cores
@pytest.mark.parametrize("conv_impl", ["matmul", "xla"])
def test_rk4_loss_and_gradient_match_torch(conv_impl):
    """Six classical RK4 steps (torch: an explicit loop; JAX: jax-rknet), same weights, same
    batch: loss and gradient norm agree to 1e-5 in float32 (with either convolution)."""
    x, y = _batch()
    t_loss, t_norm = _one_step_torch(_torch_rk4_backend(), 0, x, y)
    j_loss, j_norm = _one_step_jax_rknet(RK4_STEPS, conv_impl)
    assert j_loss == pytest.approx(t_loss, rel=1e-5)
    assert j_norm == pytest.approx(t_norm, rel=1e-5)


@pytest.mark.slow
def test_rknet_backends_agree_torch_vs_jax():
    """The registered torch ``rknet`` backend against ``jax-rknet`` with as many steps."""
    torch_backend = _registered_torch_rknet()
    steps = getattr(torch_backend, "steps", None) or getattr(torch_backend, "fixed_steps", None)
    if not steps:
        pytest.skip("the torch rknet backend does not say its number of steps")
    x, y = _batch()
    t_loss, t_norm = _one_step_torch(torch_backend, 0, x, y)
    j_loss, j_norm = _one_step_jax_rknet(int(steps))
    assert j_loss == pytest.approx(t_loss, rel=1e-5)
    assert j_norm == pytest.approx(t_norm, rel=1e-5)


@functools.cache
def _train_rknet(train_steps: int, steps: int):
    """The jax-rknet MNIST task trained ``train_steps`` steps (once per session)."""
    return _train("jax-rknet", Path("."), train_steps, steps=steps)


def _train(name, tmp_path, train_steps=2, **kwargs):
    import jax.monitoring
    from bench.suites.mnist_jax import MnistJaxTask

    backend = _jax_backend(name, **kwargs)
    data = MnistPipeline(_arrays(), TINY.settings, seed=0)
    task = MnistJaxTask(_context(backend, tmp_path), data)
    compiles = []

    def listen(event, duration, **_):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(event)

    stats, per_step = [], []
    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        for step in range(train_steps):
            before = len(compiles)
            stats.append(task.backend.complete_step_stats(task.train_step(step)))
            per_step.append(len(compiles) - before)
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    return task, stats, per_step


@pytest.mark.slow
def test_task_trains_without_recompiling_and_evaluates(tmp_path):
    task, stats, compiles = _train_rknet(3, RK4_STEPS)
    assert compiles[0] > 0 and compiles[1:] == [0, 0]
    assert task.num_train_steps == 3 and task.eval_every == 2
    assert task.num_params() == 208_266
    for s in stats:
        assert math.isfinite(s.loss)
        assert s.nfe_forward == s.nfe_backward == 4 * RK4_STEPS
        assert s.extra["xla_temp_bytes"] > 0
    import jax.monitoring

    compiles = []

    def listen(event, duration, **_):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(event)

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        task.prepare_evaluation(final=True)
        prepared = len(compiles)
        result = task.evaluate(final=True)
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    assert prepared > 0 and len(compiles) == prepared  # evaluate() itself compiles nothing
    assert 0 <= result.metrics["test_error_pct"] <= 100
    assert result.metrics["eval_nfe_forward"] == 4 * RK4_STEPS
    assert "first 8 of 10 test images" in result.notes and "patch matmuls" in result.notes
    assert task.evaluate(final=False).metrics["test_error_pct"] >= 0
    calls = []
    compiled = task._evaluate_batch
    task._evaluate_batch = lambda *args: calls.append(1) or compiled(*args)
    task.prepare_evaluation(final=True)  # every shape was compiled above: nothing to run again
    assert calls == []


@pytest.mark.slow
def test_first_step_loss_equals_the_torch_tasks(tmp_path):
    """Same seed, same pipeline: the torch rknet task and the JAX task see the same first batch
    from the same weights (their first losses agree), then apply the same SGD update (second)."""
    torch_backend = _registered_torch_rknet()
    steps = getattr(torch_backend, "steps", None) or getattr(torch_backend, "fixed_steps", None)
    if not steps:
        pytest.skip("the torch rknet backend does not say its number of steps")
    from bench.suites.mnist_torch import MnistTorchTask

    torch_task = MnistTorchTask(_context(torch_backend, tmp_path),
                                MnistPipeline(_arrays(), TINY.settings, seed=0))
    torch_losses = [torch_task.train_step(i).loss for i in range(2)]
    _, stats, _ = _train_rknet(3, int(steps))
    assert [s.loss for s in stats[:2]] == pytest.approx(torch_losses, rel=1e-5)


@pytest.mark.slow
def test_narrow_adam_losses_equal_the_torch_tasks(tmp_path):
    """A budget's ``channels`` and ``optimizer: adam`` mean the same model and update in both
    frameworks: the first three losses of the torch and JAX rknet tasks agree (the third follows
    two Adam updates)."""
    torch_backend = _registered_torch_rknet()
    steps = getattr(torch_backend, "steps", None) or getattr(torch_backend, "fixed_steps", None)
    if not steps:
        pytest.skip("the torch rknet backend does not say its number of steps")
    from bench.suites.mnist_jax import MnistJaxTask
    from bench.suites.mnist_torch import MnistTorchTask

    budget = Budget("narrow", "test", {**TINY.settings, "channels": 16, "optimizer": "adam",
                                       "lr": 0.003})
    torch_task = MnistTorchTask(_context(torch_backend, tmp_path, budget=budget),
                                MnistPipeline(_arrays(), budget.settings, seed=0))
    jax_task = MnistJaxTask(_context(_jax_backend("jax-rknet", steps=int(steps)), tmp_path,
                                     budget=budget),
                            MnistPipeline(_arrays(), budget.settings, seed=0))
    torch_losses = [torch_task.train_step(i).loss for i in range(3)]
    jax_losses = [jax_task.train_step(i).loss for i in range(3)]
    assert jax_task.num_params() == torch_task.num_params() == 13_674
    assert jax_losses == pytest.approx(torch_losses, rel=1e-4)
    assert torch_losses[2] != pytest.approx(torch_losses[0], rel=1e-4)  # it did learn


@pytest.mark.slow
@pytest.mark.parametrize("name", ["diffrax-checkpoint", "diffrax-backsolve"])
def test_dopri5_tasks_train(tmp_path, name):
    task, stats, compiles = _train(name, tmp_path, 2)
    assert compiles[1] == 0
    for s in stats:
        assert math.isfinite(s.loss) and s.nfe_forward >= 2 + 6 and s.nfe_backward > 0
    assert task.evaluate(final=True).metrics["eval_nfe_forward"] >= 8


@pytest.mark.slow
def test_mnist_suite_runs_a_jax_cell(tmp_path, monkeypatch):
    """Through the suite and the core (needs "jax" in MnistSuite.frameworks)."""
    if "jax" not in MnistSuite().frameworks:
        pytest.skip("suites/mnist.py does not dispatch to the JAX model yet")
    from bench.suites import mnist_files

    from bench.engine.cell import run_cell
    from bench.planning.cells import CellSpec

    monkeypatch.setattr(mnist_files, "load_mnist", lambda *a, **k: _arrays())
    suite = MnistSuite()
    monkeypatch.setattr(suite, "budgets", {**suite.budgets, "tiny": TINY})
    backend = _jax_backend("jax-rknet")
    row = run_cell(CellSpec("mnist", "jax-rknet", "tiny", 0, "cpu"), backend, suite, tmp_path,
                   log=lambda _: None)
    assert row.status == "ok", row.error
    assert row.params == 208_266 and row.compile_time_s > 0
    assert row.nfe_forward == 4 * RK4_STEPS and "test_error_pct" in row.metrics

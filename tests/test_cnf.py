"""The CNF suite: generators, exact 8gaussians density, initial weights, the torch flow (base
density, trace estimators, invertibility) and cells run end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from bench.suites import cnf_densities
from bench.suites.cnf import CnfSuite
from bench.suites.cnf_data import BUDGETS, CnfData, initial_weights, parameter_specs

from bench.core.errors import BenchError, UnknownNameError
from bench.core.interfaces import Budget
from bench.engine.cell import run_cell
from bench.planning.cells import CellSpec

TORCH_BACKENDS = ("torch-direct", "torch-adjoint", "rknet", "resnet")
#: Smaller than smoke for the fast tests: 3 steps of batch 16, a 10x10 grid.
TINY = Budget("tiny", "test", {**BUDGETS["smoke"].settings, "steps": 3, "batch_size": 16,
                               "test_size": 32, "eval_every": 2, "eval_subset": 8,
                               "plot_samples": 50, "plot_grid": 10})


@pytest.fixture(scope="module")
def backends():
    pytest.importorskip("torch")
    pytest.importorskip("torchdiffeq")
    from bench.core.registry import PluginSelection, Registry

    registry = Registry.load(PluginSelection(entry_points=False))
    return {name: registry.backends[name] for name in TORCH_BACKENDS
            if name in registry.backends}


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Tiny tensors on a shared 2-core machine: a second torch thread only waits."""


def _backend(backends, name):
    if name not in backends:
        pytest.skip(f"backend {name} is not registered")
    return backends[name]


# -- generators and the exact density -------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(cnf_densities.GENERATORS))
@pytest.mark.parametrize("n", [1, 7, 100])
def test_generators_seeded_shaped_finite(name, n):
    a = cnf_densities.sample(name, np.random.default_rng(3), n)
    b = cnf_densities.sample(name, np.random.default_rng(3), n)
    c = cnf_densities.sample(name, np.random.default_rng(4), n)
    assert a.shape == (n, 2) and a.dtype == np.float32
    assert np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert np.abs(a).max() < 10


def test_generators_leave_the_global_random_state_alone():
    state = np.random.get_state()
    for name in cnf_densities.GENERATORS:
        cnf_densities.sample(name, np.random.default_rng(0), 10)
    assert np.array_equal(np.random.get_state()[1], state[1])


def test_unknown_dataset_lists_the_choices():
    with pytest.raises(UnknownNameError) as info:
        cnf_densities.generator("8gausians")
    assert "8gaussians" in str(info.value) and "swissroll" in str(info.value)
    with pytest.raises(UnknownNameError):
        CnfData("nope", BUDGETS["smoke"].settings, 0)
    with pytest.raises(UnknownNameError) as info:
        CnfData("moons", BUDGETS["smoke"].settings, 0, trace_estimator="skilling")
    assert "hutchinson" in str(info.value)


def test_eight_gaussians_density_integrates_to_one():
    side = np.linspace(-5.0, 5.0, 501)
    xs, ys = np.meshgrid(side, side)
    logp = cnf_densities.eight_gaussians_log_density(np.stack([xs.ravel(), ys.ravel()], 1))
    h = side[1] - side[0]
    assert np.exp(logp).sum() * h * h == pytest.approx(1.0, abs=1e-6)


def test_circles_density_integrates_to_one_and_matches_its_samples():
    """The closed form (ring convolved with a Gaussian, via the Bessel function I0) integrates to
    1, and over random-angle samples of the same process its mean -log p is the entropy, which a
    Monte Carlo estimate from the generator itself reproduces; far points use the asymptotic
    branch without overflow."""
    side = np.linspace(-6.0, 6.0, 601)
    xs, ys = np.meshgrid(side, side)
    logp = cnf_densities.circles_log_density(np.stack([xs.ravel(), ys.ravel()], 1))
    h = side[1] - side[0]
    assert np.exp(logp).sum() * h * h == pytest.approx(1.0, abs=1e-6)
    x = cnf_densities.circles(np.random.default_rng(0), 20000)
    nll = -cnf_densities.circles_log_density(x).mean()
    rng = np.random.default_rng(1)
    angle = rng.random(20000) * 2 * math.pi
    radius = np.where(np.arange(20000) % 2 == 0, 3.0, 1.5)
    y = (radius[:, None] * np.stack([np.cos(angle), np.sin(angle)], 1)
         + rng.normal(scale=0.24, size=(20000, 2)))
    assert nll == pytest.approx(-cnf_densities.circles_log_density(y).mean(), abs=0.03)
    assert -cnf_densities.circles_log_density(x * 1.05).mean() > nll + 0.05
    far = cnf_densities.circles_log_density(np.array([[40.0, 0.0], [0.0, 3.0]]))
    assert np.all(np.isfinite(far)) and far[0] < -1000 < far[1]


def test_eight_gaussians_density_matches_its_samples():
    """The mean of log p over many samples is minus the entropy; a shifted density scores worse."""
    x = cnf_densities.eight_gaussians(np.random.default_rng(0), 20000)
    nll = -cnf_densities.eight_gaussians_log_density(x).mean()
    # entropy of 8 well-separated Gaussians: log 8 + log(2 pi e s^2)
    s2 = cnf_densities.EIGHT_GAUSSIANS_STD ** 2
    assert nll == pytest.approx(math.log(8) + math.log(2 * math.pi * math.e * s2), abs=0.03)
    assert -cnf_densities.eight_gaussians_log_density(x * 1.05).mean() > nll + 0.05
    radii = np.linalg.norm(cnf_densities.EIGHT_GAUSSIANS_MEANS, axis=1)
    np.testing.assert_allclose(radii, 4 / 1.414)


def test_data_streams_depend_only_on_seed_and_step():
    s = BUDGETS["smoke"].settings
    a, b = CnfData("8gaussians", s, 5), CnfData("8gaussians", s, 5)
    np.testing.assert_array_equal(a.train_batch(3), b.train_batch(3))
    np.testing.assert_array_equal(a.test_samples(True), b.test_samples(True))
    assert not np.array_equal(a.train_batch(3), a.train_batch(4))
    assert not np.array_equal(a.test_samples(True), CnfData("8gaussians", s, 6).test_samples(True))
    assert a.probes(0) is None
    h = CnfData("8gaussians", s, 5, "hutchinson")
    assert h.probes(2).shape == (s["batch_size"], 2)
    np.testing.assert_array_equal(h.probes(2), CnfData("8gaussians", s, 5, "hutchinson").probes(2))
    assert len(a.test_samples(False)) == s["eval_subset"]
    metrics = a.nll_metrics(a.test, np.zeros(len(a.test)))
    assert metrics["nll_gap_nats"] == pytest.approx(metrics["nll_nats"] - metrics["true_nll_nats"])
    assert "true_nll_nats" not in CnfData("moons", s, 5).nll_metrics(a.test, np.zeros(len(a.test)))


def test_initial_weights_seeded_and_torch_default_bounds():
    w0, w0b, w1 = initial_weights(0), initial_weights(0), initial_weights(1)
    names = [p.name for p in parameter_specs(0.5)]
    assert list(w0) == names
    for name in names:
        np.testing.assert_array_equal(w0[name], w0b[name])
        assert w0[name].dtype == np.float32
    assert not np.array_equal(w0["layers.1.linear.weight"], w1["layers.1.linear.weight"])
    assert np.abs(w0["layers.1.linear.weight"]).max() <= 1 / 8
    assert w0["layers.0.linear.weight"].shape == (64, 2)
    assert w0["layers.3.linear.weight"].shape == (2, 64)
    assert float(w0["sqrt_end_time"]) ** 2 == pytest.approx(0.5)
    assert sum(v.size for v in w0.values()) == 9225


def test_paper_budget_follows_the_reference():
    s = BUDGETS["paper"].settings
    assert (s["steps"], s["batch_size"], s["test_size"], s["lr"]) == (10_000, 100, 1000, 1e-3)
    assert s["rtol"] == s["atol"] == 1e-5


def test_resnet_is_unsupported_with_a_reason(backends):
    support = CnfSuite().supports(_backend(backends, "resnet"))
    assert not support.ok and "continuous time" in support.reason
    assert CnfSuite().supports(_backend(backends, "torch-adjoint")).ok


# -- the torch flow ------------------------------------------------------------------------------


def _flow(backend, tol=1e-5, seed=0):
    from bench.suites.cnf_torch import build_flow

    return build_flow(backend, {**BUDGETS["paper"].settings, "rtol": tol, "atol": tol}, seed)


def standard_normal_log_density(z: np.ndarray) -> np.ndarray:
    """log N(z; 0, I) in nats, per row: the flow's base density."""
    z = np.asarray(z, dtype=np.float64)
    return -0.5 * (z ** 2).sum(-1) - 0.5 * z.shape[-1] * math.log(2.0 * math.pi)


def test_zero_dynamics_flow_has_the_base_density(backends):
    import torch

    flow = _flow(_backend(backends, "torch-direct"))
    with torch.no_grad():
        for p in flow.parameters():
            p.zero_()
    x = np.random.default_rng(0).standard_normal((20, 2)).astype(np.float32)
    with torch.no_grad():
        logp = flow.log_prob(torch.from_numpy(x)).double().numpy()
    np.testing.assert_allclose(logp, standard_normal_log_density(x), atol=1e-5)


def test_exact_trace_is_the_mean_of_hutchinson_on_a_linear_field():
    torch = pytest.importorskip("torch")
    from bench.suites.cnf_torch import exact_trace, hutchinson_trace

    a = torch.tensor([[0.7, -1.3], [0.4, -0.2]], dtype=torch.float64)
    n = 4000
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(n, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    f = z @ a.T
    exact = exact_trace(f, z, create_graph=False)
    np.testing.assert_allclose(exact.detach().numpy(), 0.5, atol=1e-12)
    probes = torch.randn(n, 2, generator=gen, dtype=torch.float64)
    estimate = hutchinson_trace(f, z, probes, create_graph=False)
    sym = (a + a.T) / 2
    std = math.sqrt(2 * float((sym ** 2).sum()) / n)  # Var(e^T A e) = 2 ||sym(A)||_F^2
    assert abs(float(estimate.mean()) - 0.5) < 4 * std
    assert float(estimate.std()) ** 2 == pytest.approx(std ** 2 * n, rel=0.2)


def test_hutchinson_probes_reach_the_dynamics_and_are_cleared(backends):
    import torch

    flow = _flow(_backend(backends, "torch-direct"), tol=1e-3)
    x = torch.from_numpy(cnf_densities.moons(np.random.default_rng(0), 8))
    with torch.no_grad():
        exact = flow.log_prob(x)
        flow.dynamics.probes = torch.ones(8, 2)
        estimated = flow.log_prob(x)
        flow.dynamics.probes = None
    assert not torch.allclose(exact, estimated)


@pytest.mark.parametrize("name", ["torch-direct", "rknet"])
def test_sampling_inverts_the_flow(backends, name):
    import torch

    backend = _backend(backends, name)
    flow = _flow(backend, tol=1e-7)
    x = torch.from_numpy(cnf_densities.eight_gaussians(np.random.default_rng(1), 16))
    with torch.no_grad():
        state = flow.forward_block(torch.cat([x, torch.zeros(16, 1)], 1))
        z = state[:, :2]
        assert not torch.allclose(z, x, atol=1e-2)  # the flow does move the points
        back, log_px = flow.sample(z)
        log_px_forward = flow.log_prob(x)
    tol = 1e-4 if name == "torch-direct" else 2e-3  # rknet: 6 fixed RK4 steps each way
    np.testing.assert_allclose(back.numpy(), x.numpy(), atol=tol, rtol=0)
    np.testing.assert_allclose(log_px.numpy(), log_px_forward.numpy(), atol=tol, rtol=0)


def test_same_initial_weights_across_backends(backends):
    flows = [_flow(_backend(backends, n)) for n in ("torch-direct", "torch-adjoint", "rknet")]
    reference = initial_weights(0)
    for flow in flows:
        named = dict(flow.dynamics.named_parameters())
        assert set(named) == set(reference)
        for k, v in reference.items():
            np.testing.assert_array_equal(named[k].detach().numpy(), v)


def test_adjoint_and_direct_gradients_agree(backends):
    """Same weights and batch: the adjoint's gradient matches backpropagation through dopri5."""
    import torch

    grads = []
    x = torch.from_numpy(cnf_densities.eight_gaussians(np.random.default_rng(2), 16))
    for name in ("torch-direct", "torch-adjoint"):
        flow = _flow(_backend(backends, name), tol=1e-6)
        loss = -flow.log_prob(x).mean()
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in flow.dynamics.parameters()]))
    np.testing.assert_allclose(grads[1].numpy(), grads[0].numpy(), atol=2e-4, rtol=1e-2)


# -- cells end to end ------------------------------------------------------------------------------


def _run(backend, tmp_path, budget=TINY, options=()):
    suite = CnfSuite()
    suite.budgets = {**BUDGETS, budget.name: budget}
    spec = CellSpec("cnf", backend.name, budget.name, 0, "cpu", tuple(options))
    work = tmp_path / "cell"
    work.mkdir(parents=True)
    return run_cell(spec, backend, suite, work, log=lambda m: None), work


def _ok(row, work):
    log = work / "error.log"
    assert row.status == "ok", log.read_text() if log.exists() else row.error


@pytest.mark.parametrize("name", ["torch-direct", "torch-adjoint", "rknet"])
def test_tiny_cell_end_to_end(backends, tmp_path, name):
    row, work = _run(_backend(backends, name), tmp_path)
    _ok(row, work)
    assert math.isfinite(row.metrics["nll_nats"])
    assert row.metrics["nll_gap_nats"] == pytest.approx(
        row.metrics["nll_nats"] - row.metrics["true_nll_nats"])
    assert row.metrics["nfe_eval_forward"] > 0
    assert row.nfe_forward and row.nfe_forward > 0 and row.nfe_backward > 0
    assert row.params == 9225 and row.train_steps == 3
    # measured in the memory steps (the timed ones carry no saved-tensor hooks), beside their NFE
    assert row.saved_for_backward_bytes > 0 and row.memory_step_nfe_forward > 0
    trace = json.loads((work / "trace.json").read_text())
    assert [e["step"] for e in trace["evaluations"] if not e["final"]] == [2]
    assert (work / "cnf_8gaussians.png").stat().st_size > 1000


def test_hutchinson_cell_and_other_dataset(backends, tmp_path):
    row, work = _run(_backend(backends, "torch-direct"), tmp_path,
                     options=(("dataset", "moons"), ("trace_estimator", "hutchinson")))
    _ok(row, work)
    assert math.isfinite(row.metrics["nll_nats"]) and "true_nll_nats" not in row.metrics
    assert "Hutchinson" in row.notes
    assert (work / "cnf_moons.png").exists()


def test_bad_options_are_failed_rows_with_the_choices(backends, tmp_path):
    row, _ = _run(_backend(backends, "torch-direct"), tmp_path, options=(("dataset", "mons"),))
    assert row.status == "failed" and "moons" in row.error
    with pytest.raises(BenchError, match="unknown option"):
        CnfSuite().build_task(type("Ctx", (), {"options": {"nope": 1}})())


def test_smoke_budget_torch_direct(backends, tmp_path):
    row, work = _run(_backend(backends, "torch-direct"), tmp_path, budget=BUDGETS["smoke"])
    _ok(row, work)
    assert math.isfinite(row.metrics["nll_nats"]) and row.nfe_forward > 0
    assert not (work / "cnf_8gaussians.png").exists()  # smoke draws no plot


@pytest.mark.slow
def test_quick_budget_learns_eight_gaussians(backends, tmp_path):
    row, work = _run(_backend(backends, "torch-adjoint"), tmp_path, budget=BUDGETS["quick"])
    _ok(row, work)
    assert row.metrics["nll_gap_nats"] < 1.5


# -- JAX -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def jax_backends():
    pytest.importorskip("jax")
    pytest.importorskip("diffrax")
    pytest.importorskip("equinox")
    from bench.core.registry import PluginSelection, Registry

    registry = Registry.load(PluginSelection(entry_points=False))
    return {name: b for name, b in registry.backends.items() if b.framework == "jax"}


def test_jax_field_matches_the_torch_field(jax_backends):
    """Same neutral weights, same state: the JAX dynamics (velocity and exact/Hutchinson trace)
    equals the torch one. Eager, no compilation."""
    torch = pytest.importorskip("torch")
    import jax.numpy as jnp
    from bench.suites import cnf_jax
    from bench.suites.cnf_torch import CnfDynamics

    settings = BUDGETS["paper"].settings
    jax_model = cnf_jax.build_dynamics(settings, 3)
    torch_model = CnfDynamics()
    with torch.no_grad():
        named = dict(torch_model.named_parameters())
        for name, value in initial_weights(3).items():
            named[name].copy_(torch.from_numpy(value))
    rng = np.random.default_rng(0)
    z = rng.standard_normal((6, 2)).astype(np.float32)
    probes = rng.standard_normal((6, 2)).astype(np.float32)
    for p in (None, probes):
        dz, dl = cnf_jax.flow_field(jnp.float32(0.3), (jnp.asarray(z), jnp.zeros(6)),
                                    (jax_model, None if p is None else jnp.asarray(p)))
        torch_model.probes = None if p is None else torch.from_numpy(p)
        with torch.no_grad():
            state = torch.from_numpy(np.c_[z, np.zeros(6, np.float32)])
            out = torch_model(torch.tensor(0.3), state)
        np.testing.assert_allclose(np.asarray(dz), out[:, :2].numpy(), atol=1e-5)
        np.testing.assert_allclose(np.asarray(dl), out[:, 2].numpy(), atol=1e-5)
    assert cnf_jax.num_params(jax_model) == 9225
    loaded = cnf_jax.neutral_parameters(jax_model)
    for name, value in initial_weights(3).items():
        np.testing.assert_array_equal(np.asarray(loaded[name]), value)


def test_jax_tolerances_come_from_the_budget(jax_backends):
    """The budget's tolerances reach the solve as one argument; the backend keeps its own."""
    import jax.numpy as jnp

    from bench.core.interfaces import Tolerances

    backend = jax_backends.get("diffrax-checkpoint")
    if backend is None:
        pytest.skip("diffrax-checkpoint is not registered")
    data = CnfData("8gaussians", {**BUDGETS["smoke"].settings, "rtol": 1e-5, "atol": 2e-5}, 0)
    assert data.tolerances == Tolerances(1e-5, 2e-5) and backend.rtol != 1e-5

    def solve(tolerances):
        _, stats = backend.solve(lambda t, y, p: p * y, jnp.float32(-1.5), jnp.ones(3), 0.0, 1.0,
                                 tolerances=tolerances)
        return int(stats["num_steps"])

    assert solve(data.tolerances) > solve(None)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["diffrax-checkpoint", "diffrax-backsolve", "jax-rknet"])
def test_jax_tiny_cell_end_to_end(jax_backends, tmp_path, name):
    if name not in jax_backends:
        pytest.skip(f"backend {name} is not registered")
    row, work = _run(jax_backends[name], tmp_path)
    _ok(row, work)
    assert math.isfinite(row.metrics["nll_nats"]) and row.nfe_forward > 0
    assert row.params == 9225 and (work / "cnf_8gaussians.png").exists()


@pytest.mark.slow
def test_jax_and_torch_cells_agree_on_the_first_steps(backends, jax_backends, tmp_path):
    """Same seed: same weights and batches, so the RK4 (fixed-step) losses agree closely."""
    if "jax-rknet" not in jax_backends:
        pytest.skip("jax-rknet is not registered")
    losses = []
    for i, backend in enumerate((_backend(backends, "rknet"), jax_backends["jax-rknet"])):
        row, work = _run(backend, tmp_path / str(i))
        _ok(row, work)
        trace = json.loads((work / "trace.json").read_text())
        losses.append([s["loss"] for s in trace["steps"]])
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-4)

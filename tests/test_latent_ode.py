"""The latent-ODE suite: generators, masks, splits and metrics (numpy), the torch model (same
weights everywhere, solutions at irregular times, adjoint = backprop gradients), cells end to end,
and the JAX model against the torch one."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from bench.suites import latent_ode_series
from bench.suites.latent_ode import LatentOdeSuite
from bench.suites.latent_ode_data import (
    BUDGETS,
    LatentOdeData,
    initial_weights,
    layer_shapes,
    observation_mask,
    resolve_settings,
)

from bench.core.errors import BenchError, UnknownNameError
from bench.core.interfaces import Budget
from bench.engine.cell import run_cell
from bench.planning.cells import CellSpec

#: Smaller than smoke: 20 series of 20 points (window 10), 3 steps of batch 4; plots drawn (smoke
#: draws none).
TINY = Budget("tiny", "test", {**BUDGETS["smoke"].settings, "num_series": 20, "num_points": 20,
                               "steps": 3, "batch_size": 4, "eval_every": 2, "eval_subset": 2,
                               "plot_series": 3})


@pytest.fixture(scope="module")
def registry():
    from bench.core.registry import PluginSelection, Registry

    return Registry.load(PluginSelection(entry_points=False))


@pytest.fixture(scope="module")
def backends(registry):
    pytest.importorskip("torch")
    pytest.importorskip("torchdiffeq")
    return {n: b for n, b in registry.backends.items() if b.framework == "torch"}


@pytest.fixture(scope="module")
def jax_backends(registry):
    pytest.importorskip("jax")
    pytest.importorskip("diffrax")
    pytest.importorskip("equinox")
    return {n: b for n, b in registry.backends.items() if b.framework == "jax"}


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Tiny tensors on a shared 2-core machine: a second torch thread only waits."""


def _backend(backends, name):
    if name not in backends:
        pytest.skip(f"backend {name} is not registered")
    return backends[name]


# -- generators, masks, splits, metrics ------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(latent_ode_series.GENERATORS))
def test_generators_seeded_shaped_finite(name):
    make = latent_ode_series.GENERATORS[name]
    a = make(np.random.default_rng(5), num_series=7, num_points=30)
    b = make(np.random.default_rng(5), num_series=7, num_points=30)
    c = make(np.random.default_rng(6), num_series=7, num_points=30)
    dim = 2 if name == "spirals" else 1
    assert a.clean.shape == a.noisy.shape == (7, 30, dim) and a.times.shape == (30,)
    assert a.clean.dtype == a.noisy.dtype == a.times.dtype == np.float32
    assert np.all(np.isfinite(a.noisy)) and np.all(np.diff(a.times) > 0)
    np.testing.assert_array_equal(a.noisy, b.noisy)
    assert not np.array_equal(a.noisy, c.noisy)
    assert 0 < np.std(a.noisy - a.clean) < 1.0


def test_periodic_times_are_irregular_in_zero_to_five_and_series_are_sinusoids():
    s = latent_ode_series.periodic(np.random.default_rng(0), num_series=50, num_points=100)
    assert 0.0 < s.times[0] and s.times[-1] < 5.0
    gaps = np.diff(s.times)
    assert gaps.std() > 0.3 * gaps.mean()  # irregular, not a grid
    f, phase = s.info["frequency"], s.info["phase"]
    assert np.all((0.4 <= f) & (f <= 0.8))
    expected = np.sin(2 * np.pi * f[:, None] * s.times[None].astype(np.float64) + phase[:, None])
    np.testing.assert_allclose(s.clean[..., 0], expected, atol=1e-5)  # float32
    assert np.std(s.noisy - s.clean) == pytest.approx(0.01, rel=0.1)


def test_spirals_are_chen_windows_both_directions():
    s = latent_ode_series.spirals(np.random.default_rng(0), num_series=200, num_points=100)
    assert 0.3 < s.info["clockwise"].mean() < 0.7
    step = 6 * np.pi / 999
    np.testing.assert_allclose(np.diff(s.times), step, rtol=1e-4)
    # counter-clockwise spirals are centred at x = +5, clockwise ones at x = -5
    centre = s.clean[:, :, 0].mean(1)
    assert np.all(centre[~s.info["clockwise"]] > 0) and np.all(centre[s.info["clockwise"]] < 0)
    # no window starts in the first half-window of the grid (the authors' t0 >= nsample)
    assert s.info["start"].min() >= 50 and s.info["start"].max() <= 900
    assert s.info["start"].min() < 80
    with pytest.raises(ValueError, match="num_points"):
        latent_ode_series.spirals(np.random.default_rng(0), num_points=1001)


def test_observation_mask_sees_exactly_n_window_points():
    mask = observation_mask(np.random.default_rng(0), 9, 20, 10, 4)
    assert mask.shape == (9, 20)
    np.testing.assert_array_equal(mask.sum(1), 4)
    assert mask[:, 10:].sum() == 0
    assert len({tuple(row) for row in mask}) > 1  # irregular: differs between series
    with pytest.raises(BenchError, match="cannot observe 11 of a window of 10"):
        observation_mask(np.random.default_rng(0), 1, 20, 10, 11)


def test_batches_depend_only_on_seed_and_step():
    data = LatentOdeData("periodic", TINY.settings, seed=3)
    again = LatentOdeData("periodic", TINY.settings, seed=3)
    assert (data.num_train, data.num_test, data.window, data.observed) == (16, 4, 10, 5)
    a, b, c = data.train_batch(2), again.train_batch(2), data.train_batch(3)
    for field in ("values", "mask", "eps"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.mask, c.mask)
    assert a.values.shape == (4, 20, 1) and a.eps.shape == (4, 10)
    test, clean = data.test_batch(final=True)
    assert test.values.shape == clean.shape == (4, 20, 1) and not test.eps.any()
    np.testing.assert_array_equal(test.values, data.series.noisy[16:])
    assert data.test_batch(final=False)[0].values.shape[0] == 2  # eval_subset
    np.testing.assert_array_equal(data.test_batch(False)[0].mask, test.mask[:2])


def test_errors_split_unseen_window_points_and_future():
    data = LatentOdeData("periodic", TINY.settings, seed=0)
    batch, clean = data.test_batch(final=True)
    prediction = clean.astype(np.float64).copy()
    prediction[:, data.window:] += 1.0  # future: squared error 1
    unseen_window = (batch.mask < 0.5)
    unseen_window[:, data.window:] = False
    prediction[unseen_window] += 2.0  # unseen window points: squared error 4
    got = data.errors(prediction, clean, batch.mask)
    assert got["mse_extrap"] == pytest.approx(1.0)
    assert got["mse_interp"] == pytest.approx(4.0)
    n_interp, n_future = unseen_window.sum(), clean.shape[0] * (data.num_points - data.window)
    assert got["mse"] == pytest.approx((4.0 * n_interp + n_future) / (n_interp + n_future))


def test_table2_rmse_is_over_the_100_future_points():
    """Chen et al. Sec. 5.1: "predictive RMSE ... on 100 time points extending beyond those that
    were used for training": rmse_obs{n} over the future half, rmse_window_obs{n} the window."""
    data = LatentOdeData("spirals", {**TINY.settings, "num_series": 20, "num_points": 200}, 0)
    assert data.window == 100

    def predict(batch):
        prediction = data.series.clean[data.num_train:].astype(np.float64).copy()
        prediction[:, data.window:] += 3.0  # future: squared error 9 per coordinate
        prediction[:, :data.window] += 0.5  # window: squared error 0.25
        return prediction, 1.0

    got = data.evaluate(predict, final=True).metrics
    for n in (30, 50, 100):
        assert got[f"rmse_obs{n}"] == pytest.approx(3.0)
        assert got[f"rmse_window_obs{n}"] == pytest.approx(0.5)


def test_settings_bad_input_and_the_paper_budget():
    with pytest.raises(UnknownNameError, match="spirals"):
        resolve_settings("spiral", BUDGETS["quick"].settings)
    for bad in (0, 1.5, "half"):
        with pytest.raises(BenchError, match="observed_fraction"):
            LatentOdeData("periodic", TINY.settings, 0, observed_fraction=bad)
    spirals = resolve_settings("spirals", BUDGETS["paper"].settings)
    assert (spirals["steps"], spirals["batch_size"], spirals["rtol"], spirals["atol"]) == (
        4000, None, 1e-7, 1e-9)
    # the paper budget: noise std 0.1, the loss on the window only (Chen et al.'s split)
    assert (spirals["noise_std"], spirals["obs_std"], spirals["loss_points"]) == (
        0.1, 0.1, "window")
    quick = resolve_settings("spirals", BUDGETS["quick"].settings)
    assert (quick["noise_std"], quick["loss_points"]) == (0.3, "all")
    assert (spirals["latent_dim"], spirals["rnn_hidden"], spirals["hidden"]) == (4, 25, 20)
    periodic = resolve_settings("periodic", BUDGETS["paper"].settings)
    assert (periodic["steps"], periodic["batch_size"], periodic["rtol"]) == (8000, 50, 1e-3)
    data = LatentOdeData("spirals", BUDGETS["paper"].settings, 0)
    assert data.batch_size == data.num_train == 800 and data.window == 100
    # Chen et al. Sec. 5.1: dynamics and decoder with one hidden layer of 20 units
    shapes = layer_shapes(data.sizes)
    assert [s for s in shapes if s[0].startswith("dynamics.")] == [
        ("dynamics.fc1", 4, 20), ("dynamics.fc2", 20, 4)]
    assert [s for s in shapes if s[0].startswith("decoder.")] == [
        ("decoder.fc1", 4, 20), ("decoder.fc2", 20, 2)]


def test_initial_weights_seeded_with_torch_default_bounds():
    data = LatentOdeData("periodic", TINY.settings, 0)
    a, b = initial_weights(0, data.sizes), initial_weights(1, data.sizes)
    w = a["dynamics.fc2.weight"]
    assert w.shape == (100, 100) and w.dtype == np.float32
    assert np.abs(w).max() <= 1 / math.sqrt(100) and np.abs(w).max() > 0.09
    assert a["encoder.i2h.weight"].shape == (20, 1 + 1 + 20)
    assert not np.array_equal(w, b["dynamics.fc2.weight"])


def test_discrete_backends_are_unsupported_with_a_reason(registry):
    for backend in registry.backends.values():
        support = LatentOdeSuite().supports(backend)
        assert bool(support) == bool(getattr(backend, "continuous_time", False)), backend.name
        if not support:
            assert "irregular" in support.reason and "torch-adjoint" in support.reason


# -- the torch model -------------------------------------------------------------------------------


def _model(backend, data):
    from bench.suites.latent_ode_torch import build_model

    return build_model(backend, data, seed=0)


def _accurate(dataset="periodic", **extra):
    return LatentOdeData(dataset, {**TINY.settings, "rtol": 1e-7, "atol": 1e-9, **extra}, 0)


def test_trajectories_at_irregular_times_agree_across_torch_backends(backends):
    """Same weights, same z0: the decoded series at the irregular times agree (adaptive backends
    to their tolerance, fixed-step RK4 to its truncation error), and equal a long Euler solve."""
    import torch

    data = _accurate()
    z0 = torch.from_numpy(np.random.default_rng(1).standard_normal((3, 10)).astype(np.float32))
    out = {}
    for name in ("torch-direct", "torch-adjoint", "rknet"):
        model = _model(_backend(backends, name), data)
        with torch.no_grad():
            out[name] = model.decode(z0).numpy()
        assert out[name].shape == (3, 20, 1)
    # a reference by hand: 20000 Euler steps of the same dynamics through every time
    dyn = model.dynamics
    times = np.concatenate([[0.0], data.times]).astype(np.float64)
    z, zs = z0.double(), []
    with torch.no_grad():
        dyn64 = dyn.double()
        for t0, t1 in zip(times[:-1], times[1:], strict=True):
            n = max(1, int(math.ceil((t1 - t0) / 2.5e-4)))
            for _ in range(n):
                z = z + (t1 - t0) / n * dyn64(None, z)
            zs.append(z)
        reference = model.decoder.double()(torch.stack(zs)).transpose(0, 1).numpy()
    np.testing.assert_allclose(out["torch-direct"], out["torch-adjoint"], atol=1e-5)
    np.testing.assert_allclose(out["torch-direct"], reference, atol=2e-3)
    np.testing.assert_allclose(out["rknet"], out["torch-direct"], atol=2e-3)
    assert np.abs(out["torch-direct"] - out["torch-direct"][:, :1]).max() > 1e-2  # it moves


def test_same_initial_weights_in_every_torch_model(backends):
    data = _accurate()
    reference = initial_weights(0, data.sizes)
    for name in ("torch-direct", "torch-adjoint", "rknet"):
        model = _model(_backend(backends, name), data)
        named = {**{f"encoder.{k}": v for k, v in model.encoder.named_parameters()},
                 **{f"dynamics.{k}": v for k, v in model.dynamics.named_parameters()},
                 **{f"decoder.{k}": v for k, v in model.decoder.named_parameters()}}
        assert set(named) == set(reference)
        for k, v in reference.items():
            np.testing.assert_array_equal(named[k].detach().numpy(), v)


def test_adjoint_and_direct_elbo_gradients_agree(backends):
    import torch

    data = _accurate()
    batch = data.train_batch(0)
    grads, losses = [], []
    for name in ("torch-direct", "torch-adjoint"):
        model = _model(_backend(backends, name), data)
        tensors = [torch.from_numpy(a) for a in (batch.values, batch.mask, batch.eps)]
        loss = model.negative_elbo(*tensors)
        loss.backward()
        losses.append(float(loss.detach()))
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    np.testing.assert_allclose(grads[1].numpy(), grads[0].numpy(), rtol=1e-3,
                               atol=1e-3 * float(grads[0].abs().max()))


def test_the_encoder_ignores_unobserved_points(backends):
    """Changing a value the mask hides changes nothing; changing an observed one does."""
    import torch

    data = _accurate()
    model = _model(_backend(backends, "torch-direct"), data)
    batch, _ = data.test_batch(final=True)
    values, mask = torch.from_numpy(batch.values.copy()), torch.from_numpy(batch.mask)
    with torch.no_grad():
        mean, _ = model.posterior(values, mask)
        hidden = (mask[0] < 0.5).nonzero()[0, 0]
        seen = (mask[0] > 0.5).nonzero()[0, 0]
        changed = values.clone()
        changed[0, hidden] += 5.0
        np.testing.assert_array_equal(model.posterior(changed, mask)[0].numpy(), mean.numpy())
        changed[0, seen] += 5.0
        assert not torch.equal(model.posterior(changed, mask)[0][0], mean[0])


# -- cells end to end ------------------------------------------------------------------------------


def _run(backend, tmp_path, budget=TINY, options=(("dataset", "periodic"),)):
    suite = LatentOdeSuite()
    suite.budgets = {**BUDGETS, budget.name: budget}
    spec = CellSpec("latent-ode", backend.name, budget.name, 0, "cpu", tuple(options))
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
    for key in ("mse", "mse_interp", "mse_extrap"):
        assert math.isfinite(row.metrics[key]) and row.metrics[key] > 0
    assert row.metric_name == "mse" and row.metrics["nfe_eval_forward"] > 0
    assert row.nfe_forward > 0 and row.nfe_backward > 0 and row.train_steps == 3
    assert row.saved_for_backward_bytes > 0 and row.memory_step_nfe_forward > 0
    assert row.params == sum(v.size for v in initial_weights(0, _accurate().sizes).values())
    assert "5 of 10 window points observed" in row.notes
    trace = json.loads((work / "trace.json").read_text())
    assert [e["step"] for e in trace["evaluations"] if not e["final"]] == [2]
    assert (work / "latent_ode_periodic.png").stat().st_size > 1000


def test_spirals_cell_and_bad_options(backends, tmp_path):
    backend = _backend(backends, "torch-direct")
    row, work = _run(backend, tmp_path / "a", options=(("observed_fraction", 1.0),))
    _ok(row, work)
    assert row.metrics["mse_interp"] > 0 and "reconstruction error" in row.notes
    assert (work / "latent_ode_spirals.png").exists()
    row, _ = _run(backend, tmp_path / "b", options=(("dataset", "sprials"),))
    assert row.status == "failed" and "spirals" in row.error and "periodic" in row.error
    row, _ = _run(backend, tmp_path / "c", options=(("observed", 3),))
    assert row.status == "failed" and "observed_fraction" in row.error


def test_smoke_budget_torch_rknet(backends, tmp_path):
    row, work = _run(_backend(backends, "rknet"), tmp_path, budget=BUDGETS["smoke"],
                     options=())
    _ok(row, work)
    assert math.isfinite(row.metrics["mse"]) and row.nfe_forward > 0
    assert {"rmse_obs30", "rmse_obs50", "rmse_obs100"} <= set(row.metrics)
    assert not (work / "latent_ode_periodic.png").exists()  # smoke draws no plot


@pytest.mark.slow
def test_training_lowers_the_error(backends, tmp_path):
    budget = Budget("short", "test", {**BUDGETS["quick"].settings, "num_series": 300,
                                      "num_points": 60, "steps": 150, "batch_size": 50,
                                      "eval_every": None})
    untrained = LatentOdeData("spirals", budget.settings, 0)
    from bench.suites.latent_ode_torch import LatentOdeTorchTask

    row, work = _run(_backend(backends, "torch-direct"), tmp_path, budget=budget, options=())
    _ok(row, work)
    trace = json.loads((work / "trace.json").read_text())
    losses = [s["loss"] for s in trace["steps"]]
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])
    ctx = type("Ctx", (), {"backend": _backend(backends, "torch-direct"), "seed": 0,
                           "device": "cpu"})()
    before = LatentOdeTorchTask(ctx, untrained).evaluate(final=True).metrics["mse"]
    assert row.metrics["mse"] < 0.7 * before, (row.metrics, before)


# -- JAX -------------------------------------------------------------------------------------------


def test_jax_model_matches_the_torch_model(backends, jax_backends):
    """Same neutral weights and batch: the JAX encoder, latent field and decoder give the torch
    values, and the JAX negative ELBO through a diffrax solve equals torch's."""
    torch = pytest.importorskip("torch")
    import jax.numpy as jnp
    from bench.suites import latent_ode_jax as lj

    data = _accurate()
    torch_model = _model(_backend(backends, "torch-direct"), data)
    jax_model = lj.load_neutral_weights(lj.LatentOdeModel(data.sizes),
                                        initial_weights(0, data.sizes))
    batch, _ = data.test_batch(final=True)
    with torch.no_grad():
        mean_t, logvar_t = torch_model.posterior(torch.from_numpy(batch.values),
                                                 torch.from_numpy(batch.mask))
        field_t = torch_model.dynamics(None, mean_t).numpy()
        decoded_t = torch_model.decoder(mean_t).numpy()
    mean_j, logvar_j = jax_model.posterior(jnp.asarray(batch.values), jnp.asarray(batch.mask),
                                           jnp.asarray(data.times), data.window)
    np.testing.assert_allclose(np.asarray(mean_j), mean_t.numpy(), atol=1e-5)
    np.testing.assert_allclose(np.asarray(logvar_j), logvar_t.numpy(), atol=1e-5)
    field_j = lj.latent_field(0.0, mean_j, jax_model.dynamics())
    np.testing.assert_allclose(np.asarray(field_j), field_t, atol=1e-5)
    np.testing.assert_allclose(np.asarray(jax_model.decode(mean_j)), decoded_t, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["diffrax-backsolve", "diffrax-checkpoint", "jax-rknet"])
def test_jax_tiny_cell_end_to_end_and_first_loss_equals_torch(backends, jax_backends, tmp_path,
                                                               name):
    if name not in jax_backends:
        pytest.skip(f"backend {name} is not registered")
    row, work = _run(jax_backends[name], tmp_path / "jax")
    _ok(row, work)
    assert math.isfinite(row.metrics["mse"]) and row.nfe_forward > 0
    assert (work / "latent_ode_periodic.png").exists()
    twin = "rknet" if name == "jax-rknet" else "torch-direct"
    torch_row, torch_work = _run(_backend(backends, twin), tmp_path / "torch")
    _ok(torch_row, torch_work)
    assert row.params == torch_row.params
    first = [json.loads((w / "trace.json").read_text())["steps"][0]["loss"]
             for w in (work, torch_work)]
    assert first[0] == pytest.approx(first[1], rel=1e-3)


# -- the ODE-RNN encoder ---------------------------------------------------------------------------


def _ode_rnn(**extra):
    return LatentOdeData("periodic", {**TINY.settings, "rtol": 1e-7, "atol": 1e-9, **extra}, 0,
                         encoder="ode-rnn")


def test_ode_rnn_weights_extend_the_rnn_ones():
    rnn, ode = initial_weights(0, _accurate().sizes), initial_weights(0, _ode_rnn().sizes)
    assert set(ode) - set(rnn) == {"encoder.ode.fc1.weight", "encoder.ode.fc1.bias",
                                   "encoder.ode.fc2.weight", "encoder.ode.fc2.bias"}
    for k, v in rnn.items():  # drawn first: the other layers do not depend on the encoder
        np.testing.assert_array_equal(ode[k], v)
    with pytest.raises(UnknownNameError, match="ode-rnn"):
        LatentOdeData("periodic", TINY.settings, 0, encoder="odernn")


def test_ode_rnn_with_a_zero_field_is_the_rnn(backends):
    """With fc2 = 0 the hidden state does not move between observations: the RNN's posterior."""
    import torch

    data = _ode_rnn()
    batch, _ = data.test_batch(final=True)
    values, mask = torch.from_numpy(batch.values), torch.from_numpy(batch.mask)
    rnn_model = _model(_backend(backends, "torch-direct"), _accurate())
    model = _model(_backend(backends, "torch-direct"), data)
    with torch.no_grad():
        expected = rnn_model.posterior(values, mask)[0]
        moved = model.posterior(values, mask)[0]
        assert not torch.allclose(moved, expected, atol=1e-4)  # the field does move h
        model.encoder_ode.fc2.weight.zero_()
        model.encoder_ode.fc2.bias.zero_()
        np.testing.assert_allclose(model.posterior(values, mask)[0].numpy(), expected.numpy(),
                                   atol=1e-6)
    counts = [block.pop_stats().nfe_forward for block in model.blocks()]
    assert counts[1] >= 2 * 9  # one solve per gap of the 10-point window


def test_ode_rnn_adjoint_and_direct_gradients_agree(backends):
    import torch

    data = _ode_rnn()
    batch = data.train_batch(0)
    grads = []
    for name in ("torch-direct", "torch-adjoint"):
        model = _model(_backend(backends, name), data)
        model.negative_elbo(*[torch.from_numpy(a) for a in
                              (batch.values, batch.mask, batch.eps)]).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
        ode_grad = model.encoder_ode.fc1.weight.grad
        assert ode_grad is not None and float(ode_grad.abs().max()) > 0
    np.testing.assert_allclose(grads[1].numpy(), grads[0].numpy(), rtol=1e-3,
                               atol=1e-3 * float(grads[0].abs().max()))


@pytest.mark.parametrize("name", ["torch-direct", "rknet"])
def test_ode_rnn_cell_end_to_end(backends, tmp_path, name):
    backend = _backend(backends, name)
    row, work = _run(backend, tmp_path / "ode", options=(("dataset", "periodic"),
                                                          ("encoder", "ode-rnn")))
    _ok(row, work)
    plain, _ = _run(backend, tmp_path / "rnn")
    assert math.isfinite(row.metrics["mse"]) and "ode-rnn encoder" in row.notes
    assert row.params == plain.params + 2 * 20 * 100 + 100 + 20
    assert row.nfe_forward > plain.nfe_forward  # the encoder's solves count too
    if name == "rknet":  # 9 gaps x 6 RK4 steps x 4 stages on top of the latent ODE's
        assert row.nfe_forward == plain.nfe_forward + 9 * 24


@pytest.mark.slow
def test_jax_ode_rnn_posterior_matches_torch(backends, jax_backends):
    """Same weights, same batch: the JAX ODE-RNN encoder (unrolled, diffrax) equals torch's."""
    torch = pytest.importorskip("torch")
    import jax.numpy as jnp
    from bench.suites import latent_ode_jax as lj

    if "diffrax-backsolve" not in jax_backends:
        pytest.skip("diffrax-backsolve is not registered")
    backend = jax_backends["diffrax-backsolve"]
    from bench.core.interfaces import Tolerances

    tolerances = Tolerances(1e-7, 1e-9)
    data = _ode_rnn()
    torch_model = _model(_backend(backends, "torch-direct"), data)
    jax_model = lj.load_neutral_weights(lj.LatentOdeModel(data.sizes),
                                        initial_weights(0, data.sizes))
    batch, _ = data.test_batch(final=True)
    gaps = data.encoder_gaps()

    def evolve(h, i):
        state = jnp.concatenate([h, jnp.full((h.shape[0], 1), float(gaps[i]))], axis=1)
        out, _ = backend.solve(lj.encoder_field, jax_model.encoder_ode(), state, 0.0, 1.0,
                               tolerances=tolerances)
        return out[:, :-1]

    with torch.no_grad():
        expected = torch_model.posterior(torch.from_numpy(batch.values),
                                         torch.from_numpy(batch.mask))[0].numpy()
    mean, _ = jax_model.posterior(jnp.asarray(batch.values), jnp.asarray(batch.mask),
                                  jnp.asarray(data.times), data.window, evolve)
    np.testing.assert_allclose(np.asarray(mean), expected, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["diffrax-backsolve", "jax-rknet"])
def test_jax_ode_rnn_cell_first_loss_equals_torch(backends, jax_backends, tmp_path, name):
    if name not in jax_backends:
        pytest.skip(f"backend {name} is not registered")
    options = (("dataset", "periodic"), ("encoder", "ode-rnn"))
    row, work = _run(jax_backends[name], tmp_path / "jax", options=options)
    _ok(row, work)
    twin = "rknet" if name == "jax-rknet" else "torch-direct"
    torch_row, torch_work = _run(_backend(backends, twin), tmp_path / "torch", options=options)
    _ok(torch_row, torch_work)
    assert row.params == torch_row.params
    first = [json.loads((w / "trace.json").read_text())["steps"][0]["loss"]
             for w in (work, torch_work)]
    assert first[0] == pytest.approx(first[1], rel=1e-3)
    if name == "jax-rknet":
        assert row.nfe_forward == torch_row.nfe_forward


def test_noise_std_and_loss_points_options_and_the_noise_floor():
    """Issue 32: noise_std sets the data's and the likelihood's noise; loss_points=window trains
    on the window only (the batch and the training solve stop at its last time); the Table 2
    RMSE is reported against the noiseless and the noisy series, with the noise floor."""
    settings = {**TINY.settings, "num_series": 20, "num_points": 200}
    data = LatentOdeData("spirals", settings, 0, noise_std=0.05, loss_points="window")
    assert data.noise_std == data.obs_std == 0.05 and data.loss_points == "window"
    assert np.std(data.series.noisy - data.series.clean) == pytest.approx(0.05, rel=0.05)
    batch = data.train_batch(0)
    assert batch.values.shape == (4, 100, 2) and batch.mask.shape == (4, 100)
    assert len(data.train_solve_times()[0]) == 100 and len(data.solve_times()[0]) == 200
    every = LatentOdeData("spirals", settings, 0, noise_std=0.05, loss_points="all")
    assert every.train_batch(0).values.shape == (4, 200, 2)
    np.testing.assert_array_equal(every.train_batch(0).values[:, :100], batch.values)
    for bad in (0, -0.1, float("nan")):
        with pytest.raises(BenchError, match="noise_std must be a positive number"):
            LatentOdeData("spirals", settings, 0, noise_std=bad)
    with pytest.raises(UnknownNameError, match="window"):
        LatentOdeData("spirals", settings, 0, loss_points="future")

    def perfect(batch):
        return data.series.clean[data.num_train:], 1.0

    got = data.evaluate(perfect, final=True).metrics
    assert got["rmse_obs100"] == 0.0
    assert got["rmse_noisy_obs100"] == pytest.approx(got["noise_floor"])
    assert got["noise_floor"] == pytest.approx(0.05, rel=0.15)
    assert "noise std 0.05; the loss on the window only" in data.eval_notes(True)


def test_periodic_noise_is_gaussian_around_the_series():
    """Rubanova et al.'s text: Gaussian noise on the observations (their code draws
    noise_weight * U[0, 1), all positive, mean 0.005 at weight 0.01): zero mean, symmetric."""
    s = latent_ode_series.periodic(np.random.default_rng(0), num_series=200, num_points=100)
    noise = (s.noisy - s.clean).astype(np.float64).ravel()
    assert abs(noise.mean()) < 0.0005 and 0.45 < (noise < 0).mean() < 0.55
    assert np.std(noise) == pytest.approx(0.01, rel=0.05)

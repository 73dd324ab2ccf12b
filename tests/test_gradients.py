"""Gradient accuracy (bench.core.gradients): the cell columns against a direct computation, the
torch/JAX references, and `bench gradients` end to end on fake plugins."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest import run_cli
from fake_plugins import A_TRUE, NumpyEulerBackend

from bench.core.gradients import cosine, relative_error
from bench.core.registry import PluginSelection, Registry
from bench.engine.cell import run_cell
from bench.engine.gradient_cell import gradient_setup
from bench.planning.backend_grid import configured_backend
from bench.planning.cells import CellSpec


def _euler_gradient(a: float, steps: int) -> float:
    y, s, _ = NumpyEulerBackend(steps=steps).integrate(a, 1.0, 1.0)
    return 2 * (y - math.exp(A_TRUE)) * s


def test_relative_error_and_cosine():
    ref = np.array([3.0, 4.0])
    assert relative_error(np.array([3.0, 4.5]), ref) == pytest.approx(0.1)
    assert cosine(2 * ref, ref) == pytest.approx(1.0)
    assert cosine(np.array([-4.0, 3.0]), ref) == pytest.approx(0.0)


def test_cell_gradient_error_matches_a_direct_computation(fake_registry, tmp_path):
    spec = CellSpec("linear", "numpy-euler", "smoke", 3, "cpu")
    backend = configured_backend(fake_registry, spec.choice)
    setup = gradient_setup(fake_registry, backend, tmp_path / "gradient_reference")
    work = tmp_path / "cells" / "c"
    work.mkdir(parents=True)
    row = run_cell(spec, backend, fake_registry.suite("linear"), work, gradients=setup)
    assert row.status == "ok", row.error
    a0 = float(np.random.default_rng(3).normal(0.0, 0.1))  # LinearTask's initial weight
    g, ref = _euler_gradient(a0, 20), _euler_gradient(a0, 200)
    assert row.grad_rel_error == pytest.approx(abs(g - ref) / abs(ref), rel=1e-12)
    assert row.grad_cosine == pytest.approx(1.0)
    a1 = row.metrics["a"]  # after training
    g, ref = _euler_gradient(a1, 20), _euler_gradient(a1, 200)
    assert row.grad_rel_error_final == pytest.approx(abs(g - ref) / abs(ref), rel=1e-12)
    assert row.grad_ref_nfe == 200 and row.grad_ref_time_s >= 0
    assert len(list((tmp_path / "gradient_reference").glob("*.npz"))) == 1
    # a second backend of the same suite and seed reads the shared initial-weight reference
    fine = configured_backend(fake_registry, CellSpec("linear", "numpy-euler-fine", "smoke", 3,
                                                      "cpu").choice)
    work2 = tmp_path / "cells" / "d"
    work2.mkdir()
    row2 = run_cell(CellSpec("linear", "numpy-euler-fine", "smoke", 3, "cpu"), fine,
                    fake_registry.suite("linear"), work2,
                    gradients=gradient_setup(fake_registry, fine, tmp_path / "gradient_reference"))
    assert row2.grad_rel_error == 0.0 and row2.grad_ref_time_s == row.grad_ref_time_s
    assert len(list((tmp_path / "gradient_reference").glob("*.npz"))) == 1


def test_torch_cell_gradient_error_matches_a_direct_computation(tmp_path, one_torch_thread):
    """memory-scaling MLP, torch-direct with 4 fixed RK4 steps in float32, against torchdiffeq
    dopri5 at 1e-10 in float64, computed here without the harness."""
    torch = pytest.importorskip("torch")
    torchdiffeq = pytest.importorskip("torchdiffeq")
    from bench.suites.memory_scaling_data import initial_state, initial_weights

    registry = Registry.load(PluginSelection(entry_points=False))
    options = (("batch", 3), ("steps", 4), ("width", 5))
    spec = CellSpec("memory-scaling", "torch-direct", "measure", 1, "cpu", options)
    backend = configured_backend(registry, spec.choice)
    work = tmp_path / "cells" / "c"
    work.mkdir(parents=True)
    row = run_cell(spec, backend, registry.suite("memory-scaling"), work,
                   gradients=gradient_setup(registry, backend, tmp_path / "ref"))
    assert row.status == "ok", row.error

    def gradient(dtype, **solve):
        w = {k: torch.tensor(v, dtype=dtype, requires_grad=True)
             for k, v in initial_weights(5, 1).items()}
        h0 = torch.tensor(initial_state(3, 5, 1), dtype=dtype)

        def f(t, h):
            return torch.tanh(h @ w["net.0.weight"].T + w["net.0.bias"]) @ w["net.2.weight"].T \
                + w["net.2.bias"]

        y = torchdiffeq.odeint(f, h0, torch.tensor([0.0, 1.0], dtype=dtype), **solve)[-1]
        grads = torch.autograd.grad(y.pow(2).mean(), list(w.values()))
        return np.concatenate([g.double().numpy().ravel() for g in grads])

    g = gradient(torch.float32, method="rk4", options={"step_size": 0.25})
    ref = gradient(torch.float64, method="dopri5", rtol=1e-10, atol=1e-10)
    assert row.grad_rel_error == pytest.approx(relative_error(g, ref), rel=1e-3, abs=1e-9)
    assert row.grad_cosine == pytest.approx(cosine(g, ref), abs=1e-9)


@pytest.mark.slow
def test_torch_and_jax_references_agree_and_leave_the_jax_cell_alone(tmp_path):
    """Both frameworks start from identical weights: their float64 references agree to 1e-8;
    the JAX cell's figures are the same with and without the gradient probes (float64 work in
    jax.enable_x64, after every training figure)."""
    pytest.importorskip("torch")
    pytest.importorskip("diffrax")
    registry = Registry.load(PluginSelection(entry_points=False))
    options = (("batch", 16), ("steps", 8), ("width", 8))
    refs = {}
    rows = {}
    for name, with_gradients in (("torch-direct", True), ("diffrax-checkpoint", True),
                                 ("diffrax-checkpoint", False)):
        spec = CellSpec("memory-scaling", name, "measure", 0, "cpu", options)
        backend = configured_backend(registry, spec.choice)
        work = tmp_path / f"{name}-{with_gradients}"
        work.mkdir()
        setup = gradient_setup(registry, backend, tmp_path / f"ref-{name}")
        rows[name, with_gradients] = run_cell(spec, backend, registry.suite("memory-scaling"),
                                              work, gradients=setup if with_gradients else None)
        if with_gradients:
            (path,) = (tmp_path / f"ref-{name}").glob("*.npz")
            refs[name] = np.load(path)["grad"]
    assert relative_error(refs["diffrax-checkpoint"], refs["torch-direct"]) <= 1e-8
    with_probe, without = rows["diffrax-checkpoint", True], rows["diffrax-checkpoint", False]
    assert with_probe.grad_rel_error is not None and without.grad_rel_error is None
    assert with_probe.metrics == without.metrics
    assert (with_probe.nfe_forward, with_probe.nfe_backward) == (without.nfe_forward,
                                                                 without.nfe_backward)


def test_resnet_cells_leave_the_columns_empty_with_the_reason(tmp_path, one_torch_thread):
    pytest.importorskip("torch")
    registry = Registry.load(PluginSelection(entry_points=False))
    spec = CellSpec("memory-scaling", "resnet", "measure", 0, "cpu",
                    (("batch", 2), ("steps", 2), ("width", 3)))
    backend = configured_backend(registry, spec.choice)
    work = tmp_path / "c"
    work.mkdir()
    row = run_cell(spec, backend, registry.suite("memory-scaling"), work,
                   gradients=gradient_setup(registry, backend, tmp_path / "ref"))
    assert row.status == "ok" and row.grad_rel_error is None
    assert "no continuous reference" in row.notes


def test_gradient_study_cli_on_fake_plugins(cli_env, tmp_path):
    ep = tmp_path / "site" / "fake_bench_plugin-0.1.dist-info" / "entry_points.txt"
    ep.write_text(ep.read_text() + "gradfake = fake_gradient_plugins\n")
    cli_env["BENCH_LOAD_PLUGINS"] = "fake,gradfake"
    out = tmp_path / "study"
    result = run_cli(["gradients", "--suite", "linear", "--backends", "numpy-tol",
                      "--tolerances", "1e-2,1e-3", "--scales", "1,2", "--out", str(out)],
                     cli_env, tmp_path)
    assert result.returncode == 0, result.stderr
    import pandas as pd

    table = pd.read_csv(out / "gradients.csv")
    assert len(table) == 2 * 2  # scales x tolerances
    assert set(table.grad_scale) == {1.0, 2.0}
    tol = table[table.backend.str.startswith("numpy-tol")].set_index(["grad_scale", "rtol"])
    for scale in (1.0, 2.0):  # a tighter tolerance: more steps, a smaller error
        assert tol.loc[(scale, 1e-3), "grad_rel_error"] < tol.loc[(scale, 1e-2), "grad_rel_error"]
        assert tol.loc[(scale, 1e-3), "grad_nfe_backward"] == 100
    assert (table.grad_time_s > 0).all() and (table.grad_cosine > 0.99).all()
    # markdown escapes the brackets (they render as brackets, never as a link)
    assert "| linear | numpy-tol\\[rtol=0.001,atol=0.001\\] |" in (
        out / "gradients.md").read_text()
    assert (out / "linear_scale2_gradient_error.png").stat().st_size > 1000
    rows = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    assert all("/gradients/scale=" in r["cell_id"] for r in rows)
    bad = run_cli(["gradients", "--suite", "linear", "--backends", "numpy-euler",
                   "--scales", "1,-4"], cli_env, tmp_path)
    assert bad.returncode == 2 and "--scales" in bad.stderr and "positive" in bad.stderr


def test_a_task_without_a_gradient_probe_says_why_its_columns_are_empty(fake_registry,
                                                                        tmp_path, monkeypatch):
    from fake_plugins import LinearTask

    monkeypatch.setattr(LinearTask, "gradient_probe", lambda self, **kwargs: None)
    spec = CellSpec("linear", "numpy-euler", "smoke", 3, "cpu")
    backend = configured_backend(fake_registry, spec.choice)
    setup = gradient_setup(fake_registry, backend, tmp_path / "gradient_reference")
    row = run_cell(spec, backend, fake_registry.suite("linear"), tmp_path, gradients=setup)
    assert row.status == "ok" and row.grad_rel_error is None
    assert "gradient error not measured: this suite's task has no gradient_probe" in row.notes

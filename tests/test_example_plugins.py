"""The two example backend packages of docs/plugins.md, each a pip-installable project under
examples/: ``example-heun`` (torch, a hand-written fixed-step Heun solver with its own counted
dynamics) and ``example-jax-rk4`` (JAX, a hand-written fixed-step RK4 without diffrax).

They are loaded from their folders (``PluginSelection(extra_modules=...)``), so that the tests
run where the packages are not installed, and once through their ``bench`` entry points from a
pip-like install. Each runs a CNF smoke cell, and the row's NFE are checked against the solver:
Heun makes exactly 2 evaluations a step, RK4 exactly 4, and backpropagation one vector-Jacobian
product per evaluation.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest
from test_example_backend import install_like_pip

from bench.core.availability import missing_modules
from bench.core.registry import PluginSelection, Registry
from bench.engine.cell import run_cell
from bench.planning.cells import CellSpec

ROOT = Path(__file__).resolve().parents[1]
HEUN = ROOT / "examples" / "bench_example_torch_heun"
JAX = ROOT / "examples" / "bench_example_jax"


@pytest.fixture
def examples_on_path(monkeypatch):
    """Both example folders on sys.path, as a checkout without their install has them."""
    for folder in (HEUN, JAX):
        monkeypatch.syspath_prepend(str(folder))
    importlib.invalidate_caches()


def _registry() -> Registry:
    registry = Registry.load(PluginSelection(
        builtins=True, entry_points=False,
        extra_modules=("bench_example_torch_heun", "bench_example_jax")))
    assert not registry.load_errors, registry.load_errors
    return registry


def test_the_examples_declare_a_bench_entry_point():
    tomllib = pytest.importorskip("tomllib")
    for folder, entry_points in ((HEUN, {"example_heun": "bench_example_torch_heun"}),
                                 (JAX, {"example_jax_rk4": "bench_example_jax"})):
        meta = tomllib.loads((folder / "pyproject.toml").read_text())
        assert meta["project"]["entry-points"]["bench"] == entry_points


def test_the_examples_register_through_their_hooks(examples_on_path):
    registry = _registry()
    heun, rk4 = registry.backend("example-heun"), registry.backend("example-jax-rk4")
    assert (heun.framework, heun.solver, heun.adaptive, heun.rtol) == (
        "torch", "heun-fixed", False, None)
    assert (rk4.framework, rk4.solver, rk4.adaptive, rk4.rtol) == (
        "jax", "rk4-classical-fixed", False, None)
    assert registry.origin["example-heun"] == "bench_example_torch_heun"
    for backend in (heun, rk4):  # their parameter, declared with OptionSpec
        assert [spec.name for spec in backend.parameters] == ["steps"]
        assert backend.configure({"steps": 3}).steps == 3
        missing = missing_modules(backend.required_modules)  # torch or jax: one extra may lack it
        assert backend.check_available() == (
            f"{missing[0]} is not installed: {backend.install_hint}" if missing else None)
        assert not backend.in_all  # examples: run by name only


def test_the_installed_examples_are_found_through_their_entry_points(tmp_path, monkeypatch):
    site = tmp_path / "site"
    for project in (HEUN, JAX):
        install_like_pip(project, site)
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    registry = Registry.load(PluginSelection(builtins=False,
                                             only=frozenset({"example_heun", "example_jax_rk4"})))
    assert not registry.load_errors, registry.load_errors
    assert registry.origin == {"example-heun": "example_heun",
                               "example-jax-rk4": "example_jax_rk4"}


def _dynamics_decay(time_dependent: bool):
    import torch

    class Decay(torch.nn.Module):
        """dy/dt = -a y with a learnable a (records the t it is called with)."""

        def __init__(self) -> None:
            super().__init__()
            self.a = torch.nn.Parameter(torch.tensor(1.0))
            self.seen: list = []

        def forward(self, t, y):
            self.seen.append(t)
            return -self.a * y

    return Decay()


def test_heun_block_integrates_counts_and_keeps_the_contract(examples_on_path):
    torch = pytest.importorskip("torch")
    from bench_example_torch_heun import HeunBackend

    block = HeunBackend(steps=5).ode_block(_dynamics_decay, 0.0, 1.0)
    dynamics = block.func.dynamics
    assert list(block.parameters()) == [dynamics.a]  # the dynamics' own tensors, nothing else
    y0 = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    y1 = block(y0)
    h = 0.2
    assert torch.allclose(y1, y0 * (1 - h + h * h / 2) ** 5)  # Heun's amplification factor
    assert all(t.ndim == 0 and t.dtype == torch.float64 for t in dynamics.seen)  # 0-dim t
    forward = block.pop_stats()
    assert (forward.nfe_forward, forward.steps_accepted, forward.steps_rejected) == (10, 5, 0)
    y1.sum().backward()
    backward = block.pop_stats()
    assert (backward.nfe_forward, backward.nfe_backward) == (0, 10)  # one VJP per evaluation
    # time-major trajectory: (len(ts), *y0.shape), the first entry y0
    ts = torch.linspace(0.0, 1.0, 3)
    ys = block(y0, times=ts)
    assert ys.shape == (3, 1, 2) and torch.equal(ys[0], y0)
    assert block.pop_stats().nfe_forward == 2 * 2 * 3  # 2 intervals of ceil(0.5 / 0.2) steps
    # backwards in time (t1 < t0): undoes the forward solve to Heun's accuracy
    back = HeunBackend(steps=50).ode_block(lambda _: dynamics, 1.0, 0.0)
    assert torch.allclose(back(y0 * np.exp(-1.0)), y0, rtol=1e-4)


def test_jax_rk4_solve_integrates_counts_and_keeps_the_contract(examples_on_path):
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp
    from bench_example_jax import Rk4Backend

    backend = Rk4Backend(steps=4)

    def f(t, y, a):
        assert jnp.ndim(t) == 0
        return jax.tree_util.tree_map(lambda leaf: -a * leaf, y)

    y0 = (jnp.ones(3), jnp.full((2, 2), 2.0))  # any pytree
    y1, stats = jax.jit(lambda a, y0: backend.solve(f, a, y0, 0.0, 1.0))(1.0, y0)
    h = 0.25
    factor = (1 - h + h**2 / 2 - h**3 / 6 + h**4 / 24) ** 4  # RK4's amplification factor
    np.testing.assert_allclose(y1[1], 2.0 * factor, rtol=1e-6)
    assert {k: int(v) for k, v in stats.items()} == {
        "nfe_forward": 16, "num_steps": 4, "num_accepted_steps": 4, "num_rejected_steps": 0,
        "nfe_backward": 16}
    ts = jnp.linspace(0.0, 1.0, 5)
    ys, stats = backend.solve(f, 1.0, y0, 0.0, 1.0, ts=ts)
    assert ys[0].shape == (5, 3) and ys[1].shape == (5, 2, 2)  # time-major
    np.testing.assert_allclose(ys[1][0], y0[1])
    assert int(stats["nfe_forward"]) == 4 * 4  # 4 intervals of one step each
    grad = jax.grad(lambda a: backend.solve(f, a, y0, 0.0, 1.0)[0][0].sum())(1.0)
    np.testing.assert_allclose(grad, -3.0 * np.exp(-1.0), rtol=1e-3)
    back, _ = backend.solve(f, 1.0, y1, 1.0, 0.0, fixed_steps=40)  # backwards in time
    np.testing.assert_allclose(back[1], y0[1], rtol=1e-3)


def _cnf_smoke_row(registry: Registry, label: str, params: tuple, tmp_path: Path):
    from bench.planning.backend_grid import BackendChoice, configured_backend

    backend = configured_backend(registry, BackendChoice(label, params))
    spec = CellSpec("cnf", backend.name, "smoke", 0, "cpu")
    row = run_cell(spec, backend, registry.suite("cnf"), tmp_path, log=lambda _: None)
    log = tmp_path / "error.log"
    assert row.status == "ok", log.read_text() if log.exists() else row.error
    return row


def test_heun_runs_a_cnf_smoke_cell_with_exact_nfe(examples_on_path, tmp_path,
                                                    one_torch_thread):
    """cnf smoke trains the forward block once a step: 2 evaluations per Heun step, each
    backpropagated once; the row records no tolerances for a fixed-step solver."""
    pytest.importorskip("torch")
    row = _cnf_smoke_row(_registry(), "example-heun", (("steps", 5),), tmp_path)
    assert (row.solver, row.nfe_forward, row.nfe_backward) == ("heun-fixed", 10, 10)
    assert (row.steps_accepted, row.steps_rejected) == (5, 0)
    assert row.rtol is None and row.atol is None
    assert row.memory_step_nfe_forward == 10


@pytest.mark.slow  # time to answer (issue 34): among the slowest fast tests (--durations)
def test_jax_rk4_runs_a_cnf_smoke_cell_with_exact_nfe(examples_on_path, tmp_path):
    """4 evaluations per RK4 step, counted inside the jitted step and recorded per solve."""
    pytest.importorskip("jax")
    row = _cnf_smoke_row(_registry(), "example-jax-rk4", (("steps", 3),), tmp_path)
    assert (row.solver, row.nfe_forward, row.nfe_backward) == ("rk4-classical-fixed", 12, 12)
    assert (row.steps_accepted, row.steps_rejected) == (3, 0)
    assert row.rtol is None


def test_the_examples_import_without_their_framework(examples_on_path):
    """The registry imports plugin modules where torch or jax is missing: importing the
    examples' plugin modules imports neither."""
    import subprocess

    code = ("import sys; import bench_example_torch_heun, bench_example_jax; "
            "print(sorted(m for m in ('torch', 'jax') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env={"PYTHONPATH": f"{HEUN}:{JAX}",
                                           "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"

"""The backends over other libraries (torchode, torchode-backsolve: torchode; mali, aca:
TorchDiffEqPack) and torchdiffeq's last-step rule, against the contract of
``bench.frameworks.torch``: every count checked against an independent counter in the dynamics
and against each library's own step rule, gradients against central finite differences,
trajectories against the exact solution, fixed-step depths, backwards solves, availability and
the parameters' checks. Tiny problems in float64 (TorchDiffEqPack keeps its times in float32,
exact for the times used here)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchdiffeq")

from torch import nn  # noqa: E402

from bench.core.errors import BenchError  # noqa: E402
from bench.core.interfaces import Tolerances  # noqa: E402
from bench.core.registry import PluginSelection, Registry  # noqa: E402

F64 = torch.float64
PLUGINS = ("bench.plugins.torch_adjoint", "bench.plugins.torch_direct",
           "bench.plugins.torchode_backends", "bench.plugins.torchdiffeqpack_backends")
NEW = ("torchode", "torchode-backsolve", "mali", "aca")


@pytest.fixture(scope="module")
def backends():
    registry = Registry.load(PluginSelection(builtins=False, entry_points=False,
                                             extra_modules=PLUGINS))
    assert not registry.load_errors
    return registry.backends


def _need(name: str) -> None:
    pytest.importorskip("torchode" if name.startswith("torchode") else "TorchDiffEqPack")


class Mlp(nn.Module):
    """tanh MLP dynamics (time-independent unless ``timed``); counts its own calls, its VJPs (by
    its own hook) and the times it was called at, independently of the blocks' counters."""

    def __init__(self, dim: int = 3, hidden: int = 4, seed: int = 0, timed: bool = False,
                 record: bool = False):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w1 = nn.Parameter(torch.randn(hidden, dim, generator=g, dtype=F64) / dim ** 0.5)
        self.w2 = nn.Parameter(torch.randn(dim, hidden, generator=g, dtype=F64) / hidden ** 0.5)
        self.timed, self.record = timed, record  # record: not under torch.func.vmap
        self.calls = 0
        self.vjps = 0
        self.times: list[float] = []

    def _hook(self, grad):
        self.vjps += 1

    def forward(self, t, h):
        assert t.ndim == 0, "the contract: a 0-dim time"
        self.calls += 1
        if self.record:
            self.times.append(float(t.detach()))
        out = torch.tanh(h @ self.w1.T) @ self.w2.T
        if self.timed:
            out = out * (1 + t)
        if out.requires_grad:
            out.register_hook(self._hook)
        return out


class Linear(nn.Module):
    """dy/dt = y A^T, exact solution y0 expm(A t)^T."""

    def __init__(self, a):
        super().__init__()
        self.a = nn.Parameter(torch.as_tensor(a, dtype=F64).clone())

    def forward(self, t, h):
        return h @ self.a.T


def _y0(batch: int = 4, dim: int = 3, seed: int = 0):
    return torch.randn(batch, dim, dtype=F64, generator=torch.Generator().manual_seed(seed))


def _run(backend, f, y0, t0=0.0, t1=1.0, tolerances=None, fixed_steps=None):
    block = backend.ode_block(lambda td: f, t0, t1, tolerances=tolerances,
                              fixed_steps=fixed_steps)
    loss = block(y0).pow(2).sum()
    forward = block.pop_stats()
    calls = f.calls
    loss.backward()
    return block, forward, block.pop_stats(), calls


# --- registration, availability, parameters -------------------------------------------------------

def test_the_new_backends_register_with_their_claims_and_methods(backends):
    expected = {"torchode": ("backprop", "O(L)"), "torchode-backsolve": ("adjoint", "O(1)"),
                "mali": ("reversible", "O(1)"), "aca": ("checkpoint-adjoint", "O(L)")}
    for name, (method, claim) in expected.items():
        backend = backends[name]
        assert (backend.framework, backend.gradient_method, backend.memory_claim) == (
            "torch", method, claim)
        assert backend.install_hint and "neural-ode-bench[" in backend.install_hint


def test_a_missing_library_makes_its_backends_unsupported_with_the_hint(backends, monkeypatch):
    import bench.core.availability as availability

    real = availability.missing_modules
    for hidden, names in (("torchode", ("torchode", "torchode-backsolve")),
                          ("TorchDiffEqPack", ("mali", "aca"))):
        monkeypatch.setattr(availability, "missing_modules",
                            lambda mods, h=hidden: [m for m in mods if m == h] + real(
                                [m for m in mods if m != h]))
        for name in names:
            reason = backends[name].check_available()
            assert reason and hidden in reason and "pip install" in reason
        assert backends["torch-direct"].check_available() is None
        monkeypatch.setattr(availability, "missing_modules", real)


def test_bad_combinations_are_refused_and_solvers_a_library_lacks_are_unsupported(backends):
    from bench.suites.cnf import CnfSuite

    with pytest.raises(BenchError, match="per-sample is not possible"):
        backends["torchode-backsolve"].configure({"adjoint": "joint",
                                                  "step_control": "per-sample"})
    with pytest.raises(BenchError, match="fixed steps"):
        backends["torch-direct"].configure({"solver": "rk4", "fixed_steps": 4,
                                            "last_step": "clamp"})
    support = backends["torchode"].configure({"solver": "bosh3"}).supports(CnfSuite())
    assert not support.ok and "not in torchode" in support.reason
    support = backends["aca"].configure({"solver": "rk4"}).supports(CnfSuite())
    assert not support.ok and "fixed-step" in support.reason and "TypeError" in support.reason
    support = backends["aca"].configure({"solver": "tsit5"}).supports(CnfSuite())
    assert not support.ok and "not in TorchDiffEqPack" in support.reason


def test_configuration_records_the_new_parameters(backends):
    assert backends["torch-adjoint"].configure({"last_step": "clamp"}).configuration()[
        "last_step"] == "clamp"
    assert backends["torch-direct"].configuration()["last_step"] == "interpolate"
    joint = backends["torchode-backsolve"].configure({"adjoint": "joint"})
    assert joint.configuration()["step_control"] == "joint"
    assert joint.configuration()["adjoint"] == "joint"
    assert backends["torchode"].configuration()["step_control"] == "per-sample"
    assert backends["mali"].configure({"fixed_steps": 5}).configuration()["fixed_steps"] == 5


# --- torchdiffeq's last step --------------------------------------------------------------------

@pytest.mark.parametrize("name", ["torch-direct", "torch-adjoint"])
def test_clamp_never_evaluates_past_the_end_and_interpolate_does(backends, name):
    """``last_step=clamp`` ends the forward solve on t1 (and the adjoint's reverse solve on t0):
    no evaluation outside [t0, t1]; torchdiffeq's default steps past t1."""
    outside = {}
    for rule in ("interpolate", "clamp"):
        f = Mlp(record=True)
        backend = backends[name].configure({"last_step": rule})
        _run(backend, f, _y0(), tolerances=Tolerances(1e-4, 1e-4))
        outside[rule] = [t for t in f.times if not -1e-12 <= t <= 1.0 + 1e-12]
    assert outside["interpolate"] and not outside["clamp"]


def test_clamped_trajectory_is_exact_at_every_output_time(backends):
    a = [[-1.0, 0.5, 0.0], [0.0, -0.3, 0.2], [0.1, 0.0, -0.8]]
    ts = torch.tensor([0.0, 0.3, 0.7, 1.0], dtype=F64)
    y0 = _y0()
    block = backends["torch-direct"].configure({"last_step": "clamp"}).ode_block(
        lambda td: Linear(a), tolerances=Tolerances(1e-9, 1e-9))
    out = block(y0, times=ts)
    exact = torch.stack([y0 @ torch.linalg.matrix_exp(torch.tensor(a, dtype=F64) * t).T
                         for t in ts])
    torch.testing.assert_close(out.detach(), exact, rtol=1e-7, atol=1e-8)


# --- counting against independent counters and each library's rule -------------------------------

@pytest.mark.parametrize("step_control", ["per-sample", "joint"])
def test_torchode_dopri5_counts(backends, step_control):
    """torchode's Dopri5: 2 + 6 x (batch-loop iterations) evaluations (f0 and the first-step
    heuristic's probe, then 6 a step, first same as last); backprop makes one VJP per evaluation
    the loss depends on."""
    _need("torchode")
    f = Mlp()
    backend = backends["torchode"].configure({"step_control": step_control})
    _, forward, backward, calls = _run(backend, f, _y0(), tolerances=Tolerances(1e-6, 1e-6))
    steps = forward.steps_accepted + forward.steps_rejected
    assert forward.steps_accepted >= 3
    assert forward.nfe_forward == 2 + 6 * steps == calls - (step_control == "per-sample")
    assert backward.nfe_backward == f.vjps > 0 and backward.backward_calls == 0


def test_torchode_per_sample_steps_differ_and_joint_takes_the_slowest(backends):
    """Per-sample control: a sample that needs more steps takes them alone; the row's steps are
    the batch loop's (the most any sample took). Joint control: one step size for all."""
    _need("torchode")
    y0 = _y0(batch=4)
    y0[0] *= 20  # a stiffer sample
    steps = {}
    for control in ("per-sample", "joint"):
        backend = backends["torchode"].configure({"step_control": control})
        _, forward, _, _ = _run(backend, Mlp(hidden=8), y0, tolerances=Tolerances(1e-7, 1e-7))
        steps[control] = forward.steps_accepted + forward.steps_rejected
    import torchode as to

    term = to.ODETerm(lambda t, y: torch.tanh(y @ Mlp(hidden=8).w1.T) @ Mlp(hidden=8).w2.T)
    solver = to.AutoDiffAdjoint(to.Dopri5(term=term),
                                to.IntegralController(atol=1e-7, rtol=1e-7, term=term))
    with torch.no_grad():
        sol = solver.solve(to.InitialValueProblem(y0=y0, t_start=torch.zeros(4, dtype=F64),
                                                  t_end=torch.ones(4, dtype=F64)))
    per_sample = sol.stats["n_steps"]
    assert per_sample.min() < per_sample.max()  # the samples do take their own steps
    assert steps["per-sample"] == int(per_sample.max())
    assert steps["joint"] >= steps["per-sample"]


@pytest.mark.parametrize("adjoint", ["backsolve", "joint"])
def test_torchode_backsolve_counts_its_reverse_solve(backends, adjoint):
    """The continuous adjoint: no graph through the forward solve; every evaluation of the
    augmented dynamics in the reverse solve is one call of f and one VJP, counted once each."""
    _need("torchode")
    f = Mlp()
    backend = backends["torchode-backsolve"].configure({"adjoint": adjoint})
    _, forward, backward, calls = _run(backend, f, _y0(), tolerances=Tolerances(1e-6, 1e-6))
    probe = adjoint == "backsolve"  # per-sample: the block's one time-dependence probe
    assert forward.nfe_forward == calls - probe == 2 + 6 * (forward.steps_accepted
                                                            + forward.steps_rejected)
    assert backward.nfe_backward == backward.backward_calls == f.calls - calls == f.vjps > 0
    assert (backward.nfe_backward - 2) % 6 == 0


def test_mali_counts(backends):
    """MALI on N fixed ALF steps: forward v0 = f(y0) and one evaluation a step; backward
    f(t1) for dL/dt1, then per step one inverse evaluation and one re-evaluation with its graph
    (the VJPs: one per step and one through v0)."""
    _need("mali")
    f = Mlp()
    backend = backends["mali"].configure({"fixed_steps": 8})
    _, forward, backward, calls = _run(backend, f, _y0())
    assert forward.nfe_forward == calls == 1 + 8
    assert backward.backward_calls == f.calls - calls == 1 + 2 * 8
    assert backward.nfe_backward == f.vjps == 8 + 1
    assert forward.steps_accepted is None  # TorchDiffEqPack reports no steps


def test_aca_counts_on_the_memory_studys_grid(backends):
    """ACA on L dopri5 steps of an equal grid: TorchDiffEqPack's dopri5 evaluates 7 stages a
    step; the backward pass recomputes the steps (7 L), evaluates f(t1) once, then re-runs each
    step with its graph (7 L) and backpropagates through 6 of its stages (the 7th only feeds
    the error estimate)."""
    _need("aca")
    f = Mlp()
    _, forward, backward, calls = _run(backends["aca"], f, _y0(), fixed_steps=8)
    assert forward.nfe_forward == calls == 7 * 8
    assert backward.backward_calls == f.calls - calls == 14 * 8 + 1
    assert backward.nfe_backward == f.vjps == 6 * 8


@pytest.mark.parametrize("name", NEW)
def test_adaptive_counts_match_the_dynamics_own_counter(backends, name):
    """(A time-dependent f under per-sample control is called once per distinct time: its own
    test below.)"""
    _need(name)
    f = Mlp(timed=not name.startswith("torchode"))
    _, forward, backward, calls = _run(backends[name], f, _y0(),
                                       tolerances=Tolerances(1e-5, 1e-5))
    probe = name.startswith("torchode")  # the per-sample block's one time-dependence probe
    assert forward.nfe_forward == calls - probe > 0
    assert backward.nfe_backward == f.vjps > 0
    assert backward.backward_calls == f.calls - calls


# --- gradients, trajectories, steps ---------------------------------------------------------------

@pytest.mark.parametrize("name, params", [
    ("torchode", {}), ("torchode", {"step_control": "joint"}), ("torchode-backsolve", {}),
    ("torchode-backsolve", {"adjoint": "joint"}),
    ("torchode-backsolve", {"adjoint": "joint", "first_step": 0.05}), ("mali", {}), ("aca", {}),
    ("aca", {"solver": "bosh3"}), ("torch-adjoint", {"last_step": "clamp"}),
])
def test_gradients_match_central_finite_differences(backends, name, params):
    if name in NEW:
        _need(name)
    tol = 1e-8
    backend = backends[name].configure(params)
    f = Mlp(timed=True)
    y0 = _y0()
    block = backend.ode_block(lambda td: f, tolerances=Tolerances(tol, tol))
    block(y0).pow(2).sum().backward()
    grad = f.w1.grad.clone()
    eps = 1e-5
    numeric = torch.zeros_like(grad)
    ref = backends["torch-direct"].configure({"rtol": 1e-11, "atol": 1e-11})
    for index in [(0, 0), (1, 2), (3, 1)]:
        values = []
        for sign in (1, -1):
            with torch.no_grad():
                f.w1[index] += sign * eps
                values.append(float(ref.ode_block(lambda td: f)(y0).pow(2).sum()))
                f.w1[index] -= sign * eps
        numeric[index] = (values[0] - values[1]) / (2 * eps)
        # MALI is a second-order method with a first-order error estimate: its gradient is
        # that of a looser solve
        assert float(grad[index]) == pytest.approx(float(numeric[index]),
                                                   rel=1e-3 if name == "mali" else 1e-5,
                                                   abs=1e-6)


@pytest.mark.parametrize("name", NEW)
def test_trajectories_match_the_exact_solution_forwards_and_backwards(backends, name):
    _need(name)
    a = [[-1.0, 0.5, 0.0], [0.0, -0.3, 0.2], [0.1, 0.0, -0.8]]
    am = torch.tensor(a, dtype=F64)
    y0 = _y0()
    ts = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=F64)
    tol = 1e-9 if name != "mali" else 1e-7
    block = backends[name].ode_block(lambda td: Linear(a), tolerances=Tolerances(tol, tol))
    out = block(y0, times=ts).detach()
    assert out.shape == (4, *y0.shape)
    exact = torch.stack([y0 @ torch.linalg.matrix_exp(am * t).T for t in ts])
    torch.testing.assert_close(out, exact, rtol=1e-4, atol=1e-5)
    back = backends[name].ode_block(lambda td: Linear(a), 1.0, 0.0,
                                    tolerances=Tolerances(tol, tol))
    torch.testing.assert_close(back(y0).detach(), y0 @ torch.linalg.matrix_exp(-am).T,
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("steps", [8, 61, 109])
def test_fixed_steps_give_exactly_L_steps(backends, steps):
    """The memory study's depth L: torchode L Dopri5 steps (1 + 6 L evaluations; summing L
    float32 steps must not cost a spurious extra one), MALI L ALF steps (1 + L), ACA L dopri5
    steps of an equal grid (7 L)."""
    expected = {"torchode": 1 + 6 * steps, "torchode-backsolve": 1 + 6 * steps,
                "torchode-backsolve[adjoint=joint]": 1 + 6 * steps, "mali": 1 + steps,
                "aca": 7 * steps}
    for label, nfe in expected.items():
        name = label.split("[")[0]
        if name.startswith("torchode"):
            pytest.importorskip("torchode")
        else:
            pytest.importorskip("TorchDiffEqPack")
        backend = backends[name].configure({"adjoint": "joint"} if "joint" in label else {})
        f = Mlp()
        block = backend.ode_block(lambda td, f=f: f, fixed_steps=steps)
        block(_y0().float().double())
        counts = block.pop_stats()
        assert counts.nfe_forward == nfe == f.calls, label
        if name.startswith("torchode"):
            assert (counts.steps_accepted, counts.steps_rejected) == (steps, 0)


def test_per_sample_control_calls_time_dependent_dynamics_at_one_time_a_call(backends):
    """torchode evaluates each sample at its own time; a dynamics that uses t is called once per
    distinct time with the samples at that time (a 0-dim t each), and gives the same states as
    solving each sample alone."""
    _need("torchode")
    y0 = _y0(batch=3)
    y0[0] *= 20
    backend = backends["torchode"]
    f = Mlp(timed=True)
    out = backend.ode_block(lambda td: f, tolerances=Tolerances(1e-8, 1e-8))(y0).detach()
    for i in range(3):
        alone = backend.ode_block(lambda td: f, tolerances=Tolerances(1e-8, 1e-8))(y0[i:i + 1])
        torch.testing.assert_close(out[i:i + 1], alone.detach(), rtol=1e-12, atol=1e-12)


def test_per_sample_backsolve_names_the_joint_adjoint_where_vmap_cannot_run_the_dynamics(
        backends):
    """BacksolveAdjoint differentiates each sample under torch.func.vmap, which cannot run a
    GroupNorm (the MNIST ODE-Net's dynamics): the error says so and names adjoint=joint, which
    runs it."""
    _need("torchode")

    class Norm(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = nn.GroupNorm(2, 4).double()
            self.conv = nn.Conv2d(4, 4, 3, padding=1).double()

        def forward(self, t, h):
            return self.conv(torch.relu(self.norm(h)))

    y0 = torch.randn(3, 4, 5, 5, dtype=F64, generator=torch.Generator().manual_seed(0))
    f = Norm()
    block = backends["torchode-backsolve"].ode_block(lambda td: f,
                                                     tolerances=Tolerances(1e-3, 1e-3))
    with pytest.raises(BenchError, match=r"vmap.*adjoint=joint"):
        block(y0).sum().backward()
    joint = backends["torchode-backsolve"].configure({"adjoint": "joint"}).ode_block(
        lambda td: f, tolerances=Tolerances(1e-3, 1e-3))
    joint(y0).sum().backward()
    assert joint.pop_stats().nfe_backward > 0 and f.conv.weight.grad is not None

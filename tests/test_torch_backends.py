"""The four torch backends (torch-adjoint, torch-direct, rknet, resnet) against the contract of
``bench.frameworks.torch``: counts checked against independent counters and the solver's step
counts, gradients against central finite differences, RK4 against its exact update, trajectories
against matrix exponentials, saved-for-backward bytes against depth, devices and availability."""

from __future__ import annotations

import subprocess
import sys
import weakref

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchdiffeq")

from bench.frameworks.torch import (  # noqa: E402
    CudaAllocatorTracker,
    StepCounts,
    TorchBackend,
    metering_saved_tensors,
    run_train_step,
    saved_tensors_meter,
)
from torch import nn  # noqa: E402

from bench.core.errors import BenchError  # noqa: E402
from bench.core.interfaces import StepStats, Tolerances  # noqa: E402
from bench.core.registry import PluginSelection, Registry  # noqa: E402

TORCH_PLUGINS = ("bench.plugins.torch_adjoint", "bench.plugins.torch_direct", "bench.plugins.rknet",
                 "bench.plugins.resnet")
ALL = ("torch-adjoint", "torch-direct", "rknet", "resnet")
F64 = torch.float64


@pytest.fixture(scope="module")
def backends():
    registry = Registry.load(PluginSelection(builtins=False, entry_points=False,
                                             extra_modules=TORCH_PLUGINS))
    assert not registry.load_errors
    return registry.backends


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)  # the random states below are the same in every run


class Mlp(nn.Module):
    """tanh MLP dynamics; counts its own calls and (by its own hook) its VJPs, independently of
    the block's counters."""

    def __init__(self, dim: int = 3, hidden: int = 4, seed: int = 0, dtype=F64):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w1 = nn.Parameter(torch.randn(hidden, dim, generator=g, dtype=dtype) / dim ** 0.5)
        self.w2 = nn.Parameter(torch.randn(dim, hidden, generator=g, dtype=dtype) / hidden ** 0.5)
        self.calls = 0  # a test counter: nn.Module.__setattr__ cost is irrelevant here
        self.vjps = 0

    def _hook(self, grad):
        self.vjps += 1

    def forward(self, t, h):
        self.calls += 1
        out = torch.tanh(h @ self.w1.T) @ self.w2.T
        if out.requires_grad:
            out.register_hook(self._hook)
        return out


class PlainSgd:
    """The optimizer interface run_train_step uses (torch.optim's first construction imports
    torch._dynamo: seconds, once per process, too slow for the fast tests)."""

    def __init__(self, params, lr):
        self.params, self.lr = list(params), lr

    def zero_grad(self, set_to_none=True):
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self):
        for p in self.params:
            p -= self.lr * p.grad


class Linear(nn.Module):
    """dy/dt = y A^T (row-vector states), exact solution y0 expm(A t)^T."""

    def __init__(self, a):
        super().__init__()
        self.a = nn.Parameter(torch.as_tensor(a, dtype=F64).clone())

    def forward(self, t, h):
        return h @ self.a.T


# --- registration, availability, devices ---------------------------------------------------------

def test_registry_shows_the_four_backends_with_their_attributes(backends):
    assert set(backends) == set(ALL)
    got = {n: (b.framework, b.gradient_method, b.solver, b.continuous_time)
           for n, b in backends.items()}
    assert got == {"torch-adjoint": ("torch", "adjoint", "dopri5", True),
                   "torch-direct": ("torch", "backprop", "dopri5", True),
                   "rknet": ("torch", "backprop", "rk4", True),
                   "resnet": ("torch", "backprop", "resnet", False)}
    for backend in backends.values():
        assert isinstance(backend, TorchBackend)
        assert backend.description and "\n" not in backend.description
        assert backend.check_available() is None
    assert (backends["torch-adjoint"].rtol, backends["torch-adjoint"].atol) == (1e-3, 1e-3)
    assert backends["rknet"].steps == 6 and backends["resnet"].blocks == 6


def test_plugin_modules_import_and_report_unavailable_without_torch():
    """The registry imports plugin modules where torch is missing: no import of torch, and
    check_available names what is missing with the install hint."""
    code = f"""
import sys
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'torchdiffeq'):
            raise ImportError('blocked ' + name)
sys.meta_path.insert(0, Blocker())
from bench.core.registry import PluginSelection, Registry
r = Registry.load(PluginSelection(builtins=False, entry_points=False,
                                  extra_modules={TORCH_PLUGINS!r}))
assert not r.load_errors, r.load_errors
assert 'torch' not in sys.modules
for name, backend in sorted(r.backends.items()):
    print(name, '|', backend.check_available())
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    hint = "pip install torch==2.13.0 torchdiffeq (or pip install 'neural-ode-bench[torch]')"
    lines = dict(line.split(" | ") for line in out.stdout.strip().splitlines())
    assert lines == {"resnet": f"torch is not installed: {hint}",
                     "rknet": f"torch is not installed: {hint}",
                     "torch-adjoint": f"torch and torchdiffeq are not installed: {hint}",
                     "torch-direct": f"torch and torchdiffeq are not installed: {hint}"}


def test_missing_torchdiffeq_makes_only_the_torchdiffeq_backends_unavailable(backends,
                                                                              monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "torchdiffeq" else real(name, *a))
    assert backends["torch-direct"].check_available().startswith(
        "torchdiffeq is not installed: pip install torch==2.13.0 torchdiffeq")
    assert backends["rknet"].check_available() is None


def test_devices_on_a_machine_without_cuda(backends):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    backend = backends["torch-direct"]
    with pytest.raises(BenchError, match="CUDA requested but torch sees no GPU"):
        backend.resolve_device("cuda")
    assert backend.resolve_device("auto") == "cpu" and backend.resolve_device("cpu") == "cpu"
    with pytest.raises(BenchError, match="unknown device"):
        backend.resolve_device("tpu")
    assert backend.device_name("cpu").endswith(f", {torch.get_num_threads()} threads")
    backend.synchronize("cpu")
    assert backend.memory_tracker("cpu").method == "cpu_rss_peak_increase"


def test_bad_settings_are_refused(backends):
    from bench.plugins.rknet import RKNetBackend
    from bench.plugins.torch_direct import TorchDirectBackend

    with pytest.raises(BenchError, match="rtol and atol must be positive"):
        TorchDirectBackend(rtol=0.0)
    with pytest.raises(TypeError):
        TorchDirectBackend(tolerance=1e-3)  # unknown keyword arguments raise
    with pytest.raises(BenchError, match="rknet steps must be a positive integer"):
        RKNetBackend(steps=0)
    for name in ALL:
        with pytest.raises(BenchError, match="fixed_steps must be a positive integer"):
            backends[name].ode_block(lambda td: Mlp(), fixed_steps=2.5)


# --- counting -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["torch-adjoint", "torch-direct"])
def test_dopri5_counts_match_step_counts_and_independent_counters(backends, name):
    f = Mlp()
    block = backends[name].ode_block(lambda td: f, 0.0, 1.5, tolerances=Tolerances(1e-5, 1e-5))
    y0 = torch.randn(2, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
    loss = block(y0).pow(2).sum()
    forward = block.pop_stats()
    assert isinstance(forward, StepCounts)
    assert forward.steps_accepted >= 3 and forward.steps_rejected >= 0
    assert forward.nfe_forward == 2 + 6 * (forward.steps_accepted + forward.steps_rejected)
    assert forward.nfe_forward == f.calls
    assert forward.nfe_backward == 0 and forward.backward_calls == 0
    assert block.pop_stats() == StepCounts(0, 0, 0, 0, 0)  # popping zeroes
    f.calls = 0
    loss.backward()
    backward = block.pop_stats()
    assert backward.nfe_forward == 0 and backward.steps_accepted == 0
    assert backward.nfe_backward == f.vjps > 0
    if name == "torch-adjoint":
        # one f call and one VJP per augmented-dynamics evaluation, each counted once; the
        # reverse dopri5 solve follows the same 2 + 6 x steps rule
        assert backward.nfe_backward == backward.backward_calls == f.calls
        assert (backward.nfe_backward - 2) % 6 == 0
    else:
        assert f.calls == 0 and backward.backward_calls == 0
        assert backward.nfe_backward <= forward.nfe_forward


def _solve_counts(backend, f, tolerances=None):
    block = backend.ode_block(lambda td: f, 0.0, 1.5, tolerances=tolerances)
    y0 = torch.randn(2, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
    loss = block(y0).pow(2).sum()
    forward = block.pop_stats()
    loss.backward()
    return forward, block.pop_stats()


@pytest.mark.parametrize("solver, params, per_step, first", [
    # torchdiffeq's adaptive_heun reuses its second stage, f(t0 + h, y0 + h k1), as the next
    # step's first: 1 evaluation a step (diffrax's Heun: 2)
    ("bosh3", {}, 3, 2), ("heun", {}, 1, 2), ("dopri8", {}, None, None),
    ("euler", {"fixed_steps": 7}, 1, 0), ("midpoint", {"fixed_steps": 7}, 2, 0),
    ("rk4", {"fixed_steps": 7}, 4, 0),
])
def test_the_solver_vocabulary_maps_to_torchdiffeq(backends, solver, params, per_step, first):
    """Each name of the shared vocabulary runs torchdiffeq's method of that name (heun:
    adaptive_heun) with its own evaluations per step; fixed-step ones take exactly fixed_steps."""
    backend = backends["torch-direct"].configure({"solver": solver, **params})
    f = Mlp()
    forward, backward = _solve_counts(backend, f, Tolerances(1e-5, 1e-5))
    assert forward.nfe_forward == f.calls > 0 and backward.nfe_backward == f.vjps > 0
    if "fixed_steps" in params:
        assert f.calls == per_step * params["fixed_steps"]
    elif per_step is not None:
        steps = forward.steps_accepted + forward.steps_rejected
        assert steps > 0 and f.calls == first + per_step * steps


def test_a_solver_torchdiffeq_lacks_is_unsupported_with_the_reason(backends):
    from bench.suites.cnf import CnfSuite

    support = backends["torch-adjoint"].configure({"solver": "tsit5"}).supports(CnfSuite())
    assert not support.ok and "torchdiffeq has no tsit5" in support.reason


def test_the_seminorm_adjoint_takes_fewer_backward_evaluations(backends):
    """adjoint_norm=seminorm (torchdiffeq's adjoint_options=dict(norm="seminorm")): the
    parameters' adjoint leaves step-size control, so the reverse solve takes fewer steps; the
    forward solve is unchanged, and the gradient agrees to the tolerance."""
    runs = {}
    for norm in ("default", "seminorm"):
        backend = backends["torch-adjoint"].configure({"adjoint_norm": norm, "rtol": 1e-4,
                                                       "atol": 1e-4})
        f = Mlp(hidden=16)
        with torch.no_grad():  # larger weights: the parameters' adjoint matters (here 128 / 110)
            for p in f.parameters():
                p.mul_(3)
        forward, backward = _solve_counts(backend, f)
        runs[norm] = (forward.nfe_forward, backward.nfe_backward,
                      torch.cat([p.grad.ravel() for p in f.parameters()]))
    assert runs["seminorm"][0] == runs["default"][0]
    assert runs["seminorm"][1] < runs["default"][1]
    torch.testing.assert_close(runs["seminorm"][2], runs["default"][2], rtol=1e-2, atol=1e-3)


def test_reverse_tolerances_reach_the_reverse_solve(backends):
    counts = {}
    for adjoint_rtol in (1e-3, 1e-8):
        backend = backends["torch-adjoint"].configure({"adjoint_rtol": adjoint_rtol,
                                                       "adjoint_atol": adjoint_rtol})
        forward, backward = _solve_counts(backend, Mlp(), Tolerances(1e-4, 1e-4))
        counts[adjoint_rtol] = (forward.nfe_forward, backward.nfe_backward)
    assert counts[1e-3][0] == counts[1e-8][0] and counts[1e-8][1] > counts[1e-3][1]


def test_rejected_steps_are_counted_and_first_step_skips_the_probe():
    from bench.plugins.torch_direct import TorchDirectBackend

    a = [[-30.0, 1.0], [0.0, -0.5]]
    block = TorchDirectBackend(first_step=1.0).ode_block(lambda td: Linear(a),
                                                         tolerances=Tolerances(1e-6, 1e-8))
    block(torch.ones(1, 2, dtype=F64))
    counts = block.pop_stats()
    assert counts.steps_rejected > 0
    assert counts.nfe_forward == 1 + 6 * (counts.steps_accepted + counts.steps_rejected)


def test_make_dynamics_calls_and_untied_resnet(backends):
    for name in ("torch-adjoint", "torch-direct", "rknet"):
        made = []
        backends[name].ode_block(lambda td: made.append(td) or Mlp())  # noqa: B023 - called at once
        assert made == [True], name
    made = []
    block = backends["resnet"].ode_block(lambda td: made.append(td) or Mlp(seed=len(made)))
    assert made == [False] * 6
    assert len({id(p) for p in block.parameters()}) == 12
    block(torch.randn(2, 3, dtype=F64)).sum().backward()
    c = block.pop_stats()
    assert (c.nfe_forward, c.nfe_backward, c.steps_accepted, c.steps_rejected) == (6, 6, 6, 0)


FIXED_CASES = [(name, 3) for name in ALL] + [("torch-adjoint", 61), ("torch-direct", 61)]


@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_fixed_steps_gives_exactly_L_steps_on_every_backend(backends, dtype):
    # L = 61 in float32: torchdiffeq's own step_size grid would take 62 steps
    for name, steps in FIXED_CASES:
        f = Mlp(dtype=dtype)
        block = backends[name].ode_block(lambda td: f, 0.0, 1.0, fixed_steps=steps)  # noqa: B023
        block(torch.randn(2, 3, dtype=dtype)).sum().backward()
        c = block.pop_stats()
        per_step = 1 if name == "resnet" else 4
        calls = per_step * steps * (2 if name == "torch-adjoint" else 1)  # + reverse solve
        assert c.nfe_forward == c.nfe_backward == per_step * steps, (name, steps)
        assert f.calls == calls, (name, steps)
        if name in ("rknet", "resnet"):
            assert c.steps_accepted == steps
        else:  # torchdiffeq's fixed-grid solvers report no steps
            assert c.steps_accepted is None and c.steps_rejected is None


# --- numerics -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, tol", [("torch-adjoint", 1e-6), ("torch-direct", 1e-7),
                                       ("rknet", 1e-7), ("resnet", 1e-7)])
def test_gradients_match_central_finite_differences(backends, name, tol):
    kwargs = {"tolerances": Tolerances(1e-10, 1e-10)} if name.startswith("torch-") else {}
    block = backends[name].ode_block(lambda td: Mlp(seed=1), 0.0, 0.5, **kwargs)
    y0 = torch.randn(2, 3, dtype=F64, generator=torch.Generator().manual_seed(2),
                     requires_grad=True)

    def loss_fn():
        return block(y0).pow(2).sum()

    params = [y0, *block.parameters()]
    grads = torch.autograd.grad(loss_fn(), params)
    eps = 1e-6
    with torch.no_grad():
        for param, grad in zip(params, grads, strict=False):
            flat = param.view(-1)
            for i in (0, flat.numel() - 1):
                old = flat[i].item()
                flat[i] = old + eps
                plus = loss_fn().item()
                flat[i] = old - eps
                minus = loss_fn().item()
                flat[i] = old
                numeric = (plus - minus) / (2 * eps)
                assert grad.view(-1)[i].item() == pytest.approx(numeric, rel=tol, abs=tol)


def test_rknet_is_the_classical_tableau(backends):
    """dy/dt = t^4 over one step is quadrature: classical RK4 is Simpson's rule (1.25 / 6), the
    3/8 rule would give 132 / 648, the exact value is 1/5; f is called at t = 0, 1/2, 1/2, 1."""
    seen = []

    class Quartic(nn.Module):
        def forward(self, t, h):
            seen.append(float(t))
            return torch.ones_like(h) * t ** 4

    block = backends["rknet"].ode_block(lambda td: Quartic(), 0.0, 1.0, fixed_steps=1)
    y1 = block(torch.zeros(1, 1, dtype=F64))
    assert seen == [0.0, 0.5, 0.5, 1.0]
    assert y1.item() == pytest.approx(1.25 / 6, rel=1e-14)


def test_rknet_steps_are_exact_rk4_updates_of_a_linear_ode_and_fourth_order(backends):
    a = torch.tensor([[-0.5, 1.0], [-1.0, -0.5]], dtype=F64)
    y0 = torch.tensor([[1.0, 0.5]], dtype=F64)
    exact = y0 @ torch.linalg.matrix_exp(a).T
    errors = []
    for steps in (4, 8):
        block = backends["rknet"].ode_block(lambda td: Linear(a), fixed_steps=steps)
        y = block(y0)
        c = block.pop_stats()
        assert c.nfe_forward == 4 * steps and c.steps_accepted == steps
        ha = a / steps  # one RK4 step of y' = A y multiplies by the Taylor polynomial of exp(hA)
        update = (torch.eye(2, dtype=F64) + ha + ha @ ha / 2 + ha @ ha @ ha / 6
                  + ha @ ha @ ha @ ha / 24)
        assert torch.allclose(y, y0 @ torch.linalg.matrix_power(update, steps).T,
                              rtol=1e-14, atol=1e-14)
        errors.append((y - exact).abs().max().item())
    assert 13 < errors[0] / errors[1] < 19  # halving h divides the error by about 2^4
    assert backends["rknet"].ode_block(lambda td: Linear(a))(y0).shape == (1, 2)
    assert backends["rknet"].ode_block(lambda td: Linear(a)).pop_stats().nfe_forward == 0


def test_trajectories_match_the_exact_solution_and_resnet_refuses_times(backends):
    a = torch.tensor([[-0.5, 1.0], [-1.0, -0.5]], dtype=F64)
    y0 = torch.tensor([[1.0, 0.5], [0.0, -1.0]], dtype=F64)
    times = torch.tensor([0.0, 0.13, 0.4, 1.1, 2.0], dtype=F64)
    exact = torch.stack([y0 @ torch.linalg.matrix_exp(a * t).T for t in times])
    for name, kwargs, tol in (("torch-adjoint", {"tolerances": Tolerances(1e-8, 1e-8)}, 1e-6),
                              ("torch-direct", {"tolerances": Tolerances(1e-8, 1e-8)}, 1e-6),
                              ("rknet", {"fixed_steps": 40}, 1e-6)):
        block = backends[name].ode_block(lambda td: Linear(a), 0.0, 2.0, **kwargs)
        ys = block(y0, times=times)
        assert ys.shape == (5, 2, 2), name
        assert torch.allclose(ys, exact, rtol=0, atol=tol), name
        assert torch.allclose(block(y0), exact[-1], rtol=0, atol=tol), name
    block = backends["resnet"].ode_block(lambda td: Linear(a))
    with pytest.raises(BenchError, match="resnet has no continuous time"):
        block(y0, times=times)


def test_rknet_float32_output_times_get_whole_steps(backends):
    """linspace(0, 1, 4) in float32 gives intervals of 1/3 +- 3e-8: two steps of 1/6 each, as the
    JAX twin (bench.frameworks.fixed_grid), not a third step for the rounding."""
    from bench.frameworks.fixed_grid import steps_in_interval

    assert [steps_in_interval(x, 1 / 6, 6) for x in (1 / 3 + 3e-8, 1 / 3 - 3e-8, 0.34, 0.0)] == \
        [2, 2, 3, 1]
    assert steps_in_interval(0.5, 0.0, 6) == 6
    block = backends["rknet"].ode_block(lambda td: Mlp(dtype=torch.float32), 0.0, 1.0,
                                        fixed_steps=6)
    ys = block(torch.zeros(2, 3), times=torch.linspace(0.0, 1.0, 4))
    assert ys.shape[0] == 4 and block.pop_stats().steps_accepted == 6


# --- memory ---------------------------------------------------------------------------------------

def test_saved_bytes_grow_with_steps_for_backprop_and_stay_flat_for_the_adjoint(backends):
    def saved(name, steps):
        block = backends[name].ode_block(lambda td: Mlp(dim=16, hidden=32), fixed_steps=steps)
        y0 = torch.randn(64, 16, dtype=F64)
        with saved_tensors_meter(block.parameters()) as meter:
            loss = block(y0).pow(2).sum()  # held for the backward pass when the block ends
        del loss
        return meter.bytes

    flat = saved("torch-adjoint", 4)
    # only y0 and y(t1) (and the times) are saved; the parameters are excluded
    assert 2 * 64 * 16 * 8 <= flat <= 2 * 64 * 16 * 8 + 64
    assert saved("torch-adjoint", 16) == flat
    for name in ("torch-direct", "rknet", "resnet"):
        ratio = saved(name, 16) / saved(name, 4)
        assert 3.5 < ratio < 4.5, (name, ratio)


def test_saved_tensors_meter_counts_each_storage_once_and_excludes_parameters():
    w = nn.Parameter(torch.randn(8, 8, dtype=F64))
    x = torch.randn(4, 8, dtype=F64, requires_grad=True)
    with saved_tensors_meter([w]) as meter:
        y = x @ w  # saves x and w
        z = (x * 2) @ w  # saves x * 2 and w
        dropped = torch.tanh(x * 3).sum()  # a graph built and dropped inside the block
        del dropped
    assert meter.bytes == 2 * x.numel() * 8
    (y.sum() + z.sum()).backward()
    assert torch.allclose(x.grad, 3 * w.sum(1).expand(4, 8))


class TraceDynamics(nn.Module):
    """A CNF-like field: the divergence comes from autograd inside the dynamics (double backward
    when training). Keeps a weak reference to every velocity it computed."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 2)
        self.velocities = []

    def forward(self, t, state):
        training = torch.is_grad_enabled()
        with torch.enable_grad():
            z = state[:, :2]
            if not z.requires_grad:
                z = z.detach().requires_grad_(True)
            dz = torch.tanh(self.lin(z))  # tanh saves its output
            (dz_dz,) = torch.autograd.grad(dz.sum(), z, create_graph=training, retain_graph=True)
        self.velocities.append(weakref.ref(dz))
        out = torch.cat([dz, -dz_dz.sum(1, keepdim=True)], 1)
        return out if training else out.detach()


@pytest.mark.parametrize("name", ["torch-adjoint", "torch-direct", "rknet"])
def test_a_training_step_frees_its_graph(backends, name):
    """The saved-bytes meter once kept saved outputs as the tensors themselves: each held its own
    grad_fn, a reference cycle that leaked every step's graph (4 MiB a step, CNF, adjoint)."""
    dynamics = TraceDynamics()
    block = backends[name].ode_block(lambda td: dynamics, 0.0, 1.0)
    params = list(block.parameters())
    x = torch.randn(16, 3)
    with metering_saved_tensors():  # as in a memory step
        stats = run_train_step([block], lambda: block(x).pow(2).sum(),
                               torch.optim.SGD(params, lr=0.01), params)
    assert stats.nfe_forward > 0 and dynamics.velocities
    alive = sum(ref() is not None for ref in dynamics.velocities)
    assert alive == 0, f"{alive} of {len(dynamics.velocities)} velocities outlived the step"


def test_run_train_step_reads_forward_and_backward_counts_and_updates(backends):
    block = backends["torch-direct"].ode_block(lambda td: Mlp())
    params = list(block.parameters())
    before = [p.detach().clone() for p in params]
    y0 = torch.randn(4, 3, dtype=F64)
    block(y0)  # counted before the step: must not leak into it
    with metering_saved_tensors():
        stats = run_train_step([block], lambda: block(y0).pow(2).mean(),
                               PlainSgd(params, lr=0.1), params)
    assert isinstance(stats, StepStats)
    assert stats.nfe_forward == 2 + 6 * (stats.steps_accepted + stats.steps_rejected)
    assert 0 < stats.nfe_backward <= stats.nfe_forward
    assert stats.saved_for_backward_bytes > 0 and stats.loss > 0
    assert all(not torch.equal(b, p) for b, p in zip(before, params, strict=False))
    assert block.pop_stats() == StepCounts(0, 0, 0, 0, 0)


def test_run_train_step_measures_saved_bytes_only_when_metering(backends):
    block = backends["torch-direct"].ode_block(lambda td: Mlp())
    params = list(block.parameters())
    y0 = torch.randn(4, 3, dtype=F64)
    hooks = []

    def loss():
        hooks.append(torch._C._autograd._top_saved_tensors_default_hooks(True))
        return block(y0).pow(2).mean()

    plain = run_train_step([block], loss, PlainSgd(params, lr=0.1), params)
    with metering_saved_tensors():
        metered = run_train_step([block], loss, PlainSgd(params, lr=0.1), params)
    assert plain.saved_for_backward_bytes is None and metered.saved_for_backward_bytes > 0
    assert hooks[0] is None and hooks[1] is not None
    assert plain.nfe_forward > 0 and metered.nfe_forward > 0


_FIRST_STEP_IMPORTS = """
import sys
from pathlib import Path
from bench.core.interfaces import CellContext
from bench.core.registry import PluginSelection, Registry
registry = Registry.load(PluginSelection(builtins=False, entry_points=False,
                         extra_modules=("bench.plugins.{module}", "bench.suites.memory_scaling")))
suite = registry.suite("memory-scaling")
ctx = CellContext(backend=registry.backend("{backend}"), budget=suite.budgets["measure"], seed=0,
                  device="cpu", work_dir=Path("."),
                  options=dict(steps=2, width=4, batch=4))
task = suite.build_task(ctx)
assert "torchdiffeq" in sys.modules, "torchdiffeq not imported when the task was built"
before = set(sys.modules)
task.train_step(0)
print(sorted(set(sys.modules) - before))
"""


@pytest.mark.parametrize("name", ["torch-direct", "torch-adjoint"])
def test_the_first_timed_step_imports_nothing(name, tmp_path):
    """compile_time_s once was mostly ``import torchdiffeq`` (1.2 s, it pulls in scipy), done
    lazily inside the first timed step: every module a cell needs is imported before the clock."""
    script = _FIRST_STEP_IMPORTS.format(module=name.replace("-", "_"), backend=name)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def _memory_scaling_cell(backend_name, tmp_path, wrap_loss=None, steps=4):
    """A real memory-scaling cell (tiny state) through the core's measured loop."""
    from bench.engine.cell import run_cell
    from bench.planning.cells import CellSpec

    registry = Registry.load(PluginSelection(
        builtins=False, entry_points=False,
        extra_modules=("bench.plugins.torch_adjoint", "bench.plugins.torch_direct",
                       "bench.suites.memory_scaling")))
    suite = registry.suite("memory-scaling")
    build = suite.build_task

    def build_task(ctx):
        task = build(ctx)
        task.num_train_steps = steps
        if wrap_loss is not None:
            task._loss = wrap_loss(task._loss)
        return task

    suite.build_task = build_task
    spec = CellSpec("memory-scaling", backend_name, "measure", 0, "cpu",
                    options=(("steps", 4), ("width", 8), ("batch", 16)))
    return run_cell(spec, registry.backend(backend_name), suite, tmp_path)


@pytest.mark.parametrize("name", ["torch-direct", "torch-adjoint"])
def test_timed_steps_carry_no_saved_tensor_hooks_and_memory_steps_measure_them(name, tmp_path,
                                                                              one_torch_thread):
    """The saved-bytes meter (a Python hook per saved tensor: +26-32% on the CNF's torch-direct
    step) runs only in the memory steps; the row still has the bytes, from those steps."""
    import threading

    seen = []

    def wrap(loss):
        def hooked():
            hooks = torch._C._autograd._top_saved_tensors_default_hooks(True)
            seen.append((threading.current_thread() is threading.main_thread(), hooks))
            return loss()
        return hooked

    row = _memory_scaling_cell(name, tmp_path, wrap)
    assert row.status == "ok", row.error
    timed = [hooks for main, hooks in seen if main]
    memory = [hooks for main, hooks in seen if not main]
    # the 4 timed steps, then the loop-time profile's untimed step (after the memory steps)
    assert len(timed) == 5 and all(hooks is None for hooks in timed)
    # the unmeasured warm-up step and the two memory steps
    assert len(memory) == 3 and all(hooks is not None for hooks in memory)
    assert row.saved_for_backward_bytes > 0
    # fixed rk4 steps: 4 x 4 evaluations in every step, memory steps included
    assert row.memory_step_nfe_forward == row.nfe_forward == 16
    assert row.memory_step_nfe_backward == row.nfe_backward == 16


def test_run_train_step_sums_blocks_and_adjoint_saves_little(backends):
    a = backends["torch-adjoint"].ode_block(lambda td: Mlp(seed=3))
    r = backends["resnet"].ode_block(lambda td: Mlp(seed=4), fixed_steps=2)
    params = [*a.parameters(), *r.parameters()]
    y0 = torch.randn(4, 3, dtype=F64)
    stats = run_train_step([a, r], lambda: r(a(y0)).pow(2).mean(),
                           PlainSgd(params, lr=0.1), params)
    # resnet: 2 forward, 2 backward; the adjoint's backward is a full reverse dopri5 solve
    assert stats.nfe_forward == 2 + 2 + 6 * (stats.steps_accepted - 2 + stats.steps_rejected)
    assert (stats.nfe_backward - 2 - 2) % 6 == 0 and stats.nfe_backward > 4


# --- GPU ------------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", ALL)
def test_cuda_block_runs_synchronised_and_its_memory_is_measured(backends, name):
    backend = backends[name]
    device = backend.resolve_device("cuda")
    assert device == backend.resolve_device("auto") == "cuda"
    assert backend.device_name(device) == torch.cuda.get_device_name(device)
    tracker = backend.memory_tracker(device)
    assert isinstance(tracker, CudaAllocatorTracker)
    assert tracker.method == "cuda_max_memory_allocated"
    block = backend.ode_block(lambda td: Mlp(dim=64, hidden=256, dtype=torch.float32),
                              fixed_steps=8).to(device)
    params = list(block.parameters())
    y0 = torch.randn(4096, 64, device=device)
    tracker.reset()
    stats = run_train_step([block], lambda: block(y0).pow(2).mean(),
                           torch.optim.SGD(params, lr=0.01), params)
    backend.synchronize(device)
    assert tracker.peak_bytes() > 4096 * 64 * 4
    per_step = 1 if name == "resnet" else 4
    assert stats.nfe_forward == stats.nfe_backward == 8 * per_step

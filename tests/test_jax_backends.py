"""The JAX backends (plugins/jax_diffrax.py): availability without jax, devices, the NFE numbers
against explicit counters, parity with torch (torchdiffeq's dopri5 steps, classical RK4 loss and
gradient), no recompilation after the first step, and a cell run by the core.

Compiling a diffrax training step takes a few seconds on a CPU (tracing diffrax dominates): each
backend's step is compiled once per module (``counted`` fixture) and shared by the tests below.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from bench.frameworks.jax import INSTALL_HINT, REQUIRED_MODULES, JaxBackend
from bench.plugins import jax_diffrax

from bench.core.availability import missing_modules
from bench.core.errors import BenchError
from bench.core.interfaces import (
    AbstractSuite,
    AbstractTask,
    Budget,
    CellContext,
    Evaluation,
    StepStats,
)
from bench.core.registry import PluginSelection, Registry
from bench.engine.cell import check_support, run_cell
from bench.planning.cells import CellSpec

ROOT = Path(__file__).resolve().parents[1]
NAMES = ("diffrax-checkpoint", "diffrax-backsolve", "jax-rknet")
T1 = 1.0
RKNET_STEPS = 6  # jax-rknet's default, as torch's rknet
#: For the tests that need the jax extra installed (the others run with the torch extra alone).
needs_jax = pytest.mark.skipif(bool(missing_modules(REQUIRED_MODULES)),
                               reason=f"needs the jax extra: {INSTALL_HINT}")


def backend(name: str, **params) -> JaxBackend:
    """A registered JAX backend, with ``params`` set as a user would (``name[key=value]``)."""
    from bench.plugins.jax_rknet import JaxRkNetBackend

    found = {b.name: b for b in [*jax_diffrax.backends(), JaxRkNetBackend("jax-rknet")]}[name]
    return found.configure(params) if params else found


class JaxToySuite(AbstractSuite):
    """A one-parameter-matrix ODE for the core's loop (and for check_support)."""

    name = "jax-toy"
    metric_name = "loss"
    frameworks = ("jax",)
    budgets = {"smoke": Budget("smoke", "3 steps", {"steps": 3})}

    def build_task(self, ctx: CellContext) -> AbstractTask:
        return JaxToyTask(ctx)


# -------------------------------------------------------------------------------------------------
# Registration and availability (no jax computation)
# -------------------------------------------------------------------------------------------------


def test_backends_are_registered_with_their_methods():
    registry = Registry.load(PluginSelection(builtins=False, entry_points=False,
                                             extra_modules=("bench.plugins.jax_diffrax",
                                                            "bench.plugins.jax_rknet")))
    assert not registry.load_errors
    got = {name: (b.framework, b.gradient_method, b.solver, b.continuous_time)
           for name, b in registry.backends.items()}
    assert got == {
        "diffrax-checkpoint": ("jax", "recursive-checkpoint", "dopri5", True),
        "diffrax-backsolve": ("jax", "adjoint", "dopri5", True),
        "diffrax-direct": ("jax", "backprop", "dopri5", True),
        "jax-rknet": ("jax", "backprop", "rk4", True),
    }
    assert [n for n, b in registry.backends.items() if not b.in_all] == ["diffrax-direct"]
    assert all(b.rtol == b.atol == 1e-3 for b in registry.backends.values())


def test_plugin_modules_do_not_import_jax():
    code = ("import sys, bench.plugins.jax_diffrax, bench.plugins.jax_rknet, "
            "bench.frameworks.jax; "
            "print(sorted(m for m in ('jax', 'diffrax', 'equinox') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("hidden, shown", [
    (("jax", "jaxlib"), "jax"),  # jax is named alone, whatever else is missing
    pytest.param(("diffrax",), "diffrax", marks=needs_jax),  # only diffrax missing: jax is here
])
def test_missing_jax_is_reported_with_the_install_hint(monkeypatch, hidden, shown):
    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        if name.split(".")[0] in hidden:
            return None
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    expected = f"{shown} is not installed: {INSTALL_HINT}"
    assert INSTALL_HINT == "pip install 'neural-ode-bench[jax]'"
    for name in NAMES:
        assert backend(name).check_available() == expected
        assert check_support(backend(name), JaxToySuite()) == expected


@needs_jax
def test_available_here():
    assert all(backend(name).check_available() is None for name in NAMES)


def test_devices_on_a_cpu_only_machine():
    jax = pytest.importorskip("jax")
    b = backend("jax-rknet")
    assert b.resolve_device("cpu") == "cpu"
    assert b.device_name("cpu")
    assert b.memory_tracker("cpu").method == "cpu_rss_peak_increase"
    with pytest.raises(BenchError, match="unknown device"):
        b.resolve_device("tpu7")
    try:
        has_gpu = bool(jax.devices("gpu"))
    except RuntimeError:
        has_gpu = False
    if has_gpu:
        pytest.skip("this machine has a GPU")
    assert b.resolve_device("auto") == "cpu"
    with pytest.raises(BenchError, match="no GPU"):
        b.resolve_device("cuda")
    b.synchronize("cpu")


@pytest.mark.gpu
def test_gpu_device_memory_and_solve():
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    try:
        jax.devices("gpu")
    except RuntimeError:
        pytest.skip("jax sees no GPU (CPU-only jaxlib)")
    from bench.frameworks.jax import jax_device

    for name in NAMES:
        b = backend(name)
        assert b.resolve_device("cuda") == "cuda" and b.resolve_device("auto") == "cuda"
        assert b.device_name("cuda")
        tracker = b.memory_tracker("cuda")
        assert "not" in tracker.method or "since_process_start" in tracker.method
        tracker.reset()
        device = jax_device("cuda")
        p = jax.device_put({"W": jnp.eye(4) * 0.5, "b": jnp.zeros(4)}, device)
        y0 = jax.device_put(jnp.ones((8, 4)), device)
        y, stats = jax.jit(lambda p, y0: b.solve(_raw_dynamics, p, y0, 0.0, 1.0))(p, y0)  # noqa: B023
        b.synchronize("cuda")
        assert y.devices() == {device} and int(stats["nfe_forward"]) > 0
        assert tracker.peak_bytes() is not None


# -------------------------------------------------------------------------------------------------
# A small problem, its counted dynamics, and each backend's compiled step (shared)
# -------------------------------------------------------------------------------------------------


def _problem() -> tuple[dict[str, np.ndarray], np.ndarray]:
    rng = np.random.default_rng(3)
    params = {"W": (rng.normal(size=(4, 4)) * 0.8).astype(np.float32),
              "b": rng.normal(size=4).astype(np.float32)}
    return params, rng.normal(size=(3, 4)).astype(np.float32)


def _raw_dynamics(t, y, p):
    import jax.numpy as jnp

    return jnp.tanh(y @ p["W"] + p["b"]) * jnp.cos(3 * t)


def counted_dynamics():
    """``_raw_dynamics`` with host counters: ``f`` counts evaluations (plain calls and the forward
    halves of VJPs), ``vjp`` counts vector-Jacobian products. The callbacks take the data as
    operands, so JAX can neither hoist them out of loops nor drop them."""
    import jax

    counter = {"f": 0, "vjp": 0}

    def tick(key):
        def callback(*_):
            counter[key] += 1
        return callback

    @jax.custom_vjp
    def f(t, y, p):
        jax.debug.callback(tick("f"), y)
        return _raw_dynamics(t, y, p)

    def f_fwd(t, y, p):
        jax.debug.callback(tick("f"), y)
        return _raw_dynamics(t, y, p), (t, y, p)

    def f_bwd(residuals, g):
        jax.debug.callback(tick("vjp"), g)
        return jax.vjp(_raw_dynamics, *residuals)[1](g)

    f.defvjp(f_fwd, f_bwd)
    return f, counter


class CompileCounter:
    """Counts XLA backend compilations while active (jax.monitoring events)."""

    EVENT = "/jax/core/compile/backend_compile_duration"

    def __init__(self):
        self.count = 0

    def __call__(self, event, duration, **kwargs):
        if event == self.EVENT:
            self.count += 1

    def __enter__(self):
        import jax.monitoring

        jax.monitoring.register_event_duration_secs_listener(self)
        return self

    def __exit__(self, *exc):
        import jax.monitoring

        jax.monitoring.unregister_event_duration_listener(self)


CASES = {  # id: (backend, solve keyword arguments[, backend parameters])
    "checkpoint": ("diffrax-checkpoint", {}),
    "checkpoint-fixed20": ("diffrax-checkpoint", {"fixed_steps": 20}),
    "backsolve": ("diffrax-backsolve", {}),
    "rknet": ("jax-rknet", {}),
    # the solver vocabulary: FSAL (tsit5, bosh3, dopri8) and not (heun), fixed steps
    "checkpoint-tsit5": ("diffrax-checkpoint", {}, {"solver": "tsit5"}),
    "checkpoint-bosh3": ("diffrax-checkpoint", {}, {"solver": "bosh3"}),
    "checkpoint-dopri8": ("diffrax-checkpoint", {}, {"solver": "dopri8"}),
    "checkpoint-heun": ("diffrax-checkpoint", {}, {"solver": "heun"}),
    "checkpoint-heun-diffrax-dt0": ("diffrax-checkpoint", {},
                                    {"solver": "heun", "first_step": "diffrax"}),
    "checkpoint-euler": ("diffrax-checkpoint", {}, {"solver": "euler", "fixed_steps": 30}),
    "checkpoint-midpoint": ("diffrax-checkpoint", {}, {"solver": "midpoint", "fixed_steps": 12}),
    "checkpoint-rk4": ("diffrax-checkpoint", {}, {"solver": "rk4", "fixed_steps": 10}),
    "checkpoint-4-checkpoints": ("diffrax-checkpoint", {}, {"checkpoints": 4, "rtol": 1e-5}),
    "direct": ("diffrax-direct", {}),
    "direct-heun": ("diffrax-direct", {}, {"solver": "heun"}),
    "direct-euler": ("diffrax-direct", {}, {"solver": "euler", "fixed_steps": 20}),
    "backsolve-bosh3": ("diffrax-backsolve", {}, {"solver": "bosh3"}),
    "backsolve-heun": ("diffrax-backsolve", {}, {"solver": "heun"}),
    "backsolve-rk4": ("diffrax-backsolve", {}, {"solver": "rk4", "fixed_steps": 10}),
    "backsolve-seminorm": ("diffrax-backsolve", {}, {"adjoint_norm": "seminorm", "rtol": 1e-5}),
    "backsolve-reverse-tolerances": ("diffrax-backsolve", {},
                                     {"adjoint_rtol": 1e-6, "adjoint_atol": 1e-7}),
}


def _run_case(name: str, kwargs: dict, params: dict | None = None, steps: int = 3) -> dict:
    """Forward-only solve and ``steps`` compiled training steps of one backend (with backend
    ``params`` set), counted."""
    import jax
    import jax.numpy as jnp
    from bench.frameworks.jax import CompiledStep, sgd_momentum_init, sgd_momentum_update

    b = backend(name, **(params or {}))
    f, counter = counted_dynamics()
    params_np, y0_np = _problem()
    params = jax.tree_util.tree_map(jnp.asarray, params_np)
    y0 = jnp.asarray(y0_np)

    def reset():
        jax.effects_barrier()
        counter.update(f=0, vjp=0)

    def snapshot():
        jax.effects_barrier()
        return dict(counter)

    reset()
    y, forward_stats = jax.block_until_ready(
        jax.jit(lambda p: b.solve(f, p, y0, 0.0, T1, **kwargs))(params))
    forward = {"y": np.asarray(y), "stats": jax.device_get(forward_stats),
               "counted": snapshot()}

    def loss_fn(p, y0):
        y, _ = b.solve(f, p, y0, 0.0, T1, **kwargs)
        return jnp.sum(y ** 2)

    value_and_grad = b.value_and_grad(loss_fn)

    def train(p, buffers, lr, y0):
        loss, grads, counts = value_and_grad(p, y0)
        p, buffers = sgd_momentum_update(p, grads, buffers, lr, 0.9)
        return p, buffers, loss, grads, counts

    step = CompiledStep(train)
    buffers = sgd_momentum_init(params)
    runs = []
    for _ in range(steps):
        reset()
        with CompileCounter() as compiles:
            params, buffers, loss, grads, counts = step(params, buffers, jnp.float32(0.01), y0)
            stats = b.complete_step_stats(b.step_stats(loss, counts, step.extra()))
        runs.append({"stats": stats, "counted": snapshot(), "compiles": compiles.count,
                     "grads": jax.device_get(grads)})
    return {"backend": b, "forward": forward, "steps": runs, "compiled": step}


@functools.cache
def case(case_id: str) -> dict:
    """One case of CASES, run once per test session."""
    pytest.importorskip("jax")
    name, kwargs, *params = CASES[case_id]
    return {"case": case_id, **_run_case(name, kwargs, *params)}


@pytest.fixture(params=[
    # each adaptive case compiles for 6-10 s on a 2-core CPU: slow; jax-rknet keeps the fast run's
    # check of the counters
    case_id if case_id == "rknet" else pytest.param(case_id, marks=pytest.mark.slow)
    for case_id in CASES
])
def counted(request):
    return case(request.param)


# -------------------------------------------------------------------------------------------------
# NFE: solver statistics against the counters
# -------------------------------------------------------------------------------------------------


def test_forward_nfe_from_stats_equals_counted(counted):
    forward = counted["forward"]
    stats = forward["stats"]
    assert int(stats["nfe_forward"]) == forward["counted"]["f"]
    assert forward["counted"]["vjp"] == 0
    assert int(stats["num_steps"]) == (int(stats["num_accepted_steps"])
                                       + int(stats["num_rejected_steps"]))
    first = counted["steps"][0]
    assert first["stats"].nfe_forward == forward["counted"]["f"]  # same solve inside the step


def test_backward_nfe_from_stats_equals_counted(counted):
    """Every step: the VJPs of f and the evaluations of f in the backward pass, as counted, are
    what the stats say (the counts change as the parameters move)."""
    name = counted["backend"].name
    for run in counted["steps"]:
        s, c = run["stats"], run["counted"]
        backward_f = c["f"] - s.nfe_forward  # evaluations of f made by the backward pass
        if name == "diffrax-backsolve":
            # each evaluation of the augmented dynamics is one evaluation of f and one VJP
            assert s.nfe_backward == c["vjp"] == backward_f
            assert s.extra["reverse_solves"] == 1
        else:
            assert s.extra["nfe_backward_vjp"] == c["vjp"]
            assert s.extra["nfe_backward_recomputed"] == backward_f
            assert s.nfe_backward == c["vjp"] + backward_f
        if name == "jax-rknet":
            assert backward_f == 0 and s.nfe_forward == s.nfe_backward == 4 * RKNET_STEPS


def test_diffrax_own_first_step_is_unprobed_and_counted():
    """first_step="diffrax" (dt0=None): diffrax 0.7.2's _select_initial_step would probe a bare
    ODETerm (Hairer's rule, two evaluations of f), but diffeqsolve hands the controller its terms
    wrapped in WrapTerm, so the probe is skipped and the first step is dt = 0.01: forward NFE
    1 + 6 n, as an explicit counter says (with the torchdiffeq rule: 2 + 6 n)."""
    jax = pytest.importorskip("jax")
    import diffrax
    import jax.numpy as jnp
    from bench.plugins.jax_diffrax import DiffraxBackend

    y0 = jnp.array([1.0, 2.0])
    sol = diffrax.diffeqsolve(diffrax.ODETerm(lambda t, y, a: -3.0 * y), diffrax.Dopri5(), 0.0,
                              1.0, None, y0, saveat=diffrax.SaveAt(steps=True),
                              stepsize_controller=diffrax.PIDController(rtol=1e-3, atol=1e-3))
    assert float(sol.ts[0]) == pytest.approx(0.01)
    params_np, y0_np = _problem()
    params = jax.tree_util.tree_map(jnp.asarray, params_np)
    for first_step, evals in (("diffrax", 1), ("torchdiffeq", 2)):
        b = DiffraxBackend("x", "checkpoint", first_step=first_step)
        f, counter = counted_dynamics()
        _, stats = jax.block_until_ready(
            jax.jit(lambda p, b=b, f=f: b.solve(f, p, jnp.asarray(y0_np), 0.0, T1))(params))
        jax.effects_barrier()
        stats = jax.device_get(stats)
        assert int(stats["nfe_forward"]) == counter["f"] == evals + 6 * int(stats["num_steps"])


@pytest.mark.slow  # compiles the checkpoint case
def test_checkpoint_recomputation_grows_beyond_the_checkpoints():
    """With 20 fixed steps diffrax keeps 5 checkpoints (from max_steps=20), so the backward pass
    re-runs more steps than it differentiates."""
    s = case("checkpoint-fixed20")["steps"][0]["stats"]
    assert s.steps_accepted == 20 and s.steps_rejected == 0
    assert s.nfe_forward == 1 + 6 * 20
    assert s.extra["nfe_backward_recomputed"] > 2 * 6 * 20


def test_no_recompilation_after_the_first_step(counted):
    steps = counted["steps"]
    assert [r["compiles"] for r in steps[1:]] == [0] * (len(steps) - 1)
    assert counted["compiled"].calls == len(steps)


def test_xla_memory_analysis_is_reported(counted):
    assert all(r["stats"].extra["xla_temp_bytes"] > 0 for r in counted["steps"])


def test_compiled_step_refuses_other_shapes_instead_of_recompiling(counted):
    import jax.numpy as jnp
    from bench.frameworks.jax import sgd_momentum_init

    params = {"W": jnp.zeros((4, 4)), "b": jnp.zeros(4)}
    with pytest.raises(TypeError):
        counted["compiled"](params, sgd_momentum_init(params), jnp.float32(0.01),
                            jnp.zeros((5, 4)))


# -------------------------------------------------------------------------------------------------
# Parity with torch
# -------------------------------------------------------------------------------------------------


def _torch_dynamics(torch, params_np):
    class Dynamics(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.W = torch.nn.Parameter(torch.from_numpy(params_np["W"]))
            self.b = torch.nn.Parameter(torch.from_numpy(params_np["b"]))
            self.nfe = 0

        def forward(self, t, y):
            self.nfe += 1
            return torch.tanh(y @ self.W + self.b) * torch.cos(3 * t)

    return Dynamics()


def _torch_run(odeint, method_kwargs):
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchdiffeq")
    params_np, y0_np = _problem()
    f = _torch_dynamics(torch, params_np)
    y = odeint(f, torch.from_numpy(y0_np), torch.tensor([0.0, T1]), **method_kwargs)[-1]
    nfe = f.nfe
    loss = (y ** 2).sum()
    loss.backward()
    grads = {"W": f.W.grad.numpy(), "b": f.b.grad.numpy()}
    return float(loss.detach()), grads, nfe, y.detach().numpy()


def _norm(grads) -> float:
    return math.sqrt(sum(float(np.sum(np.square(g))) for g in grads.values()))


@pytest.mark.slow  # compiles the adaptive cases
@pytest.mark.parametrize("case_id", ["checkpoint", "backsolve"])
def test_dopri5_takes_torchdiffeqs_steps(case_id):
    """Same tolerances, error norm and first step as torchdiffeq: the same number of steps and
    forward evaluations (torchdiffeq: 2 + 6 steps). Values agree only to the solver's accuracy:
    torchdiffeq steps past t1 and interpolates back, diffrax clips its last step to t1 (at
    rtol=atol=1e-3 here the losses differ by 0.3% and the gradient norms by a few percent; at
    1e-6 they agree to 1e-5, see test_dopri5_gradients_converge_to_torchdiffeqs)."""
    torchdiffeq = pytest.importorskip("torchdiffeq")
    counted = case(case_id)
    odeint = (torchdiffeq.odeint if case_id == "checkpoint"
              else torchdiffeq.odeint_adjoint)
    loss, grads, nfe, y = _torch_run(odeint, {"rtol": 1e-3, "atol": 1e-3, "method": "dopri5"})
    forward = counted["forward"]
    assert int(forward["stats"]["nfe_forward"]) == nfe
    assert int(forward["stats"]["num_steps"]) == (nfe - 2) // 6
    np.testing.assert_allclose(forward["y"], y, rtol=5e-3, atol=5e-3)
    first = counted["steps"][0]
    assert first["stats"].loss == pytest.approx(loss, rel=1e-2)
    assert _norm(first["grads"]) == pytest.approx(_norm(grads), rel=5e-2)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["diffrax-checkpoint", "diffrax-backsolve"])
def test_dopri5_gradients_converge_to_torchdiffeqs(name):
    import jax
    import jax.numpy as jnp

    torchdiffeq = pytest.importorskip("torchdiffeq")
    b = jax_diffrax.DiffraxBackend(name, backend(name).adjoint, rtol=1e-6, atol=1e-6)
    params_np, y0_np = _problem()

    def loss_fn(p):
        y, _ = b.solve(_raw_dynamics, p, jnp.asarray(y0_np), 0.0, T1)
        return jnp.sum(y ** 2)

    loss, grads = jax.jit(jax.value_and_grad(loss_fn))(
        jax.tree_util.tree_map(jnp.asarray, params_np))
    odeint = torchdiffeq.odeint if b.adjoint == "checkpoint" else torchdiffeq.odeint_adjoint
    t_loss, t_grads, _, _ = _torch_run(odeint, {"rtol": 1e-6, "atol": 1e-6, "method": "dopri5"})
    assert float(loss) == pytest.approx(t_loss, rel=1e-5)
    assert _norm(jax.device_get(grads)) == pytest.approx(_norm(t_grads), rel=1e-4)


def test_rknet_matches_a_torch_classical_rk4():
    """Six classical RK4 steps, the same loss and gradient in torch and JAX (float32)."""
    torch = pytest.importorskip("torch")
    counted = case("rknet")

    def rk4(f, y0, t_span, **_):
        y, h = y0, T1 / RKNET_STEPS
        for i in range(RKNET_STEPS):
            t = torch.tensor(i * h)
            k1 = f(t, y)
            k2 = f(t + h / 2, y + h / 2 * k1)
            k3 = f(t + h / 2, y + h / 2 * k2)
            k4 = f(t + h, y + h * k3)
            y = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        return [y]

    loss, grads, nfe, _ = _torch_run(rk4, {})
    first = counted["steps"][0]
    assert backend("jax-rknet").steps == RKNET_STEPS
    assert nfe == first["stats"].nfe_forward == 4 * RKNET_STEPS
    assert first["stats"].loss == pytest.approx(loss, rel=1e-5)
    assert _norm(first["grads"]) == pytest.approx(_norm(grads), rel=1e-5)
    for key in grads:
        np.testing.assert_allclose(first["grads"][key], grads[key], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_nfe_counts_with_output_times(name):
    """solve(..., ts=...) (several reverse solves for backsolve): stats still equal counts."""
    import jax.numpy as jnp

    case = _run_case(name, {"ts": jnp.linspace(0.0, T1, 4)}, steps=1)
    s, c = case["steps"][0]["stats"], case["steps"][0]["counted"]
    assert case["forward"]["counted"]["f"] == s.nfe_forward
    if name == "diffrax-backsolve":
        assert s.nfe_backward == c["vjp"] == c["f"] - s.nfe_forward
        assert s.extra["reverse_solves"] == 3  # the interval [t0, ts[0]] is empty
    else:
        assert s.nfe_backward == c["vjp"] + c["f"] - s.nfe_forward
    if name == "jax-rknet":  # as torch: 2 steps of 1/6 per interval of 1/3, none for [0, 0]
        assert s.steps_accepted == 6 and case["forward"]["y"].shape == (4, 3, 4)


def test_checkpoint_schedule_replay_without_recomputation():
    pytest.importorskip("jax")
    from bench.frameworks.jax import checkpoint_backward_iterations

    # 90 checkpoints for max_steps=4096: short solves store every step
    assert [checkpoint_backward_iterations(n, 4096) for n in (0, 1, 5, 30)] == [0, 1, 5, 30]


# -------------------------------------------------------------------------------------------------
# The core's measured loop
# -------------------------------------------------------------------------------------------------


class JaxToyTask(AbstractTask):
    def __init__(self, ctx: CellContext):
        import jax
        import jax.numpy as jnp
        from bench.frameworks.jax import CompiledStep, jax_device

        self.backend = ctx.backend
        self.num_train_steps = int(ctx.budget.settings["steps"])
        device = jax_device(ctx.device)
        params_np, y0_np = _problem()
        self.params = jax.device_put(jax.tree_util.tree_map(jnp.asarray, params_np), device)
        self.y0 = jax.device_put(jnp.asarray(y0_np), device)
        value_and_grad = self.backend.value_and_grad(self._loss)

        def train(p, y0):
            loss, grads, counts = value_and_grad(p, y0)
            return jax.tree_util.tree_map(lambda a, g: a - 0.01 * g, p, grads), loss, counts

        self.step = CompiledStep(train)
        self.last = float("nan")

    def _loss(self, p, y0):
        import jax.numpy as jnp

        y, _ = self.backend.solve(_raw_dynamics, p, y0, 0.0, T1)
        return jnp.sum(y ** 2)

    def train_step(self, step: int) -> StepStats:
        self.params, loss, counts = self.step(self.params, self.y0)
        stats = self.backend.step_stats(loss, counts, self.step.extra())
        self.last = stats.loss
        return stats

    def evaluate(self, final: bool = True) -> Evaluation:
        return Evaluation({"loss": self.last})

    def num_params(self) -> int:
        return 20


def _rknet_output_times_case():
    """jax-rknet, output times: an empty first interval, runs of short ones and two longer ones
    (0, 1, 1, 2, 1, 1, 1, 2 steps of at most 1/3), then 30 more equal ones (1 step each)."""
    import jax
    import jax.numpy as jnp
    from bench.frameworks.fixed_grid import steps_in_interval

    b = backend("jax-rknet")
    params_np, y0_np = _problem()
    params = jax.tree_util.tree_map(jnp.asarray, params_np)
    y0 = jnp.asarray(y0_np)
    ts = np.concatenate([[0.0, 0.05, 0.1, 0.5, 0.55, 0.6, 0.65, 1.0],
                         np.linspace(1.0, 2.0, 31)[1:]]).astype(np.float32)
    t1 = 2.0
    times = [0.0, *map(float, ts)]
    counts = [0 if b_ == a else steps_in_interval(b_ - a, t1 / b.steps, b.steps)
              for a, b_ in zip(times[:-1], times[1:], strict=False)]

    def scanned(p):
        ys, stats = b.solve(_raw_dynamics, p, y0, 0.0, t1, ts=ts)
        return ys, stats["num_steps"]

    def unrolled(p):  # the former implementation: one fixed-step loop per interval
        y, outputs = y0, []
        for (a, b_), n in zip(zip(times[:-1], times[1:], strict=False), counts, strict=False):
            if n:
                y, _ = b.solve(_raw_dynamics, p, y, a, b_, fixed_steps=n)
            outputs.append(y)
        return jnp.stack(outputs), sum(counts)

    return params, counts, scanned, unrolled


def test_rknet_output_times_compile_one_loop_per_run_of_intervals():
    """jax-rknet on the latent ODE compiled for about 2 minutes: its 199 output intervals were
    unrolled into one XLA program. Consecutive intervals with the same step count are now one
    lax.scan: the program no longer grows with the number of output times."""
    jax = pytest.importorskip("jax")
    import itertools

    params, counts, scanned, _ = _rknet_output_times_case()
    runs = [n for n, _ in itertools.groupby(counts) if n]  # an empty interval needs none
    loops = [e for e in jax.make_jaxpr(scanned)(params).jaxpr.eqns if e.primitive.name == "scan"]
    assert len(counts) == 38 and len(loops) == len(runs) == 5


@pytest.mark.slow
def test_rknet_output_times_loop_equals_one_solve_per_interval():
    """The scanned intervals give the step counts exactly, and the states and gradients to float32
    rounding (XLA fuses the written-out stages differently in the two programs), of one
    fixed-step solve per interval, unrolled (the former implementation)."""
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    params, counts, scanned, unrolled = _rknet_output_times_case()
    (ys, steps), (expected, expected_steps) = jax.jit(scanned)(params), jax.jit(unrolled)(params)
    assert int(steps) == expected_steps == sum(counts)
    np.testing.assert_allclose(np.asarray(ys), np.asarray(expected), rtol=1e-6, atol=1e-6)
    grads = [jax.jit(jax.grad(lambda p, fn=fn: jnp.sum(fn(p)[0] ** 2)))(params)
             for fn in (scanned, unrolled)]
    for key in params:
        np.testing.assert_allclose(grads[0][key], grads[1][key], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_checkpoint_counting_runs_after_the_timed_step(tmp_path, monkeypatch):
    """diffrax-checkpoint's schedule replay (a compiled toy loop, run for every step count not
    seen before) once ran inside the timed step; now the core completes the counts after the
    clock stopped, and they still equal the callback counts (test_backward_nfe_...)."""
    pytest.importorskip("jax")
    import bench.plugins.jax_diffrax as jd

    b = backend("diffrax-checkpoint")
    state = {"in_step": False, "replays": [], "timed": 0}
    replay = jd.checkpoint_backward_iterations

    def counting(n, max_steps, checkpoints=None):
        state["replays"].append(state["in_step"])
        return replay(n, max_steps, checkpoints)

    monkeypatch.setattr(jd, "checkpoint_backward_iterations", counting)
    suite = JaxToySuite()
    build = suite.build_task

    def build_task(ctx):
        task = build(ctx)
        trained = task.train_step

        def step(n):
            state["in_step"] = True
            try:
                return trained(n)
            finally:
                state["in_step"] = False
        task.train_step = step
        return task

    monkeypatch.setattr(suite, "build_task", build_task)
    row = run_cell(CellSpec("jax-toy", b.name, "smoke", 0, "cpu"), b, suite, tmp_path,
                   log=lambda _: None)
    assert row.status == "ok", row.error
    assert state["replays"] and not any(state["replays"])
    assert row.nfe_backward > row.metrics["nfe_backward_vjp"] > 0


@pytest.mark.parametrize("name", ["jax-rknet", pytest.param("diffrax-backsolve",
                                                            marks=pytest.mark.slow)])
def test_a_cell_runs_in_the_core_loop(tmp_path, name):
    pytest.importorskip("jax")
    b = backend(name)
    spec = CellSpec("jax-toy", name, "smoke", 0, "cpu")
    row = run_cell(spec, b, JaxToySuite(), tmp_path, log=lambda _: None)
    assert row.status == "ok", row.error
    assert row.framework == "jax" and row.solver == b.solver
    assert row.train_steps == 3 and row.compile_time_s > 0
    assert row.compile_time_s > row.train_step_time_s
    assert row.nfe_forward > 0 and row.nfe_backward > 0
    assert row.metrics["xla_temp_bytes"] > 0
    assert row.peak_memory_method == "cpu_rss_peak_increase"

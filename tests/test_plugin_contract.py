"""The declared plugin contract: the framework layers' abstract methods, the errors an author
meets (a block that counts nothing, a NotImplementedError naming its class and method), and
docs/plugins.md's code kept in step with the example packages it shows."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from bench.core.interfaces import AbstractBackend, StepStats
from bench.engine.cell import run_cell
from bench.planning.cells import CellSpec

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "plugins.md"


# -- the abstract methods --------------------------------------------------------------------------


def test_a_torch_backend_without_ode_block_cannot_be_built():
    from bench.frameworks.torch import TorchBackend

    class Incomplete(TorchBackend):
        name = "incomplete"

    with pytest.raises(TypeError, match="abstract method.*ode_block"):
        Incomplete()


def test_a_jax_backend_without_solve_cannot_be_built():
    from bench.frameworks.jax import JaxBackend

    class Incomplete(JaxBackend):
        name = "incomplete"

    with pytest.raises(TypeError, match="abstract method.*solve"):
        Incomplete()


def test_an_ode_block_without_integrate_cannot_be_built():
    pytest.importorskip("torch")
    from bench.frameworks.torch import OdeBlock

    class Incomplete(OdeBlock):
        pass

    with pytest.raises(TypeError, match="abstract method.*integrate"):
        Incomplete()


def test_every_built_in_backend_implements_its_frameworks_contract():
    from bench.frameworks.jax import JaxBackend, SolveBackend
    from bench.frameworks.torch import OdeBlockBackend, TorchBackend

    from bench.core.registry import PluginSelection, Registry

    registry = Registry.load(PluginSelection(entry_points=False))
    assert not registry.load_errors
    for backend in registry.backends.values():
        if isinstance(backend, TorchBackend):
            assert isinstance(backend, OdeBlockBackend)
        else:
            assert isinstance(backend, JaxBackend) and isinstance(backend, SolveBackend)
        assert backend.counts_evaluations and backend.counting_hint


def test_required_modules_make_a_backend_unavailable_with_the_install_hint():
    class NeedsTorchode(AbstractBackend):
        name, framework = "needs-torchode", "torch"
        required_modules = ("numpy", "torchode_not_installed_here")  # numpy: always installed
        install_hint = "pip install torchode"

    assert NeedsTorchode().check_available() == (
        "torchode_not_installed_here is not installed: pip install torchode")


# -- a block that counts nothing -------------------------------------------------------------------


def _uncounted_backend():
    """A torch backend whose Euler block calls the dynamics without counting (the bug)."""
    import torch
    from bench.frameworks.torch import StepCounts, TorchBackend

    class Uncounted(torch.nn.Module):
        def __init__(self, dynamics, t0, t1):
            super().__init__()
            self.dynamics, self.t0, self.t1 = dynamics, t0, t1

        def forward(self, y0, times=None):
            h = (self.t1 - self.t0) / 4
            y = y0
            for i in range(4):
                t = torch.tensor(self.t0 + i * h, dtype=y0.dtype)
                y = y + h * self.dynamics(t, y)
            return y

        def pop_stats(self):
            return StepCounts()  # forgot to count

    class UncountedBackend(TorchBackend):
        name = "uncounted-euler"
        gradient_method = "backprop"
        solver = "euler-uncounted"
        adaptive = False
        rtol = atol = None
        required_modules = ("torch",)

        def ode_block(self, make_dynamics, t0=0.0, t1=1.0, *, fixed_steps=None,
                      tolerances=None):
            return Uncounted(make_dynamics(True), t0, t1)

    return UncountedBackend()


def test_a_cell_whose_block_counts_no_evaluation_fails_saying_how_to_count(tmp_path,
                                                                           one_torch_thread):
    pytest.importorskip("torch")
    from bench.suites.cnf import CnfSuite

    backend = _uncounted_backend()
    row = run_cell(CellSpec("cnf", backend.name, "smoke", 0, "cpu"), backend, CnfSuite(),
                   tmp_path, log=lambda _: None)
    assert row.status == "failed"
    assert row.error.startswith("BenchError: backend 'uncounted-euler' (")
    assert "counted no evaluation of the dynamics in training step 0 (nfe_forward=0)" in row.error
    assert "bench.frameworks.torch.CountedDynamics" in row.error and "pop_stats" in row.error
    assert "docs/plugins.md" in row.error


def test_a_jax_solve_that_records_nothing_is_reported():
    """A solve that never calls record_solve leaves the step without counts (nfe None)."""
    pytest.importorskip("jax")
    import jax.numpy as jnp
    from bench.frameworks.jax import JaxBackend

    class Silent(JaxBackend):
        name = "silent"

        def solve(self, f, params, y0, t0, t1, *, ts=None, fixed_steps=None, tolerances=None):
            return y0, {}

    backend = Silent()
    stats = backend.complete_step_stats(backend.step_stats(
        jnp.float32(1.0), {"solves": [], "probe": jnp.zeros(4)}))
    assert stats.nfe_forward is None
    problem = backend.step_stats_problem(stats, 3)
    assert "counted no evaluation of the dynamics in training step 3 (nfe_forward=None)" in problem
    assert "bench.frameworks.jax.record_solve(stats)" in problem


def test_jax_solves_without_step_counts_leave_the_step_columns_empty():
    """A library that cannot say how many steps it took leaves num_accepted_steps and
    num_rejected_steps out: the step's step counts are None (empty columns, as a torch block's
    None) and its NFE stand; a solve without nfe_forward fails the step with the counting hint,
    not with a KeyError."""
    pytest.importorskip("jax")
    import jax.numpy as jnp
    from bench.frameworks.jax import JaxBackend

    class NoSteps(JaxBackend):
        name = "no-steps"

        def solve(self, f, params, y0, t0, t1, *, ts=None, fixed_steps=None, tolerances=None):
            raise AssertionError("not called")

    backend = NoSteps()

    def complete(*solves):
        return backend.complete_step_stats(backend.step_stats(
            jnp.float32(1.0), {"solves": list(solves), "probe": jnp.zeros(4)}))

    counted = {"nfe_forward": jnp.int32(12), "nfe_backward": jnp.int32(12)}
    steps = {"num_accepted_steps": jnp.int32(3), "num_rejected_steps": jnp.int32(1)}
    stats = complete(counted, {**counted, **steps})  # one of the two solves cannot say
    assert (stats.nfe_forward, stats.nfe_backward) == (24.0, 24.0)
    assert (stats.steps_accepted, stats.steps_rejected) == (None, None)
    assert backend.step_stats_problem(stats, 1) is None
    stats = complete({**counted, **steps}, {**counted, **steps})
    assert (stats.steps_accepted, stats.steps_rejected) == (6.0, 2.0)
    stats = complete({"nfe_backward": jnp.int32(4), **steps})
    assert stats.nfe_forward is None and stats.steps_accepted == 3.0
    problem = backend.step_stats_problem(stats, 2)
    assert "training step 2 (nfe_forward=None)" in problem and "'nfe_forward'" in problem


def test_backends_that_need_not_count_are_not_checked():
    """resnet's blocks are no ODE solve (continuous_time False); a backend of a framework
    without counting blocks (counts_evaluations False: the fake numpy one) is not checked."""
    from bench.plugins.resnet import ResNetBackend
    from fake_plugins import NumpyEulerBackend

    empty = StepStats(loss=0.0, nfe_forward=0)
    assert ResNetBackend().step_stats_problem(empty, 0) is None
    assert NumpyEulerBackend().step_stats_problem(StepStats(loss=0.0), 0) is None


# -- NotImplementedError ---------------------------------------------------------------------------


def test_every_not_implemented_error_names_the_class_and_the_method():
    bare = []
    for folder in ("bench", "frameworks", "plugins", "suites", "examples"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if re.search(r"raise NotImplementedError\s*(\(\s*\))?\s*(#.*)?$", line):
                    bare.append(f"{path.relative_to(ROOT)}:{number}")
    assert bare == [], "NotImplementedError without a message naming the class and method"


def test_backward_counts_names_the_class_and_the_method():
    pytest.importorskip("jax")
    from bench.frameworks.jax import JaxBackend

    class ForwardOnly(JaxBackend):
        name = "forward-only"

        def solve(self, f, params, y0, t0, t1, *, ts=None, fixed_steps=None, tolerances=None):
            raise AssertionError("not called")

    with pytest.raises(NotImplementedError, match=r"^ForwardOnly\.backward_counts: 1 of the "):
        ForwardOnly().backward_counts([{"nfe_forward": 4}], None)
    assert ForwardOnly().backward_counts([{"nfe_backward": 4}, {"nfe_backward": 2}], None) == (
        6.0, {})


# -- docs/plugins.md -------------------------------------------------------------------------------

#: ``<!-- synced: <path> -->`` followed by a fenced code block: an excerpt of that file.
SYNCED = re.compile(r"<!-- synced: (?P<path>\S+) -->\n```[a-z]*\n(?P<code>.*?)\n```", re.S)


def _synced_blocks() -> list[tuple[str, str]]:
    return [(m["path"], m["code"]) for m in SYNCED.finditer(GUIDE.read_text())]


def test_the_guides_code_is_the_example_packages_code():
    """Every code block marked as synced is a verbatim, contiguous excerpt of its file: edit the
    example and the guide together."""
    blocks = _synced_blocks()
    assert len(blocks) >= 5
    for path, code in blocks:
        source = (ROOT / path).read_text()
        assert code in source, f"docs/plugins.md's excerpt of {path} is not in the file any more"
        assert len(code.splitlines()) >= 3


def test_the_guide_shows_every_example_file_and_how_to_run_it():
    shown = {path for path, _ in _synced_blocks()}
    for folder in ("examples/bench_example_torch_heun", "examples/bench_example_jax"):
        files = {p.relative_to(ROOT).as_posix() for p in (ROOT / folder).rglob("*")
                 if p.suffix in (".py", ".toml") and "egg-info" not in str(p)
                 and "__pycache__" not in p.parts}
        assert files - shown <= {"examples/bench_example_jax/pyproject.toml"}, files - shown
    text = GUIDE.read_text()
    assert "bench run --suite cnf --budget smoke --backends example-heun" in text
    for topic in ("OptionSpec", "record_solve", "pop_stats", "time-major", "0-dim",
                  "effective_tolerances", "fixed_steps", "required_modules", "entry-points.bench",
                  "backward_counts", "failed to load", "more than one plugin"):
        assert topic in text, topic


def _guide_block(after: str) -> str:
    """The first Python code block of docs/plugins.md after the text ``after``."""
    text = GUIDE.read_text()
    start = text.index(after)
    match = re.compile(r"```python\n(.*?)\n```", re.S).search(text, start)
    assert match is not None, after
    return match.group(1)


def test_the_guides_backward_probe_sketch_counts_its_reverse_solves():
    """The guide's sketch of backward counts through the probe: a custom_vjp whose reverse
    solve returns its counts as the probe's cotangent, summed over the step's solves."""
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    namespace: dict = {}
    exec(compile(_guide_block("A sketch: fixed-step Euler"), "docs/plugins.md", "exec"),
         namespace)
    backend = namespace["EulerAdjointBackend"]()

    def f(t, y, p):
        assert jnp.ndim(t) == 0
        return jax.tree_util.tree_map(lambda leaf: -p["a"] * leaf, y)

    y0 = (jnp.ones(3), jnp.full((2,), 2.0))  # any pytree

    def loss(p, y0):  # two solves in one step: their reverse solves' counts add up
        y, _ = backend.solve(f, p, y0, 0.0, 1.0)
        y, _ = backend.solve(f, p, y, 0.0, 0.5)
        return sum(jnp.sum(leaf) for leaf in y)

    params = {"a": jnp.float32(1.0)}
    value, grads, counts = jax.jit(backend.value_and_grad(loss))(params, y0)
    assert [float(x) for x in counts["probe"]] == [2.0, 16.0, 16.0, 0.0]
    stats = backend.complete_step_stats(backend.step_stats(value, counts))
    assert (stats.nfe_forward, stats.nfe_backward, stats.steps_accepted) == (16.0, 16.0, 16.0)
    assert stats.extra == {"reverse_solves": 2.0}
    # outside value_and_grad (an evaluation) there is no recorder: the same solve, no probe
    _, stats = jax.jit(lambda p: backend.solve(f, p, y0, 0.0, 1.0))(params)
    assert int(stats["nfe_forward"]) == 8
    # the adjoint's gradient converges to the exact one: d/da of sum(y0) exp(-1.5 a) at a = 1
    backend.steps = 256
    _, grads, _ = jax.jit(backend.value_and_grad(loss))(params, y0)
    np.testing.assert_allclose(float(grads["a"]), -1.5 * 7.0 * np.exp(-1.5), rtol=0.01)


def test_the_guides_run_cell_snippet_runs(monkeypatch, one_torch_thread):
    """docs/plugins.md's 'testing without installing it' snippet, as printed (from the
    repository's root): its imports, CellSpec(backend_params=...) and its assertions on the
    row."""
    pytest.importorskip("torch")
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr("sys.path", list(__import__("sys").path))  # the snippet inserts one
    code = _guide_block("**Testing without installing it.**")
    namespace: dict = {}
    exec(compile(code, "docs/plugins.md", "exec"), namespace)
    row = namespace["row"]
    assert row.backend == "example-heun[steps=5]" and row.backend_config == {"steps": 5}


def test_the_loop_time_profile_passes_ts_concrete_as_the_suites_do():
    """The contract: ts is concrete (the suites pass NumPy arrays). The loop-time profile
    re-runs each solve jitted at its inputs and must keep ts so: jax-rknet, and any fixed-step
    backend that counts its steps on the host, read it there."""
    pytest.importorskip("jax")
    import jax.numpy as jnp
    from bench.frameworks.jax._profile import profile_one
    from bench.plugins.jax_rknet import JaxRkNetBackend

    backend = JaxRkNetBackend(steps=4)

    def f(t, y, a):
        return -a * y

    ts = np.linspace(0.0, 1.0, 3, dtype=np.float32)
    y, stats, numbers = profile_one(backend.solve, f, jnp.float32(1.0), jnp.ones(2), 0.0, 1.0,
                                    {"ts": ts})
    assert y.shape == (3, 2) and numbers["nfe"] == int(np.sum(stats["nfe_forward"])) == 4 * 4
    assert numbers["solve_time_s"] > 0
    np.testing.assert_allclose(y[-1], np.exp(-1.0), rtol=1e-3)

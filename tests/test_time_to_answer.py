"""Where a cell's time goes and what the harness saves of it: the phases (``phases.json`` and
the row's phase columns), the compile cache (``--compile-cache``, ``--no-compile-cache``, the
row's ``compile_cache``), and the loop-time split (``solve_time_s``, ``dynamics_time_s``,
``solver_loop_time_s``)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import FAKE_ONLY

from bench.core.errors import BenchError
from bench.core.registry import PluginSelection, Registry
from bench.engine.cell import run_cell
from bench.engine.compile_cache import COMPILE_CACHE_ENV, cache_setting, default_folder
from bench.engine.phases import PHASES, PhaseClock, cache_state, loop_split_columns
from bench.engine.runner import Runner
from bench.planning.cells import CellSpec
from bench.planning.request import expand
from bench.store.results import RunDirectory

ROOT = Path(__file__).resolve().parent.parent
CACHED = PluginSelection(builtins=False, entry_points=False,
                         extra_modules=("fake_plugins", "compile_cache_plugins"))


# -- phases -----------------------------------------------------------------------------------


def test_a_cell_writes_its_phases_and_the_row_sums_them(fake_registry, tmp_path):
    spec = CellSpec("linear", "numpy-euler", "smoke", 0, "cpu")
    row = run_cell(spec, fake_registry.backend("numpy-euler"), fake_registry.suite("linear"),
                   tmp_path)
    assert row.status == "ok", row.error
    data = json.loads((tmp_path / "phases.json").read_text())
    phases = data["phases_s"]
    assert list(phases) == [p for p in PHASES if p in phases]  # in the order they run
    assert {"setup", "compile", "train_steps", "eval_prepare", "evaluation", "finish",
            "gradient_probes", "memory_steps", "loop_profile"} <= set(phases)
    assert all(v >= 0 for v in phases.values())
    assert data["cell_total_s"] == row.total_time_s
    assert sum(phases.values()) + data["other_s"] == pytest.approx(row.total_time_s, abs=1e-6)
    assert row.setup_time_s == phases["setup"]
    assert row.gradient_probe_time_s == phases["gradient_probes"]
    assert row.memory_steps_time_s == phases["memory_steps"]
    assert row.eval_prepare_time_s == phases["eval_prepare"]
    # run in this process: no process start; a framework without a cache: no state
    assert row.startup_time_s is None and row.compile_cache == ""
    assert data["compile_cache"] == {"cell": None, "first_step": None, "cell_programs": None,
                                     "first_step_programs": None}


def test_phase_clock_sums_repeated_phases_and_its_columns():
    clock = PhaseClock()
    clock.add("process_start", 0.5)
    clock.add("imports", 0.25)
    clock.add("gradient_probes", 1.0)
    clock.add("gradient_probes", 2.0)
    clock.add("setup", -1.0)  # a clock that went backwards counts nothing
    assert clock.columns() == {"startup_time_s": 0.75, "setup_time_s": 0.0,
                               "gradient_probe_time_s": 3.0}


def test_the_real_runner_measures_process_start_and_imports(tmp_path):
    registry = Registry.load(FAKE_ONLY)
    runner = Runner(registry, FAKE_ONLY, RunDirectory.create(tmp_path / "run"),
                    echo=lambda _: None)
    (row,) = runner.run(expand(registry, ["linear"], ["numpy-euler"], "smoke", [0], "cpu"))
    assert row.status == "ok", row.error
    phases = json.loads((runner.run_dir.cell_dir(row.cell_id) / "phases.json").read_text())
    assert phases["phases_s"]["process_start"] > 0 and phases["phases_s"]["imports"] > 0
    assert row.startup_time_s == pytest.approx(phases["phases_s"]["process_start"]
                                               + phases["phases_s"]["imports"])


# -- the compile cache: the engine's side -----------------------------------------------------


@pytest.mark.parametrize("before, after, state", [
    ((0, 0), (5, 5), "hit"), ((0, 0), (5, 0), "miss"), ((2, 1), (7, 4), "partial"),
    ((3, 3), (3, 3), "none"),
])
def test_cache_state_of_the_first_steps_compilations(before, after, state):
    class Cached:
        def compile_cache_counts(self):
            return None

    assert cache_state(Cached(), before, after) == state


def test_cache_state_off_and_not_applicable():
    class Cached:
        def compile_cache_counts(self):
            return None

    assert cache_state(Cached(), None, None) == "off"
    assert cache_state(object(), None, None) == ""  # a framework without a cache (torch)


def test_cache_setting_defaults_refusals_and_off(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_folder() == tmp_path / "xdg" / "neural-ode-bench" / "compile-cache"
    assert cache_setting(None) == str(default_folder())
    assert not default_folder().exists()  # made by the cells that use it, not here
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/path")  # not absolute: ignored
    assert default_folder() == Path.home() / ".cache" / "neural-ode-bench" / "compile-cache"
    assert cache_setting(None, off=True) == "off"
    monkeypatch.chdir(tmp_path)
    assert cache_setting(Path("mine")) == str(tmp_path / "mine")  # absolute for the cells
    with pytest.raises(BenchError, match="contradict"):
        cache_setting(Path("mine"), off=True)
    (tmp_path / "target").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "target")
    with pytest.raises(BenchError, match="symbolic link.*--no-compile-cache"):
        cache_setting(tmp_path / "link")
    (tmp_path / "file").write_text("x")
    with pytest.raises(BenchError, match="not a folder"):
        cache_setting(tmp_path / "file")
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(BenchError, match="writable by group or others"):
        cache_setting(shared)


def test_the_cells_of_a_grid_share_the_cache(tmp_path):
    """The first cell compiles (a miss), the next ones load (hits); off: nothing."""
    registry = Registry.load(CACHED)
    cache = tmp_path / "cache"
    cells = expand(registry, ["linear"], ["numpy-cached"], "smoke", [0, 1, 2], "cpu")
    runner = Runner(registry, CACHED, RunDirectory.create(tmp_path / "run"),
                    echo=lambda _: None, compile_cache=str(cache))
    rows = runner.run(cells)
    assert [r.compile_cache for r in rows] == ["miss", "hit", "hit"], [r.error for r in rows]
    assert (cache / "numpy" / "program").is_file()
    off = Runner(registry, CACHED, RunDirectory.create(tmp_path / "off"),
                 echo=lambda _: None, compile_cache="off")
    assert [r.compile_cache for r in off.run(cells[:1])] == ["off"]


def test_cli_flags_reach_the_run_and_its_config(tmp_path, monkeypatch, capsys):
    import bench.cli.main
    from bench.cli.main import main

    monkeypatch.setattr(bench.cli.main, "_selection", lambda: CACHED)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv(COMPILE_CACHE_ENV, raising=False)
    out = tmp_path / "run"
    status = main(["run", "--suite", "linear", "--backends", "numpy-cached", "--budget",
                   "smoke", "--seeds", "0-1", "--out", str(out)])
    assert status == 0, capsys.readouterr().err
    config = json.loads((out / "config.json").read_text())
    folder = tmp_path / "xdg" / "neural-ode-bench" / "compile-cache"
    assert config["compile_cache"] == str(folder)
    rows = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    assert [r["compile_cache"] for r in rows] == ["miss", "hit"]
    status = main(["run", "--suite", "linear", "--backends", "numpy-cached", "--budget",
                   "smoke", "--out", str(tmp_path / "cold"), "--no-compile-cache"])
    assert status == 0
    (row,) = [json.loads(line) for line in (tmp_path / "cold" / "rows.jsonl").read_text()
              .splitlines()]
    assert row["compile_cache"] == "off"
    assert json.loads((tmp_path / "cold" / "config.json").read_text())["compile_cache"] == "off"
    capsys.readouterr()
    status = main(["run", "--suite", "linear", "--backends", "numpy-cached", "--out",
                   str(tmp_path / "x"), "--no-compile-cache", "--compile-cache", "c"])
    assert status == 2 and "contradict" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_a_nan_loss_says_where_it_may_come_from(tmp_path, monkeypatch):
    """With the cache on, a JAX solve that fails returns NaN: the row says so."""
    registry = Registry.load(CACHED)
    spec = CellSpec("linear", "numpy-cached-nan", "smoke", 0, "cpu")
    backend, suite = registry.backend("numpy-cached-nan"), registry.suite("linear")
    monkeypatch.setenv(COMPILE_CACHE_ENV, str(tmp_path / "cache"))
    (tmp_path / "on").mkdir()
    (tmp_path / "off").mkdir()
    row = run_cell(spec, backend, suite, tmp_path / "on")
    assert row.status == "diverged"
    assert row.error == "non-finite loss nan at step 2; (a failed fake solve returns NaN)"
    monkeypatch.setenv(COMPILE_CACHE_ENV, "off")
    row = run_cell(spec, backend, suite, tmp_path / "off")
    assert row.error == "non-finite loss nan at step 2"


# -- the loop-time split ------------------------------------------------------------------------


def test_loop_split_columns():
    assert loop_split_columns({"solve_time_s": 0.03, "dynamics_time_s": 0.02}) == {
        "solve_time_s": 0.03, "dynamics_time_s": 0.02,
        "solver_loop_time_s": pytest.approx(0.01)}
    assert loop_split_columns({"reason": "no solve"}) == {}
    assert loop_split_columns({"solve_time_s": float("nan"), "dynamics_time_s": 0.0}) == {}


def test_a_cell_profiles_one_extra_untimed_step(tmp_path):
    registry = Registry.load(CACHED)
    spec = CellSpec("linear", "numpy-cached", "smoke", 0, "cpu")
    backend = registry.backend("numpy-cached")
    calls = []
    original = backend.profile_solves

    def profile_solves(device):
        calls.append(device)
        return original(device)

    backend.profile_solves = profile_solves
    row = run_cell(spec, backend, registry.suite("linear"), tmp_path)
    assert row.status == "ok", row.error
    assert calls == ["cpu"]
    assert (row.solve_time_s, row.dynamics_time_s) == (0.030, 0.020)
    assert row.solver_loop_time_s == pytest.approx(0.010)
    assert row.train_steps == 3  # the profiled step is in no count or timing


def test_the_torch_split_counts_the_forward_solves_evaluations(one_torch_thread):
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchdiffeq")
    from bench.frameworks.torch._blocks import TorchdiffeqBlock
    from bench.frameworks.torch._profile import profile_solves

    for adjoint in (False, True):
        torch.manual_seed(0)
        dynamics = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(),
                                       torch.nn.Linear(16, 4))

        class F(torch.nn.Module):
            def __init__(self, net):
                super().__init__()
                self.net = net

            def forward(self, t, h):
                return self.net(h)

        block = TorchdiffeqBlock(F(dynamics), 0.0, 1.0, adjoint=adjoint, method="dopri5", rtol=1e-5,
                                 atol=1e-5, options=None)
        y0 = torch.randn(8, 4)
        with profile_solves("cpu") as profile:
            block(y0).pow(2).sum().backward()
        counts = block.pop_stats()
        assert profile["solves"] == 1
        assert profile["nfe"] == counts.nfe_forward > 0  # the reverse solve's are not counted
        assert 0 < profile["dynamics_time_s"] < profile["solve_time_s"]
    with profile_solves("cpu") as profile:
        dynamics(torch.randn(2, 4))  # no block: nothing to split
    assert "no bench.frameworks.torch.OdeBlock" in profile["reason"]


# -- the compile cache: JAX's side, in fresh processes ---------------------------------------

JAX_CELLS = textwrap.dedent("""
    import json, os, sys
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    import bench.frameworks.jax  # applies BENCH_COMPILE_CACHE before jax is imported
    from test_jax_backends import JaxToySuite, backend
    from bench.engine.cell import run_cell
    from bench.planning.cells import CellSpec
    out = []
    for k in range(2):  # two cells in one process: the second's programs are new traces
        b = backend("jax-rknet")
        work = Path({work!r}) / str(k)
        work.mkdir(parents=True)
        row = run_cell(CellSpec("jax-toy", b.name, "smoke", k, "cpu"), b, JaxToySuite(), work,
                       log=lambda _: None)
        out.append({{"status": str(row.status), "error": row.error,
                    "cache": row.compile_cache, "solve": row.solve_time_s,
                    "dynamics": row.dynamics_time_s, "loop": row.solver_loop_time_s,
                    "notes": row.notes}})
    print(json.dumps({{"rows": out, "eqx": os.environ.get("EQX_ON_ERROR")}}))
""")


def _jax_cells(tmp_path: Path, setting: str | None) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("JAX_", "EQX_")) and k != COMPILE_CACHE_ENV}
    if setting is not None:
        env[COMPILE_CACHE_ENV] = setting
    code = JAX_CELLS.format(tests=str(ROOT / "tests"), work=str(tmp_path / "work"))
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_jax_cells_load_what_an_earlier_cell_compiled(tmp_path):
    pytest.importorskip("jax")
    cache = tmp_path / "cache"
    got = _jax_cells(tmp_path, str(cache))
    first, second = got["rows"]
    assert first["status"] == second["status"] == "ok", got
    assert (first["cache"], second["cache"]) == ("miss", "hit")
    assert got["eqx"] == "nan"  # diffrax's errors must not make a program uncacheable
    folder = cache / "jax"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700 and any(folder.iterdir())
    # the loop-time split of the rk4 toy: its parts add up to the forward solve
    assert first["solve"] > 0 and first["dynamics"] > 0
    assert first["loop"] == pytest.approx(first["solve"] - first["dynamics"])


SETTINGS = textwrap.dedent("""
    import json, os, sys
    import bench.frameworks.jax
    from bench.frameworks.jax import _cache
    print(json.dumps({"counts": _cache.counts(), "jax_imported": "jax" in sys.modules,
                      **{k: v for k, v in os.environ.items() if k.startswith(("JAX_", "EQX_"))}}))
""")


def _settings(setting: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "EQX_"))}
    env[COMPILE_CACHE_ENV] = setting
    done = subprocess.run([sys.executable, "-c", SETTINGS], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return {"stderr": done.stderr, **json.loads(done.stdout.strip().splitlines()[-1])}


def test_jax_cache_settings_off_and_a_refused_folder(tmp_path):
    pytest.importorskip("jax")
    on = _settings(str(tmp_path / "cache"))
    assert on["JAX_COMPILATION_CACHE_DIR"] == str(tmp_path / "cache" / "jax")
    assert on["JAX_ENABLE_COMPILATION_CACHE"] == "true" and on["EQX_ON_ERROR"] == "nan"
    assert float(on["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]) == 0  # JAX's default: 1 s
    assert on["counts"] == [0, 0]
    off = _settings("off")
    assert off["JAX_ENABLE_COMPILATION_CACHE"] == "false" and off["counts"] is None
    assert "EQX_ON_ERROR" not in off and "JAX_COMPILATION_CACHE_DIR" not in off
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    planted = _settings(str(tmp_path / "link"))  # a planted link: not used, nothing made in it
    assert planted["JAX_ENABLE_COMPILATION_CACHE"] == "false" and planted["counts"] is None
    assert "symbolic link" in planted["stderr"] and "EQX_ON_ERROR" not in planted
    assert not any((tmp_path / "elsewhere").iterdir())


def test_a_solve_that_failed_into_nan_fails_the_step_saying_why(monkeypatch):
    np = pytest.importorskip("numpy")
    from bench.frameworks.jax._cache import failed_solve

    good = [{"num_steps": np.int32(12), "nfe_forward": np.int32(74)}]
    assert failed_solve(good, np.zeros(4, np.float32)) == ""
    nan = [{"num_steps": np.int32(2**31 - 1), "nfe_forward": np.int32(-7)}]
    monkeypatch.setenv("EQX_ON_ERROR", "nan")
    message = failed_solve(nan, None)
    assert "max_steps" in message and "--no-compile-cache" in message
    assert failed_solve(good, np.full(4, np.nan, np.float32))  # a reverse solve's garbage
    monkeypatch.delenv("EQX_ON_ERROR")
    assert failed_solve(good, np.full(4, np.nan, np.float32)) == ""  # raised otherwise


# -- the split in reports ------------------------------------------------------------------------


def test_the_html_page_draws_the_split_as_stacked_bars(tmp_path):
    from bench.core.rows import ResultRow
    from bench.reports.html_report import html_page
    from bench.reports.loop_split import loop_split_markdown, loop_split_section

    def row(cell, **fields):
        return ResultRow(cell_id=cell, suite="cnf", backend=cell, framework="torch",
                         gradient_method="backprop", solver="dopri5", device="cpu", seed=0,
                         budget="smoke", status="ok", **fields)

    rows = [row("a", solve_time_s=0.02, dynamics_time_s=0.015, solver_loop_time_s=0.005),
            row("b<script>", solve_time_s=0.01, dynamics_time_s=0.002, solver_loop_time_s=0.008),
            row("c")]  # no split: no bar
    section = loop_split_section(rows)
    assert section.count('class="ls-bar"') == 2 and "b&lt;script&gt;" in section
    assert 'class="ls-dyn" style="width:75.00%"' in section  # a: 15 of the longest 20 ms
    assert 'class="ls-loop" style="width:40.00%"' in section  # b: 8 of 20 ms
    assert "| a | 20 | 15 | 5 | 25% |" in loop_split_markdown(rows)
    assert loop_split_section(rows[2:]) == "" == loop_split_markdown(rows[2:])
    run = RunDirectory.create(tmp_path / "run")
    for r in rows:
        run.append_row(r)
    page = html_page(run.path)
    assert "Where the solve's time goes" in page and ".ls-bar{" in page


# -- a cache load is never judged as a compilation ------------------------------------------------


def test_claims_never_judge_a_cache_load_as_a_compilation():
    from test_claims import row

    registry = Registry.load(PluginSelection(builtins=True, entry_points=False))
    claim = registry.claim("jax-compile-apart")

    def cells(cache: str, compile_s: float) -> list:
        return [row("diffrax-checkpoint", "cnf", framework="jax", method="recursive-checkpoint",
                    budget="quick", seed=s, compile_time_s=compile_s, train_step_time_s=0.05,
                    train_steps=400, compile_cache=cache) for s in range(2)]

    assert claim.judge(cells("miss", 10.0)).verdict.value == "holds"
    loaded = claim.judge(cells("hit", 0.2))  # a load: 4 steps' worth, but no compilation
    assert loaded.verdict.value == "inconclusive" and "--no-compile-cache" in loaded.reason
    # the compilations are judged, the loads left out
    assert claim.judge(cells("hit", 0.2) + cells("off", 10.0)).verdict.value == "holds"


def test_claims_timing_table_keeps_cache_loads_apart(tmp_path):
    from test_claims import row

    from bench.reports.claims import timing_records

    class Source:
        label = "run"
        runs = [("run", [row("diffrax-checkpoint", "cnf", framework="jax", seed=s,
                             budget="quick", compile_time_s=t, train_step_time_s=0.05,
                             train_steps=10, compile_cache=cache)
                         for s, (cache, t) in enumerate([("miss", 9.0), ("hit", 0.3),
                                                         ("miss", 11.0)])])]

    records = timing_records([Source()])
    assert [(r["compile_cache"], r["cells"], r["compile_time_s"]) for r in records] == [
        ("hit", 1, "0.3"), ("miss", 2, "10")]


MAX_STEPS_CELL = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    import bench.frameworks.jax
    from test_jax_backends import JaxToySuite
    from bench.engine.cell import run_cell
    from bench.planning.cells import CellSpec
    from bench.plugins.jax_diffrax import DiffraxBackend
    b = DiffraxBackend("diffrax-checkpoint", "checkpoint", max_steps=1)  # the toy needs more
    row = run_cell(CellSpec("jax-toy", b.name, "smoke", 0, "cpu"), b, JaxToySuite(),
                   Path({work!r}), log=lambda _: None)
    print(json.dumps({{"status": str(row.status), "error": row.error}}))
""")


@pytest.mark.slow  # compiles a diffrax step
def test_a_solve_that_reaches_max_steps_fails_its_cell_saying_why(tmp_path):
    """With the cache on (EQX_ON_ERROR=nan) diffrax's max_steps error becomes NaN: the row
    still says what happened and how to see the solver's own message."""
    pytest.importorskip("diffrax")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "EQX_"))}
    env[COMPILE_CACHE_ENV] = str(tmp_path / "cache")
    code = MAX_STEPS_CELL.format(tests=str(ROOT / "tests"), work=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    row = json.loads(done.stdout.strip().splitlines()[-1])
    assert row["status"] == "failed"
    assert "training step 0: a solve failed" in row["error"]
    assert "max_steps" in row["error"] and "--no-compile-cache" in row["error"]


def test_the_checkpoint_replays_answers_are_kept_beside_the_cache(tmp_path, monkeypatch):
    """diffrax-checkpoint's backward count replays the checkpoint schedule in programs that
    hold a host callback (never cached by JAX): its answers are kept beside the cache."""
    from bench.frameworks.jax import _cache, _checkpoint

    replayed = []

    def replay(max_steps, checkpoints):
        return lambda n: replayed.append(n) or 2 * n

    monkeypatch.setattr(_checkpoint, "_checkpoint_replay", replay)
    monkeypatch.setattr(_cache, "folder", lambda: tmp_path / "jax")
    assert _checkpoint.checkpoint_backward_iterations(7, 4096) == 14
    assert _checkpoint.checkpoint_backward_iterations(7, 4096) == 14 and replayed == [7]
    memo = json.loads((tmp_path / _checkpoint.MEMO_NAME).read_text())
    assert list(memo.values()) == [14] and "max_steps=4096/checkpoints=None/n=7" in list(memo)[0]
    (tmp_path / _checkpoint.MEMO_NAME).unlink()
    (tmp_path / "elsewhere.json").write_text(json.dumps({k: 99 for k in memo}))
    (tmp_path / _checkpoint.MEMO_NAME).symlink_to(tmp_path / "elsewhere.json")
    assert _checkpoint.checkpoint_backward_iterations(7, 4096) == 14  # a link is not read
    monkeypatch.setattr(_cache, "folder", lambda: None)  # the cache off: replayed each time
    assert _checkpoint.checkpoint_backward_iterations(7, 4096) == 14 and replayed == [7, 7, 7]

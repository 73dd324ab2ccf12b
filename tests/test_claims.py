"""Claims as checks (bench.core.claims, bench.claims, bench.reports.claims, bench claims): the
verdict helpers, the built-in claims on small fake rows (holds, fails, inconclusive, not
measured), the hook and its duplicate and broken-plugin handling, the exit status of a claim
that flips between two folders, the HTML section, and the claims on the published folders."""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import pytest
from bench.claims.memory import judge_scaling

from bench.cli.claims import merged_needs, split_backends
from bench.cli.main import main
from bench.core.claims import (
    Claim,
    Judgement,
    Need,
    Verdict,
    combine,
    interval_verdict,
    mean_interval,
    median_interval,
    t_quantile95,
)
from bench.core.errors import DuplicateNameError, UnknownNameError
from bench.core.registry import PluginSelection, Registry
from bench.core.rows import ResultRow
from bench.reports.claims import across, judge, judge_sources, load_source

ROOT = Path(__file__).resolve().parent.parent


def row(backend: str = "torch-adjoint", suite: str = "memory-scaling", status: str = "ok",
        framework: str = "torch", method: str = "adjoint", seed: int = 0, budget: str = "measure",
        **fields) -> ResultRow:
    metrics = fields.pop("metrics", {})
    options = fields.pop("options", {})
    cell = f"{suite}/{backend}/{budget}/seed{seed}/cpu/" + ",".join(
        f"{k}={v}" for k, v in sorted({**options, **fields}.items()))
    return ResultRow(cell_id=cell, suite=suite, backend=backend, framework=framework,
                     gradient_method=method, solver=fields.pop("solver", "dopri5"),
                     device="cpu", seed=seed, budget=budget, status=status, metrics=metrics,
                     options=options, backend_name=backend.split("[")[0], **fields)


def memory_rows(backend: str = "torch-adjoint", slope: float = 0.0, depths=(8, 16, 32, 64),
                noise: float = 0.0) -> list[ResultRow]:
    """A memory study's rows: saved bytes growing as L ** slope (times a small wobble)."""
    return [row(backend, options={"steps": L}, solver="rk4-3/8 (fixed steps)",
                nfe_forward=4.0 * L,
                saved_for_backward_bytes=int(2**20 * L**slope * (1 + noise * (-1) ** i)))
            for i, L in enumerate(depths)]


# -------------------------------------------------------------------------------------------------
# Helpers
# -------------------------------------------------------------------------------------------------

def test_interval_verdict_needs_the_whole_interval_on_one_side():
    assert interval_verdict(0.01, 0.05, 0.12, "below") is Verdict.HOLDS
    assert interval_verdict(0.2, 0.4, 0.12, "below") is Verdict.FAILS
    assert interval_verdict(0.1, 0.2, 0.12, "below") is Verdict.INCONCLUSIVE
    assert interval_verdict(0.8, 0.9, 0.75, "above") is Verdict.HOLDS
    assert interval_verdict(0.5, 0.6, 0.75, "above") is Verdict.FAILS
    with pytest.raises(ValueError, match="'below' or 'above'"):
        interval_verdict(0, 1, 0.5, "under")


def test_intervals_of_a_mean_and_a_median():
    assert mean_interval([1.0]) is None
    mean, low, high = mean_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and math.isclose(high - mean, 4.303 * 1.0 / math.sqrt(3), rel_tol=1e-6)
    assert t_quantile95(1) == 12.706 and t_quantile95(100) == 1.96
    assert median_interval([1, 2, 3, 4]) is None  # 87.5% at best: below 90%
    median, low, high, coverage = median_interval([5, 1, 4, 2, 3])
    assert (median, low, high) == (3, 1, 5) and coverage == pytest.approx(1 - 2 / 32)
    _, low, high, coverage = median_interval(range(1, 21))
    assert 1 < low < high < 20 and 0.9 <= coverage < 0.96


def test_combine_takes_the_most_severe_and_across_folders_a_failure_first():
    holds = Judgement(Verdict.HOLDS, 1.0, reason="a")
    unsure = Judgement(Verdict.INCONCLUSIVE, 2.0, reason="b")
    fails = Judgement(Verdict.FAILS, 3.0, reason="c")
    absent = Judgement.not_measured("d")
    assert combine([holds, unsure]).verdict is Verdict.INCONCLUSIVE
    assert combine([holds, fails, unsure]).figure == 3.0
    assert combine([absent]).verdict is Verdict.NOT_MEASURED
    # across folders an inconclusive folder contradicts nothing; a failing one decides
    assert across([("x", holds), ("y", unsure)]).verdict is Verdict.HOLDS
    assert across([("x", holds), ("y", fails)]).verdict is Verdict.FAILS
    assert across([("x", absent), ("y", unsure)]).verdict is Verdict.INCONCLUSIVE
    assert across([("x", absent)]).reason == "d"


def test_need_refuses_an_unknown_command_and_describes_itself():
    with pytest.raises(ValueError, match="run, memory, gradients"):
        Need("train", "cnf", "torch-direct")
    text = Need("run", "cnf", "torch-adjoint[adjoint_norm=[default,seminorm]]",
                seeds="0-2").describe()
    assert text == ("bench run --suite cnf --backends "
                    "'torch-adjoint[adjoint_norm=[default,seminorm]]' --seeds 0-2")


# -------------------------------------------------------------------------------------------------
# The built-in claims on fake rows
# -------------------------------------------------------------------------------------------------

NEEDS = (Need("memory", "memory-scaling", "torch-adjoint"),)


@pytest.mark.parametrize(("slope", "order", "verdict"), [
    (0.0, "O(1)", Verdict.HOLDS), (1.0, "O(1)", Verdict.FAILS),
    (1.0, "O(L)", Verdict.HOLDS), (0.0, "O(L)", Verdict.FAILS),
])
def test_memory_claims_judge_the_slopes_interval(slope, order, verdict):
    judgement = judge_scaling(memory_rows(slope=slope), ("torch-adjoint",), order, NEEDS)
    assert judgement.verdict is verdict
    assert judgement.figure == pytest.approx(slope, abs=1e-9) and judgement.cells == 4


def test_memory_claim_is_inconclusive_on_a_noisy_slope_or_too_few_depths():
    noisy = judge_scaling(memory_rows(slope=0.1, noise=0.3), ("torch-adjoint",), "O(1)", NEEDS)
    assert noisy.verdict is Verdict.INCONCLUSIVE and noisy.low < 0.12 < noisy.high
    two = judge_scaling(memory_rows(depths=(8, 16)), ("torch-adjoint",), "O(1)", NEEDS)
    assert two.verdict is Verdict.INCONCLUSIVE
    assert "need at least 3" in two.reason or "needs 3" in two.reason


def test_memory_claim_is_not_measured_without_its_backends_rows():
    for rows in ([], memory_rows("torch-direct")):
        judgement = judge_scaling(rows, ("torch-adjoint",), "O(1)", NEEDS)
        assert judgement.verdict is Verdict.NOT_MEASURED
        assert "bench memory --backends torch-adjoint" in judgement.reason
    failed = [dataclass_status(r, "failed") for r in memory_rows()]  # ran: no verdict
    assert judge_scaling(failed, ("torch-adjoint",), "O(1)", NEEDS).verdict is \
        Verdict.INCONCLUSIVE


def dataclass_status(r: ResultRow, status: str) -> ResultRow:
    import dataclasses

    return dataclasses.replace(r, status=status)


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry.load(PluginSelection(builtins=True, entry_points=False))


def seminorm_rows(savings: list[float]) -> list[ResultRow]:
    rows = []
    for i, saving in enumerate(savings):
        for norm, nfe in (("default", 20.0), ("seminorm", 20.0 * (1 - saving))):
            rows.append(row(f"torch-adjoint[tol={i},adjoint_norm={norm}]", "cnf", budget="smoke",
                            rtol=10.0 ** -(i + 3), atol=10.0 ** -(i + 3), adjoint_norm=norm,
                            nfe_backward=nfe, metrics={"nll_nats": 3.0}))
    return rows


def test_seminorm_claims_on_pairs(registry):
    fewer, forty = registry.claim("seminorm-fewer-backward-nfe"), registry.claim(
        "seminorm-saving-40pct")
    rows = seminorm_rows([0.2, 0.1, 0.3, 0.25, 0.15, 0.2])
    assert fewer.judge(rows).verdict is Verdict.HOLDS
    assert forty.judge(rows).verdict is Verdict.FAILS
    assert fewer.judge(rows).figure == pytest.approx(0.2)
    assert forty.judge(seminorm_rows([0.5, 0.45, 0.6, 0.55, 0.5])).verdict is Verdict.HOLDS
    mixed = fewer.judge(seminorm_rows([0.2, -0.1, 0.3, -0.2, 0.0, 0.1]))
    assert mixed.verdict is Verdict.INCONCLUSIVE
    few = fewer.judge(seminorm_rows([0.2, 0.3]))
    assert few.verdict is Verdict.INCONCLUSIVE and "needs 5" in few.reason
    absent = fewer.judge(memory_rows())
    assert absent.verdict is Verdict.NOT_MEASURED and "adjoint_norm" in absent.reason


def mnist_rows(ode: list[float], res: list[float]) -> list[ResultRow]:
    return [row(name, "mnist", budget="quick", seed=seed, method=method, params=params,
                metrics={"test_error_pct": error})
            for name, method, params, errors in (("torch-adjoint", "adjoint", 52938, ode),
                                                 ("resnet", "backprop", 145034, res))
            for seed, error in enumerate(errors)]


def test_odenet_against_resnet_at_the_budget_run(registry):
    claim = registry.claim("odenet-mnist-matches-resnet")
    close = claim.judge(mnist_rows([3.0, 3.1, 3.05], [3.02, 3.08, 3.06]))
    assert close.verdict is Verdict.HOLDS and abs(close.figure) < 0.05
    worse = claim.judge(mnist_rows([5.0, 5.2, 5.1], [3.0, 3.1, 3.05]))
    assert worse.verdict is Verdict.FAILS
    spread = claim.judge(mnist_rows([3.0, 3.6, 2.8], [3.5, 3.0, 3.1]))
    assert spread.verdict is Verdict.INCONCLUSIVE
    one = claim.judge(mnist_rows([3.0], [3.1]))
    assert one.verdict is Verdict.INCONCLUSIVE and "1 seed" in one.reason
    assert registry.claim("odenet-mnist-params").judge(
        mnist_rows([3.0], [3.1])).verdict is Verdict.HOLDS


def test_compile_claim_is_inconclusive_when_every_timing_is_flagged(registry):
    claim = registry.claim("jax-compile-apart")
    cells = [row("diffrax-checkpoint", "cnf", framework="jax", method="recursive-checkpoint",
                 budget="quick", seed=s, compile_time_s=10.0, train_step_time_s=0.05,
                 train_steps=400) for s in range(2)]
    assert claim.judge(cells).verdict is Verdict.HOLDS
    flagged = [dataclass_flag(r) for r in cells]
    judgement = claim.judge(flagged)
    assert judgement.verdict is Verdict.INCONCLUSIVE and "timing flagged" in judgement.reason
    slow = [row("jax-rknet", "cnf", framework="jax", budget="quick", compile_time_s=0.1,
                train_step_time_s=0.05, train_steps=400)]
    assert claim.judge(slow).verdict is Verdict.FAILS


def dataclass_flag(r: ResultRow) -> ResultRow:
    import dataclasses

    return dataclasses.replace(r, timing_flag=True, timing_warning="host loaded")


def test_gradient_claims_bound_the_torch_jax_difference(registry):
    def grad_rows(e_torch: float, e_jax: float) -> list[ResultRow]:
        return [row("torch-direct", "cnf", method="backprop", budget="smoke", rtol=1e-4,
                    atol=1e-4, grad_scale=1.0, grad_rel_error=e_torch),
                row("diffrax-checkpoint", "cnf", framework="jax", method="recursive-checkpoint",
                    budget="smoke", rtol=1e-4, atol=1e-4, grad_scale=1.0, grad_rel_error=e_jax)]

    claim = registry.claim("torch-jax-same-gradient")
    assert claim.judge(grad_rows(1e-4, 2e-4)).verdict is Verdict.HOLDS  # apart <= 3e-4 <= 1e-3
    assert claim.judge(grad_rows(5e-3, 1e-6)).verdict is Verdict.FAILS  # apart >= 5e-3
    assert claim.judge(grad_rows(6e-4, 6e-4)).verdict is Verdict.INCONCLUSIVE  # 0 to 1.2e-3
    backsolve = registry.claim("diffrax-backsolve-gradient")
    blown = [row("diffrax-backsolve", "cnf", framework="jax", budget="smoke", rtol=1e-4,
                 grad_scale=1.0, grad_rel_error=math.inf)]
    judgement = backsolve.judge(blown)
    assert judgement.verdict is Verdict.FAILS and judgement.figure == math.inf


def test_fixed_step_nfe_counts_exactly(registry):
    claim = registry.claim("nfe-per-step")
    assert claim.judge(memory_rows()).verdict is Verdict.HOLDS
    off = memory_rows()[:1] + [row("torch-adjoint", options={"steps": 16}, nfe_forward=66.0,
                                   solver="rk4-3/8 (fixed steps)")]
    judgement = claim.judge(off)
    assert judgement.verdict is Verdict.FAILS and "66 forward evaluations" in judgement.reason


def test_a_judge_that_raises_is_inconclusive_with_its_error(capsys):
    def broken(rows):
        raise ZeroDivisionError("oops")

    judgement = judge(Claim("broken", "s", "src", broken), [])
    assert judgement.verdict is Verdict.INCONCLUSIVE and "ZeroDivisionError: oops" in \
        judgement.reason
    assert "claim 'broken' failed to judge" in capsys.readouterr().err


# -------------------------------------------------------------------------------------------------
# The hook and the registry
# -------------------------------------------------------------------------------------------------

def write_plugin(folder: Path, name: str, body: str) -> None:
    (folder / f"{name}.py").write_text(textwrap.dedent("""
        import bench
        from bench.core.claims import Claim, Judgement, Verdict

        def ok(rows):
            return Judgement(Verdict.HOLDS, 1.0)
    """) + textwrap.dedent(body))


def load(tmp_path, monkeypatch, *modules) -> Registry:
    monkeypatch.syspath_prepend(str(tmp_path))
    return Registry.load(PluginSelection(builtins=False, entry_points=False,
                                         extra_modules=tuple(modules)))


def test_a_plugin_registers_claims_through_the_hook(tmp_path, monkeypatch):
    write_plugin(tmp_path, "claims_a", """
        @bench.hookimpl
        def bench_register_claims(register):
            register(Claim("my-claim", "x is small", "Me 2024, Table 1", ok))
    """)
    registry = load(tmp_path, monkeypatch, "claims_a")
    assert not registry.load_errors and list(registry.claims) == ["my-claim"]
    assert registry.claim("my-claim").judge([]).verdict is Verdict.HOLDS
    assert "my-claim" not in registry.origin  # origin names backends and suites
    with pytest.raises(UnknownNameError, match="Valid choices: my-claim"):
        registry.claim("my-claims")


def test_a_claim_two_plugins_register_is_refused_naming_both(tmp_path, monkeypatch):
    for name in ("claims_b", "claims_c"):
        write_plugin(tmp_path, name, """
            @bench.hookimpl
            def bench_register_claims(register):
                register(Claim("same", "s", "src", ok))
        """)
    registry = load(tmp_path, monkeypatch, "claims_b", "claims_c")
    assert registry.clashes == {("claim", "same"): ["claims_b", "claims_c"]}
    with pytest.raises(DuplicateNameError, match="claims_b.*claims_c"):
        registry.claim("same")


def test_broken_claim_plugins_are_listed_and_the_others_load(tmp_path, monkeypatch):
    write_plugin(tmp_path, "claims_d", """
        @bench.hookimpl
        def bench_register_claims(register):
            register(Claim("no-source", "s", "", ok))
            register(Claim("has space", "s", "src", ok))
            register(Claim("fine", "s", "src", ok))
    """)
    write_plugin(tmp_path, "claims_e", """
        @bench.hookimpl
        def bench_register_claims(register):
            register("not a claim")
    """)
    registry = load(tmp_path, monkeypatch, "claims_d", "claims_e")
    assert list(registry.claims) == ["fine"]
    errors = {p.name: p.error for p in registry.load_errors}
    assert "has no source" in errors["claims_d"] and "without spaces" in errors["claims_d"]
    assert "AbstractClaim, got str" in errors["claims_e"]


def test_the_builtin_claims_register_with_sources_and_needs(registry):
    assert len(registry.claims) >= 10 and not registry.load_errors
    for claim in registry.claims.values():
        assert claim.source and claim.statement and claim.needs, claim.name
        assert claim.judge([]).verdict is Verdict.NOT_MEASURED, claim.name


def test_needs_merge_by_command_line_and_a_paper_budget_waits_for_its_own(registry):
    said: list[str] = []
    needs = merged_needs(list(registry.claims.values()), "smoke", said.append)
    assert len({(n.command, n.suite, n.seeds, n.tolerances, n.scales) for n in needs}) == \
        len(needs)
    assert all(n.budget == "smoke" for n in needs)
    assert any("cnf-nll-gap needs budget 'paper'" in line for line in said)
    memory = [n for n in needs if n.command == "memory"]
    assert len(memory) == 1 and {"torch-adjoint", "diffrax-backsolve", "rknet"} <= set(
        split_backends(memory[0].backends))
    assert split_backends("a[x=[1,2]],b, c[y=3]") == ["a[x=[1,2]]", "b", "c[y=3]"]
    torch_only = merged_needs(list(registry.claims.values()), "smoke", said.append,
                              {"torch-adjoint"})
    assert torch_only and all(split_backends(n.backends) == ["torch-adjoint"] or
                              split_backends(n.backends)[0].startswith("torch-adjoint[")
                              for n in torch_only)


# -------------------------------------------------------------------------------------------------
# bench claims
# -------------------------------------------------------------------------------------------------

def write_run(path: Path, rows: list[ResultRow]) -> Path:
    path.mkdir(parents=True)
    (path / "rows.jsonl").write_text("".join(r.to_json() + "\n" for r in rows))
    (path / "config.json").write_text(json.dumps({"command": "memory"}))
    return path


def test_bench_claims_exits_1_when_a_claim_that_held_in_base_fails(tmp_path, capsys):
    base = write_run(tmp_path / "base", memory_rows(slope=0.0))
    new = write_run(tmp_path / "new", memory_rows(slope=1.0))
    args = ["claims", "--claims", "memory-adjoint-*", "--base", str(base)]
    assert main(args + [str(new)]) == 1
    captured = capsys.readouterr()
    assert "claim 'memory-adjoint-torch' held in BASE" in captured.err
    assert "REGRESSION" in captured.out
    assert main(args + [str(base)]) == 0  # the same folder: nothing flips
    capsys.readouterr()
    assert main(["claims", "--claims", "memory-adjoint-torch", "--base", str(new),
                 str(base)]) == 0  # fails -> holds is no regression
    out = capsys.readouterr().out
    assert "now holds (was fails)" in out and "REGRESSION" not in out


def test_bench_claims_table_formats_and_bad_input(tmp_path, capsys):
    run = write_run(tmp_path / "run", memory_rows(slope=0.0))
    assert main(["claims", str(run), "--claims", "memory-adjoint-torch,nfe-per-step"]) == 0
    captured = capsys.readouterr()
    assert "| memory-adjoint-torch | holds |" in captured.out
    assert "| nfe-per-step | holds |" in captured.out and "2 claims: 2 holds" in captured.err
    assert main(["claims", str(run), "--format", "csv", "--claims", "memory-resnet"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("claim,verdict,figure,measured_in,source,reason,statement")
    assert "not measured" in out and "bench memory --backends resnet" in out
    assert main(["claims", str(run), "--format", "html", "--claims", "memory-*"]) == 0
    assert '<tr class="verdict-not-measured">' in capsys.readouterr().out
    other = write_run(tmp_path / "other" / "run", memory_rows("torch-direct", slope=1.0))
    assert main(["claims", str(run), str(other), "--per-folder", "--claims", "nfe-per-step,"
                 "memory-backprop-torch"]) == 0
    out = capsys.readouterr().out
    assert "| claim | run | run (2) |" in out
    assert "| nfe-per-step | holds: 0 NFE per step off | holds: 0 NFE per step off |" in out
    assert "| memory-backprop-torch | not measured | holds: 1 log-log slope |" in out
    assert main(["claims", str(run), "--claims", "no-such-claim"]) == 2
    assert "unknown claim 'no-such-claim'" in capsys.readouterr().err
    assert main(["claims"]) == 2
    assert "--run to measure them first" in capsys.readouterr().err
    assert main(["claims", str(run), "--out", str(tmp_path / "x")]) == 2
    assert main(["claims", "--list", "--claims", "cnf-nll-gap"]) == 0
    assert "bench run --suite cnf --backends torch-direct,diffrax-checkpoint --budget paper" in \
        capsys.readouterr().out


def test_a_folder_of_run_folders_counts_as_one(tmp_path):
    write_run(tmp_path / "group" / "a", memory_rows(slope=0.0))
    write_run(tmp_path / "group" / "b", memory_rows("torch-direct", slope=1.0))
    source = load_source(tmp_path / "group")
    assert source.label == "group" and [name for name, _ in source.runs] == ["a", "b"]
    registry = Registry.load(PluginSelection(builtins=True, entry_points=False))
    verdicts = judge_sources([registry.claim("memory-adjoint-torch"),
                              registry.claim("memory-backprop-torch")], [source])
    assert [v.judgement.verdict for v in verdicts] == [Verdict.HOLDS, Verdict.HOLDS]


def test_the_run_page_has_a_claims_section(tmp_path):
    from bench.reports.html_report import html_page

    run = write_run(tmp_path / "run", memory_rows(slope=0.0))
    page = html_page(run)
    assert "<h2>Claims</h2>" in page and "memory-adjoint-torch" in page
    assert '<tr class="verdict-holds">' in page and "memory-resnet" not in page  # not measured
    empty = write_run(tmp_path / "empty", [row("x", "cnf")])
    assert "No registered claim is measured by this folder" in html_page(empty)


def test_run_pages_load_the_plugin_registry_once(tmp_path, monkeypatch):
    """bench index --regenerate writes a page per published folder: the claims' registry is
    loaded once for them all (it was loaded for every page)."""
    from bench.reports import html_report

    loads = []
    original = Registry.load

    def counting(selection):
        loads.append(selection)
        return original(selection)

    html_report._registered_claims.cache_clear()
    monkeypatch.setattr(Registry, "load", staticmethod(counting))
    for name in ("a", "b", "c"):
        page = html_report.html_page(write_run(tmp_path / name, memory_rows(slope=0.0)))
        assert "memory-adjoint-torch" in page
    assert len(loads) == 1
    html_report._registered_claims.cache_clear()


def test_the_published_folders_answer_at_least_ten_claims(capsys):
    """The manual's promise: `bench claims results/*` gives verdicts with sources, and no claim
    that a published folder measures comes out 'not measured'."""
    folders = sorted(str(p) for p in (ROOT / "results").iterdir() if p.is_dir())
    assert main(["claims", "--format", "csv", *folders]) == 0
    import csv
    import io

    records = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    measured = [r for r in records if r["verdict"] != "not measured"]
    assert len(measured) >= 10 and all(r["source"] for r in records)
    assert {r["verdict"] for r in measured} >= {"holds", "fails"}


def test_per_folder_gives_versions_and_compile_and_step_times(tmp_path, capsys):
    """The claim x version form: each folder's library versions and its training cells' median
    compile and step time under the verdicts; HTML is one self-contained page."""
    folders = []
    for version, compile_s in (("0.6.0", 10.0), ("0.6.2", 40.0)):
        cells = [row("diffrax-checkpoint", "cnf", framework="jax", method="recursive-checkpoint",
                     budget="smoke", seed=s, compile_time_s=compile_s + s, train_step_time_s=0.1,
                     train_steps=4, timing_flag=s == 1) for s in range(3)]
        run = write_run(tmp_path / f"diffrax-{version}", cells)
        (run / "environment.json").write_text(json.dumps(
            {"packages": {"diffrax": version, "jax": "0.4.38", "torch": None}}))
        folders.append(str(run))
    assert main(["claims", *folders, "--per-folder", "--claims", "jax-compile-apart"]) == 0
    out = capsys.readouterr().out
    assert ("| jax-compile-apart | holds: 110 \\[100, 120\\] ratio | holds: 410 \\[400, 420\\] "
            "ratio |") in out  # the flagged seed left out
    assert "| diffrax-0.6.0 | - | - | 0.4.38 | 0.6.0 | - |" in out
    # "-": rows without a compile_cache state (before the compile cache), pooled apart from hits
    assert "| diffrax-0.6.2 | diffrax-checkpoint | - | 3 | 41 | 0.1 | 1 |" in out
    assert main(["claims", *folders, "--per-folder", "--format", "html"]) == 0
    page = capsys.readouterr().out
    assert page.startswith("<!DOCTYPE html>") and page.count("<table") == 3
    assert "<script" not in page and "http" not in page.split("<body>")[1]


@pytest.mark.slow
def test_a_real_claim_measured_with_run(tmp_path, capsys):
    """`bench claims --run` runs the memory study a claim needs (torch-adjoint at L = 8..64, four
    real cells) and judges it: the adjoint's saved bytes stay flat."""
    out = tmp_path / "claims"
    assert main(["claims", "--run", "--claims", "memory-adjoint-torch", "--backends",
                 "torch-adjoint", "--out", str(out), "--timeout", "600"]) == 0
    assert "| memory-adjoint-torch | holds |" in capsys.readouterr().out
    rows = load_source(out).runs[0][1]
    assert sorted(r.options["steps"] for r in rows) == [8, 16, 32, 64]


def test_cells_that_ran_and_failed_make_a_claim_inconclusive_not_unmeasured(registry):
    import dataclasses

    crashed = [dataclasses.replace(r, status="failed", error="Traceback\nTypeError: boom")
               for r in memory_rows("diffrax-backsolve")]
    judgement = registry.claim("memory-adjoint-jax").judge(crashed)
    assert judgement.verdict is Verdict.INCONCLUSIVE
    assert "4 cell(s) that measure it failed" in judgement.reason and "TypeError: boom" in \
        judgement.reason


def test_an_exact_memory_measurement_decides_and_the_resident_peak_is_reported():
    import dataclasses

    wobbly = [dataclasses.replace(r, peak_memory_bytes=peak) for r, peak in
              zip(memory_rows(slope=0.0), (98304, 212992, 6459392, 172032), strict=True)]
    judgement = judge_scaling(wobbly, ("torch-adjoint",), "O(1)", NEEDS)
    assert judgement.verdict is Verdict.HOLDS
    assert "reported, not deciding: torch-adjoint peak_memory_bytes" in judgement.reason
    resident_only = [dataclasses.replace(r, saved_for_backward_bytes=None) for r in wobbly]
    assert judge_scaling(resident_only, ("torch-adjoint",), "O(1)", NEEDS).verdict is \
        Verdict.INCONCLUSIVE

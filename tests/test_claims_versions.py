"""Issue 33, claims across library versions: an inconclusive verdict says why in the claim x
folder table (cells that failed, with the line that names their error; timings flagged on a
loaded host, with the figure so far), the float64 reference runs under the JAX 0.4 of the older
diffrax environments, and `bench claims --per-folder --publish` makes a results folder whose
tables `bench index --regenerate` keeps."""

from __future__ import annotations

import dataclasses
import json
import sys
import types
from pathlib import Path

import pytest
from bench.claims._rows import error_line

from bench.cli.main import main
from bench.cli.regenerate import regenerate
from bench.core.claims import Claim, Judgement, Verdict
from bench.core.registry import PluginSelection, Registry
from bench.reports.claims import judge, judge_sources, load_source, matrix_records
from tests.test_claims import dataclass_flag, memory_rows, row, write_run

JAX_ERROR = ("TracerBoolConversionError: Attempted boolean conversion of traced array with "
             "shape bool[]..\nThe error occurred while tracing the function diffeqsolve.\n"
             "  operation a:bool[] = and b c\n"
             "See https://jax.readthedocs.io/en/latest/errors.html#jax.errors."
             "TracerBoolConversionError")


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry.load(PluginSelection(builtins=True, entry_points=False))


def test_the_error_line_is_the_one_naming_the_exception():
    assert error_line(JAX_ERROR).startswith("TracerBoolConversionError: Attempted boolean")
    assert error_line("Traceback\n  File x\njax.errors.X: no\nValueError: bad\n\n") == \
        "ValueError: bad"
    assert error_line("cell exceeded the timeout of 5 s") == "cell exceeded the timeout of 5 s"
    assert error_line(None) == "(no error text)"


def test_an_inconclusive_cell_of_the_version_table_says_why(registry, tmp_path):
    failed = [dataclasses.replace(r, status="failed", error=JAX_ERROR)
              for r in memory_rows("diffrax-backsolve")]
    verdicts = judge_sources([registry.claim("memory-adjoint-jax")], [
        load_source(write_run(Path(p), rows)) for p, rows in (
            (tmp_path / "diffrax051", failed), (tmp_path / "diffrax060",
                                           memory_rows("diffrax-backsolve")))])
    cells = matrix_records(verdicts)[0]
    assert cells["diffrax051"] == (
        "inconclusive (4 cell(s) that measure it failed, e.g. "
        f"{failed[0].cell_id}: TracerBoolConversionError: Attempted boolean conversion of "
        "traced array with shape bool[]..)")
    assert cells["diffrax060"].startswith("holds: ")  # no reason: the figure says it


def test_a_judge_that_gives_no_reason_for_inconclusive_is_named():
    claim = Claim("quiet", "s", "src", lambda rows: Judgement(Verdict.INCONCLUSIVE), ())
    assert judge(claim, []).reason == "the claim's judge gave no reason"


def test_compile_apart_on_a_loaded_host_shows_its_figure_and_the_load(registry):
    cells = [dataclass_flag(dataclasses.replace(
        row("diffrax-checkpoint", "cnf", framework="jax", method="recursive-checkpoint",
            budget="smoke", seed=s, compile_time_s=20.0 + s, train_step_time_s=0.02,
            train_steps=4), host_busy_cores_other=1.5 + s / 10)) for s in range(3)]
    judgement = registry.claim("jax-compile-apart").judge(cells)
    assert judgement.verdict is Verdict.INCONCLUSIVE and judgement.figure == 1050.0
    assert judgement.low is None  # a range of flagged cells is no interval
    assert ("timing flagged in all 3 JAX cells (a loaded host; other processes kept 1.5 to 1.7 "
            "cores busy): their compile time / step time, median 1.05e+03, range 1e+03 to "
            "1.1e+03, is not judged") in judgement.reason


def test_the_float64_reference_context_under_jax_0_4(monkeypatch):
    """JAX 0.4 (diffrax 0.5 and 0.6's) has no top-level jax.enable_x64: the experimental one."""
    jax = pytest.importorskip("jax")  # the torch extra alone has no JAX: skip, with the reason
    from bench.frameworks.jax._gradients import x64_context

    with x64_context():
        assert jax.numpy.zeros(1, dtype="float64").dtype == "float64"
    entered = []

    class Context:
        def __enter__(self):
            entered.append(True)

        def __exit__(self, *exc):
            return False

    monkeypatch.delattr(jax, "enable_x64", raising=False)
    monkeypatch.setitem(sys.modules, "jax.experimental",
                        types.SimpleNamespace(enable_x64=Context))
    with x64_context():
        pass
    assert entered == [True]


def test_publish_a_claim_by_version_table_and_regenerate_it(tmp_path, capsys):
    folders = []
    for version, slope in (("0.2.3", 0.0), ("0.2.5", 1.0)):
        run = write_run(tmp_path / "runs" / f"claims-torchdiffeq{version.replace('.', '')}",
                        memory_rows(slope=slope))
        (run / "environment.json").write_text(json.dumps(
            {"packages": {"torchdiffeq": version, "torch": "2.13.0+cpu"},
             "git": {"commit": "abc123", "dirty": False}}))
        folders.append(str(run))
    results = tmp_path / "results"
    results.mkdir()
    (results / "README.md").write_text("# R\n\n<!-- generated by `bench index` from each "
                                       "folder's rows, config.json and environment.json: edits "
                                       "below this line are overwritten -->\n")
    dest = results / "claims-versions"
    args = ["claims", *folders, "--per-folder", "--claims", "memory-adjoint-torch",
            "--publish", str(dest)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "| memory-adjoint-torch | holds: " in out
    assert json.loads((dest / "claims.json").read_text()) == {
        "claims": ["memory-adjoint-torch"], "folders": ["claims-torchdiffeq023",
                                                        "claims-torchdiffeq025"]}
    table = (dest / "claims.md").read_text()
    assert "| claim | claims-torchdiffeq023 | claims-torchdiffeq025 |" in table
    assert "fails: 1 log-log slope" in table and "| claims-torchdiffeq023 | 2.13.0+cpu | 0.2.3" \
        in table
    assert (dest / "claims.csv").read_text().startswith("claim,claims-torchdiffeq023,")
    assert "torchdiffeq" in (dest / "versions.csv").read_text()
    for name in ("results.csv", "results.md", "index.html", "environment.json"):
        assert (dest / "claims-torchdiffeq023" / name).is_file()
    index = (results / "README.md").read_text()
    assert "| [claims-versions](claims-versions/) | memory-scaling |" in index
    assert "2 runs: 8 ok" in index and "[claims](claims-versions/claims.md)" in index
    assert regenerate(results, check=True) == []
    (dest / "claims.md").write_text("edited by hand\n")
    assert regenerate(results) == [dest / "claims.md"] and (dest / "claims.md").read_text() \
        == table
    assert main(args) == 2  # an existing folder is never published into
    assert "already exists" in capsys.readouterr().err
    assert main(["claims", *folders, "--publish", str(tmp_path / "x")]) == 2
    assert "give --per-folder" in capsys.readouterr().err


def test_an_xla_memory_analysis_of_all_zeros_is_no_measurement():
    """jaxlib 0.4.28 (the diffrax 0.5.1 environment) reports every size of a CPU program as 0:
    xla_temp_bytes is then left out, not recorded as 0 bytes (which a slope fit would read)."""
    from bench.frameworks.jax._step import CompiledStep

    def analysed(temp: int, arguments: int) -> CompiledStep:
        stats = types.SimpleNamespace(temp_size_in_bytes=temp, argument_size_in_bytes=arguments,
                                      output_size_in_bytes=0)
        compiled = types.SimpleNamespace(memory_analysis=lambda: stats)
        step = CompiledStep(lambda x: x)
        step.lower = lambda *args: types.SimpleNamespace(compile=lambda: compiled)  # type: ignore
        step._jitted = lambda x: x
        step(1.0)
        return step

    assert analysed(0, 0).extra() == {}
    assert analysed(4096, 64).extra() == {"xla_temp_bytes": 4096.0}
    assert analysed(0, 64).extra() == {"xla_temp_bytes": 0.0}  # a real zero stays


def test_the_reverse_counting_adjoint_passes_on_either_event_keyword():
    """diffrax 0.5 hands an adjoint's loop ``discrete_terminating_event``, 0.6 and later
    ``event``: the counting adjoint takes and passes on either (its 0.5.1 cells had failed with a
    TypeError)."""
    import inspect

    pytest.importorskip("diffrax")  # the torch extra alone has no diffrax: skip, with the reason
    from bench.plugins.jax_diffrax import _diffrax_parts

    loop = inspect.signature(_diffrax_parts().ReverseCountingAdjoint.loop)
    named = [p.name for p in loop.parameters.values() if p.kind is not p.VAR_KEYWORD]
    assert "event" not in named and "discrete_terminating_event" not in named
    assert any(p.kind is inspect.Parameter.VAR_KEYWORD for p in loop.parameters.values())

"""Property-based tests (Hypothesis) of bad input: whatever command line, run file or rows.jsonl
line is generated, ``bench`` ends with exit status 0, 1 or 2, prints no traceback, and writes
nothing outside its ``--out`` (or ``--to``).

In-process (``bench.cli.main.main`` with the fake plugins) for speed, with the cells themselves
replaced by a stub that records an ``ok`` row per cell: these properties are about the input,
and no generated run trains anything. A few generated command lines go through a real
subprocess with the real engine (safe backends only).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import FAKE_ONLY, TESTS_DIR, run_cli, write_entry_point_distribution

from bench.cli import main as cli
from bench.commands.session import RunOutcome, RunSession
from bench.planning.run_config import KEYS

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

SETTINGS = settings(deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])

# -- generated text --------------------------------------------------------------------------------

#: Text a shell could pass: any character but NUL (argv cannot hold one) and lone surrogates
#: (undecodable bytes; printing those is not what these properties are about).
ANY_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                   max_size=24)
NAMES = ["linear", "picky", "memory-scaling", "torch-only", "numpy-euler", "numpy-raise",
         "numpy-nan", "numpy-adjoint", "numpy-euler-fine", "nope"]
BACKEND_TEXTS = ["numpy-euler", "numpy-euler[steps=3]", "numpy-euler[steps=[2,3]]",
                 "numpy-euler[tol=[0.1,0.01]]", "numpy-euler[n=2,steps=3]", "numpy-raise,numpy-nan",
                 "numpy-euler[flavour=salted]", "numpy-euler[", "numpy-euler]]", "numpy-euler[]",
                 "numpy-euler[steps=]", "numpy-adjoint[steps=-1]", ",", "[", "all"]
NUMBERS = ["0", "1", "2", "-1", "0-3", "3-1", "1e9", "nan", "inf", "2.5", "\u0663", "1_000",
           "99999", "9" * 40, "", " ", "auto", "0x10", "4294967296", "1,2,2"]


def values(*pool: str) -> st.SearchStrategy[str]:
    """A value from ``pool``, or any text."""
    return st.one_of(st.sampled_from(pool), ANY_TEXT) if pool else ANY_TEXT


#: ``bench run`` options and their values (no --scheduler/--cluster: those reach the network or
#: start Dask, tested in test_bad_input.py).
RUN_OPTIONS: dict[str, st.SearchStrategy[str] | None] = {
    "--suite": values(*NAMES, "linear,picky", "all", "linear,nope"),
    "--backends": values(*BACKEND_TEXTS),
    "--backend-set": values("steps=3", "steps=[2,3]", "tol=0.1", "n=2", "nope=1", "steps",
                            "=", "flavour=[plain,salted]"),
    "--budget": values("smoke", "quick", "measure", "paper"),
    "--device": values("cpu", "auto", "cuda", "tpu"),
    "--seeds": values(*NUMBERS),
    "--timeout": values(*NUMBERS),
    "--max-memory-mb": values(*NUMBERS),
    "--threads": values(*NUMBERS),
    "--jobs": values(*NUMBERS),
    "--max-cells": values(*NUMBERS),
    "--cluster-timeout": values(*NUMBERS),
    "--set": values("lr=0.5", "lr=nan", "lr=", "lr", "width=8", "steps=4", "=1", "x=y"),
    "--data-dir": values(".", "missing", "x" * 300),
    "--resume": None,
}
MEMORY_OPTIONS: dict[str, st.SearchStrategy[str] | None] = {
    "--backends": RUN_OPTIONS["--backends"], "--backend-set": RUN_OPTIONS["--backend-set"],
    "--steps": values(*NUMBERS), "--device": RUN_OPTIONS["--device"],
    "--timeout": values(*NUMBERS), "--threads": values(*NUMBERS),
    "--max-cells": values(*NUMBERS), "--set": values("width=8", "batch=2", "steps=4", "x=1"),
    "--resume": None,
}


@st.composite
def option_list(draw: st.DrawFn, options: dict[str, st.SearchStrategy[str] | None]
                ) -> list[str]:
    words: list[str] = []
    for name in draw(st.lists(st.sampled_from(sorted(options)), max_size=6)):
        words.append(name)
        strategy = options[name]
        if strategy is not None:
            words.append(draw(strategy))
    if draw(st.booleans()) and words:  # a stray word: a value without its option, or a typo
        words.insert(draw(st.integers(0, len(words))), draw(values("--nope", "-x", "run")))
    return words


# -- the harness -----------------------------------------------------------------------------------


def _stub_run_cells(self: RunSession, run_dir):
    """The cells, not run: one ``ok`` row each (no process, no training)."""
    from bench.engine.cell import base_row

    rows = []
    try:
        for spec in self.request.cells:
            row = base_row(spec, None, None, "ok")
            run_dir.append_row(row)
            rows.append(row)
    finally:
        run_dir.unlock()
    return RunOutcome(run_dir, tuple(rows))


@pytest.fixture
def bench_main(monkeypatch):
    """``main(argv, cwd)`` -> (status, stdout, stderr), in-process, fake plugins, stub cells
    (and no measurement of the host's load)."""
    monkeypatch.setattr(cli, "_selection", lambda: FAKE_ONLY)
    monkeypatch.setattr(RunSession, "run_cells", _stub_run_cells)
    # the half-second measurement of the host's load before the first cell: not about input
    monkeypatch.setattr(RunSession, "check_host_load", lambda self: {})

    def main(argv: list[str], cwd: Path) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        before = os.getcwd()
        os.chdir(cwd)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    status = cli.main(argv)
                except SystemExit as exc:  # argparse: 2 for errors, 0 for --help
                    status = exc.code if isinstance(exc.code, int) else 2
        finally:
            os.chdir(before)
        return status, out.getvalue(), err.getvalue()
    return main


@contextlib.contextmanager
def scratch() -> Iterator[Path]:
    """A fresh folder per example (Hypothesis runs many examples in one test call)."""
    path = Path(tempfile.mkdtemp(prefix="bench-prop-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _tree(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


def check(status: int, out: str, err: str, root: Path, before: set[Path],
          allowed: list[Path]) -> None:
    """The properties: 0, 1 or 2 (3 only from ``bench compare``: times that could not be
    judged); no traceback; nothing new outside ``allowed``."""
    hypothesis.event(f"exit status {status}")  # --hypothesis-show-statistics: how many ran
    assert status in (0, 1, 2) or (status == 3 and "TIMES NOT COMPARABLE" in out), (status, err)
    assert "Traceback" not in err and "Traceback" not in out, err
    new = {p for p in _tree(root) - before
           if not any(p == a or a in p.parents for a in allowed)}
    assert not new, f"written outside --out: {sorted(map(str, new))}"


# -- command lines ---------------------------------------------------------------------------------


@settings(SETTINGS, max_examples=100)
@given(command=st.sampled_from(["run", "run", "run", "memory"]), data=st.data())
def test_any_run_command_line_exits_0_1_or_2_and_writes_only_its_out(bench_main, command, data):
    options = RUN_OPTIONS if command == "run" else MEMORY_OPTIONS
    words = data.draw(option_list(options))
    with scratch() as root:
        out = root / data.draw(st.sampled_from(["out", "out dir", "o\u00e9"]))
        if data.draw(st.booleans()):  # an existing run to --resume or refuse
            out.mkdir()
            if data.draw(st.booleans()):
                (out / "rows.jsonl").write_text('{"torn": \n')
        before = _tree(root)
        status, stdout, stderr = bench_main([command, *words, "--out", str(out)], root)
        check(status, stdout, stderr, root, before, [out])


@settings(SETTINGS, max_examples=40)
@given(data=st.data())
def test_any_other_command_line_exits_0_1_or_2(bench_main, data):
    words = data.draw(st.lists(values("--format", "html", "csv", "latex", "markdown",
                                      "--columns", "suite,nope", "--to", "--max-slowdown",
                                      "nan", "-1", "RUN", "."), max_size=5))
    command = data.draw(st.sampled_from(["report", "compare", "index", "publish", "list"]))
    with scratch() as root:
        run = root / "RUN"
        run.mkdir()
        (run / "rows.jsonl").write_text("")
        before = _tree(root)
        argv = [command, *[str(run) if w == "RUN" else w for w in words]]
        if command == "report" and "--format" in words:
            argv += ["--out", str(root / "page.html")]
        status, stdout, stderr = bench_main(argv, root)
        allowed = [root / "page.html", run / "index.html", run / "README.md"]
        if command == "index" and "." in words:  # `bench index .` indexes the folder it names
            allowed += [root / "index.html", root / "README.md"]
        check(status, stdout, stderr, root, before, allowed)


# -- run files -------------------------------------------------------------------------------------

SCALARS = st.one_of(st.integers(-5, 10**12), st.floats(allow_nan=True), st.booleans(), ANY_TEXT,
                    st.sampled_from(NAMES + BACKEND_TEXTS + NUMBERS))
TOML_VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.one_of(ANY_TEXT, st.sampled_from(
        ["name", "steps", "tol", "flavour", "lr", "rtol"])), inner, max_size=3)), max_leaves=8)


def toml_value(value: object) -> str:
    """``value`` as a TOML value (inline tables and arrays)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    assert isinstance(value, dict)
    return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"


@st.composite
def run_files(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["toml", "toml", "toml", "text", "bytes"]))
    if kind == "bytes":
        return draw(st.binary(max_size=64))
    if kind == "text":
        return draw(ANY_TEXT).encode()
    keys = st.one_of(st.sampled_from(sorted(KEYS)), ANY_TEXT)
    table = draw(st.dictionaries(keys, TOML_VALUES, max_size=6))
    if draw(st.booleans()):
        table.setdefault("suites", "linear")
        table.setdefault("budget", "smoke")
    return "".join(f"{json.dumps(k)} = {toml_value(v)}\n" for k, v in table.items()).encode()


@settings(SETTINGS, max_examples=100)
@given(content=run_files(), extra=option_list({"--backends": RUN_OPTIONS["--backends"],
                                               "--seeds": RUN_OPTIONS["--seeds"]}))
def test_any_run_file_exits_0_1_or_2_and_writes_only_its_out(bench_main, content, extra):
    with scratch() as root:
        config = root / "grid.toml"
        config.write_bytes(content)
        out = root / "out"
        before = _tree(root)
        status, stdout, stderr = bench_main(["run", "--config", str(config), *extra, "--out",
                                             str(out)], root)
        check(status, stdout, stderr, root, before, [out])


# -- rows.jsonl lines ------------------------------------------------------------------------------

JSON_VALUES = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(),
                                     ANY_TEXT),
                           lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                   st.dictionaries(ANY_TEXT, inner, max_size=3)),
                           max_leaves=6)


def _row_template() -> dict:
    from bench.engine.cell import base_row
    from bench.planning.cells import CellSpec

    spec = CellSpec("linear", "numpy-euler", "smoke", 0, "cpu")
    row = json.loads(base_row(spec, None, None, "ok").to_json())
    row.update({"train_step_time_s": 0.01, "peak_memory_bytes": 1000, "metric": 0.5,
                "metric_name": "rate_error", "metrics": {"rate_error": 0.5}})
    return row


@st.composite
def rows_lines(draw: st.DrawFn) -> str:
    template = _row_template()
    lines = []
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["row", "row", "changed", "json", "text"]))
        if kind == "text":
            lines.append(draw(ANY_TEXT).replace("\n", " "))
        elif kind == "json":
            lines.append(json.dumps(draw(JSON_VALUES)))
        else:
            row = dict(template)
            row["seed"] = draw(st.integers(0, 3))
            row["cell_id"] = f"linear/numpy-euler/smoke/seed{row['seed']}/cpu"
            row["status"] = draw(st.sampled_from(["ok", "failed", "unsupported", "bogus"]))
            if kind == "changed":
                for key in draw(st.lists(st.sampled_from(sorted(template)), max_size=3)):
                    if draw(st.booleans()):
                        row[key] = draw(JSON_VALUES)
                    else:
                        row.pop(key, None)
            lines.append(json.dumps(row))
    return "\n".join(lines) + draw(st.sampled_from(["\n", "", '\n{"torn": ']))


@settings(SETTINGS, max_examples=50)
@given(rows=rows_lines(), config=st.sampled_from(["", "{}", "[1]", "not json",
                                                  '{"suites": 5, "options": []}']),
       command=st.sampled_from(["markdown", "csv", "latex", "html", "two", "compare", "publish",
                                "index"]))
def test_any_rows_file_is_read_or_refused_cleanly(bench_main, rows, config, command):
    with scratch() as root:
        run = root / "results" / "run"
        run.mkdir(parents=True)
        (run / "rows.jsonl").write_text(rows, encoding="utf-8")
        if config:
            (run / "config.json").write_text(config)
        argv = {"two": ["report", str(run), str(run)], "compare": ["compare", str(run), str(run)],
                "publish": ["publish", str(run), "--to", str(root / "results" / "pub")],
                "index": ["index", str(root / "results")],
                "html": ["report", str(run), "--format", "html"]}.get(
                    command, ["report", str(run), "--format", command])
        before = _tree(root)
        status, stdout, stderr = bench_main(argv, root)
        allowed = [run / "index.html", root / "results" / "pub", root / "results" / "README.md"]
        check(status, stdout, stderr, root, before, allowed)


# -- a few through a real process and the real engine ----------------------------------------------


@pytest.fixture(scope="module")
def process_env(tmp_path_factory) -> dict[str, str]:
    site = write_entry_point_distribution(tmp_path_factory.mktemp("site"))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(TESTS_DIR), env.get("PYTHONPATH", "")])
    env["BENCH_LOAD_PLUGINS"] = "fake"
    return env


SAFE_RUN = {  # only backends that end quickly: no hang, no memory hog, never `all`
    "--backends": st.sampled_from(["numpy-euler", "numpy-raise", "numpy-euler[steps=[2,3]]",
                                   "numpy-euler[", "numpy-hang[steps=nope]"]),
    "--seeds": values("0", "0-1", "\u0663", "-1"),
    "--threads": values("1", "99999", "auto"),
    "--suite": st.sampled_from(["linear", "picky", "nope"]),
    "--timeout": st.sampled_from(["30", "nan"]),
}


@settings(SETTINGS, max_examples=2)
@given(words=option_list(SAFE_RUN))
def test_a_few_command_lines_through_a_real_process(process_env, words):
    if "--backends" not in words:
        words = [*words, "--backends", "numpy-euler"]
    with scratch() as root:
        out = root / "out"
        before = _tree(root)
        result = run_cli(["run", "--budget", "smoke", "--max-cells", "4", *words, "--out",
                          str(out)], process_env, root, timeout=120)
        check(result.returncode, result.stdout, result.stderr, root, before, [out])


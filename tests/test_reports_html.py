"""Issue 19: the self-contained HTML page (rendered in headless Chromium), `bench compare` as a
CI gate, plots with seed bands, the generated results index. Runs are faked: rows.jsonl files
written directly with ResultRow (and traces for the plots); no cell runs."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cli import main as cli
from bench.core.rows import ResultRow
from bench.reports.compare import Thresholds, compare_runs
from bench.reports.html_report import html_page
from bench.reports.plots import plot_run, style_line
from bench.reports.publish import publish_run
from bench.store.results import RunDirectory
from bench.store.results_index import MARKER, write_index

ROOT = Path(__file__).resolve().parent.parent
BACKENDS = [f"backend-{i:02d}" for i in range(12)]


def fake_run(path: Path, seeds=(0, 1, 2), backends=BACKENDS, step_time=None, memory=None,
             metric=None, status=None, traces=True) -> Path:
    """A run directory with one row per backend and seed (values from the callables)."""
    run_dir = RunDirectory.create(path)
    run_dir.write_json("config.json", {"command": "run", "budget": "quick", "device": "cpu",
                                       "started_at": "2026-11-30T07:00:00+00:00",
                                       "command_line": ["bench", "run", "--suite", "mnist"]})
    run_dir.append_jsonl("invocations.jsonl", json.dumps(
        {"started_at": "2026-11-30T07:00:00+00:00",
         "command_line": ["bench", "run", "--suite", "mnist", "--seeds", "0-2"]}))
    run_dir.write_json("environment.json", {"cpu_model": "Fake <CPU> & co",
                                            "git": {"commit": "abc123def456", "dirty": False}})
    for b, backend in enumerate(backends):
        for seed in seeds:
            cell_id = f"mnist/{backend}/quick/seed{seed}/cpu"
            state = status(backend, seed) if status else "ok"
            row = ResultRow(
                cell_id=cell_id, suite="mnist", backend=backend, framework="numpy",
                gradient_method="direct", solver="euler", device="cpu", seed=seed,
                budget="quick", status=state,
                error="" if state == "ok" else "RuntimeError: <boom> & the whole first line\n"
                "Traceback line two",
                metric_name="test_error_pct", metric_direction="lower",
                metrics={"test_error_pct": metric(backend, seed) if metric else 2.0 + seed},
                nfe_forward=20.0 + b, nfe_backward=40.0 + b, train_steps=10,
                train_step_time_s=step_time(backend, seed) if step_time else 0.1,
                peak_memory_bytes=int(memory(backend, seed) if memory else 100 * 2**20),
            )
            run_dir.append_row(row)
            if traces and state == "ok":
                cell = run_dir.cell_dir(cell_id)
                steps = [{"step": i, "time_s": 0.1, "nfe_forward": 20 + b + seed + i % 3,
                          "nfe_backward": 40 + b + 2 * seed} for i in range(10)]
                evals = [{"step": s, "train_time_s": 0.1 * s * (1 + 0.1 * seed),
                          "test_error_pct": 50.0 / s + b + seed} for s in (2, 4, 6, 8, 10)]
                (cell / "trace.json").write_text(json.dumps({"steps": steps,
                                                             "evaluations": evals}))
            if state != "ok":
                (run_dir.cell_dir(cell_id) / "error.log").write_text("Traceback\n")
    return run_dir.path


def failing(backend, seed):
    return "failed" if backend == "backend-03" and seed == 1 else "ok"


# -- plots ----------------------------------------------------------------------------------------
@pytest.fixture
def saved_figures(monkeypatch):
    """The figures saved during the test, by file name (kept open for inspection)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import bench.reports.plots as plots

    saved = {}
    real_save = plots.save_figure

    def save_figure(fig, out, **kwargs):  # every plot is saved through it (whole, no link)
        saved[Path(out).name] = fig
        return real_save(fig, out, **kwargs)

    monkeypatch.setattr(plots, "save_figure", save_figure)
    monkeypatch.setattr(plt, "close", lambda fig=None: None)
    yield saved
    plt.close("all")


def test_seeds_are_one_line_with_a_band_and_styles_differ_past_ten(tmp_path, saved_figures):
    saved = saved_figures
    path = fake_run(tmp_path / "run")
    files = plot_run(path)
    assert sorted(f.name for f in files) == ["mnist_nfe_per_iteration.png",
                                             "mnist_test_error_pct_vs_time.png"]
    fig = saved["mnist_test_error_pct_vs_time.png"]
    ax = fig.axes[0]
    assert len(ax.get_lines()) == len(BACKENDS)  # 3 seeds each: one line, not three
    assert len(ax.collections) == len(BACKENDS)  # one min-max band per line
    assert "device cpu (Fake <CPU> & co); budget quick" in ax.get_title()
    assert "(%)" in ax.get_ylabel() and ", s" in ax.get_xlabel()
    legend = ax.get_legend()
    assert legend is not None and legend.get_bbox_to_anchor().x0 > ax.bbox.x1  # outside the axes
    styles = {(line.get_color(), line.get_linestyle()) for line in ax.get_lines()}
    assert len(styles) == len(BACKENDS)  # the 11th and 12th lines differ from the 1st and 2nd
    nfe = saved["mnist_nfe_per_iteration.png"]
    assert [len(a.get_lines()) for a in nfe.axes] == [len(BACKENDS), len(BACKENDS)]
    assert "function evaluations" in nfe.axes[0].get_ylabel()
    # the median of seeds 0, 1, 2 at each step: seed 1's value
    first = nfe.axes[0].get_lines()[0]
    assert list(first.get_ydata()[:3]) == [21, 22, 23]
    assert style_line(0) != style_line(10)


def test_memory_plot_in_the_same_style(tmp_path, saved_figures):
    import pandas as pd

    from bench.studies.memory import plot_scaling

    frame = pd.DataFrame([{"backend": b, "steps": L, "status": "ok",
                           "peak_memory_bytes": (i + 1) * L * 2**20}
                          for i, b in enumerate(BACKENDS) for L in (8, 16, 32)])
    plot_scaling(frame, str(tmp_path / "memory_scaling.png"), "memory (cpu)")
    ax = saved_figures["memory_scaling.png"].axes[0]
    legend = ax.get_legend()
    assert legend is not None and legend.get_bbox_to_anchor().x0 > ax.bbox.x1
    styles = {(line.get_color(), line.get_marker()) for line in ax.get_lines()}
    assert len(styles) == len(BACKENDS)


# -- HTML page ------------------------------------------------------------------------------------
def test_page_is_self_contained_and_escaped(tmp_path):
    path = fake_run(tmp_path / "run", status=failing)
    plot_run(path)
    page = html_page(path)
    assert "Fake &lt;CPU&gt; &amp; co" in page and "<CPU>" not in page
    assert page.count('<tr class="st-') == len(BACKENDS) * 3
    assert page.count('src="data:image/png;base64,') == 2
    assert not re.search(r'(src|href)="(http|//)', page)  # nothing fetched
    assert "RuntimeError: &lt;boom&gt; &amp; the whole first line" in page
    assert "train_step_time_s" in page and "peak_memory_mib" in page
    assert "bench run --suite mnist --seeds 0-2" in page
    assert 'href="cells/mnist__backend-03__quick__seed1__cpu/error.log"' in page


def test_report_html_out_and_bad_options(tmp_path, capsys):
    path = fake_run(tmp_path / "run", seeds=(0,), traces=False)
    out = tmp_path / "page.html"
    assert cli.main(["report", str(path), "--format", "html", "--out", str(out)]) == 0
    assert out.read_text().startswith("<!DOCTYPE html>") and not (path / "index.html").exists()
    assert cli.main(["report", str(path), "--out", str(out)]) == 2
    assert "--out is for --format html" in capsys.readouterr().err
    assert cli.main(["report", str(path), str(path), "--format", "html"]) == 2
    assert "--format html takes one run directory" in capsys.readouterr().err


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _dump_dom(url: str, tmp_path: Path) -> str:
    browser = _chromium()
    result = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=3000",
         "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.mark.skipif(_chromium() is None, reason="no chromium binary (apt-get install chromium)")
def test_page_renders_in_headless_chromium(tmp_path):
    path = fake_run(tmp_path / "run", status=failing)
    plot_run(path)
    assert cli.main(["report", str(path), "--format", "html"]) == 0
    page = path / "index.html"
    dom = _dump_dom(page.as_uri(), tmp_path)
    assert len(re.findall(r'<tr class="st-', dom)) == len(BACKENDS) * 3
    images = re.findall(r"<img [^>]*>", dom)
    assert len(images) == 2 and all('data-rendered="1"' in img for img in images), images
    # the filter script runs: the address selects the failed cells only
    dom = _dump_dom(page.as_uri() + "#status=failed", tmp_path)
    shown = re.search(r'<span id="shown">(\d+)</span>', dom)
    assert shown and shown.group(1) == "1"
    assert len(re.findall(r'<tr class="st-[a-z]+" style="display: none;">', dom)) == 35
    # the sort script runs: descending by the backward NFE (20 + the backend's number)
    dom = _dump_dom(page.as_uri() + "#sort=-nfe_backward", tmp_path)
    header = re.findall(r'<th [^>]*data-col="([^"]*)"', dom.split('id="results"')[1])
    at = header.index("nfe_backward")
    body = dom.split('id="results"')[1].split("<tbody>")[1]
    values = [float(re.findall(r'<td data-v="([^"]*)"', row)[at])
              for row in body.split("</tr>") if "<td" in row]
    assert values == sorted(values, reverse=True) and values[0] > values[-1]
    # and the sorted column says so: aria-sort and a down arrow on its header alone
    heads = re.findall(r"<th [^>]*>.*?</th>", dom.split('id="results"')[1].split("<tbody>")[0])
    assert 'aria-sort="descending"' in heads[at] and "\u25bc" in heads[at]
    assert sum("aria-sort" in h for h in heads) == 1


@pytest.mark.skipif(_chromium() is None, reason="no chromium binary (apt-get install chromium)")
def test_status_filter_shows_no_row_when_no_cell_has_that_status(tmp_path):
    """A published page without failures: #status=failed shows none of its rows (it used to
    leave the select unchanged and show them all)."""
    path = fake_run(tmp_path / "run", seeds=(0,), traces=False)
    assert cli.main(["report", str(path), "--format", "html"]) == 0
    dom = _dump_dom((path / "index.html").as_uri() + "#status=failed", tmp_path)
    shown = re.search(r'<span id="shown">(\d+)</span>', dom)
    assert shown and shown.group(1) == "0"
    assert len(re.findall(r'<tr class="st-ok" style="display: none;">', dom)) == len(BACKENDS)
    assert "failed (none)" in dom


# -- compare --------------------------------------------------------------------------------------
def slower(backend, seed):
    return 0.13 if backend == "backend-02" else 0.1


def _rewrite_rows(path: Path, change) -> None:
    """Edit a fake run's rows.jsonl in place: ``change(row dict)`` returns the new dict."""
    rows = [json.loads(line) for line in (path / "rows.jsonl").read_text().splitlines()]
    (path / "rows.jsonl").write_text("".join(json.dumps(change(r)) + "\n" for r in rows))


def test_compare_fails_on_a_regression_and_names_it(tmp_path, capsys):
    base = fake_run(tmp_path / "base", seeds=(0,), traces=False)
    new = fake_run(tmp_path / "new", seeds=(0,), traces=False, step_time=slower,
                   memory=lambda b, s: 106 * 2**20 if b == "backend-05" else 100 * 2**20,
                   metric=lambda b, s: 3.0 if b == "backend-07" else 2.0)
    code = cli.main(["compare", str(base), str(new), "--max-metric-change", "0.5"])
    out = capsys.readouterr().out
    assert code == 1
    failures = out.split("FAIL:")[1]
    assert "(time, memory, metric)" in out.split("\n  ")[0]
    assert ("mnist/backend-02/quick/seed0/cpu train_step_time_s: 0.1 -> 0.13, x1.300 (limit "
            "x1.100)") in failures
    assert "backend-05/quick/seed0/cpu peak_memory_mib: 100 -> 106, x1.060" in failures
    assert "backend-07/quick/seed0/cpu test_error_pct: 2 -> 3, +1" in failures
    assert failures.count("\n  ") == 3
    assert "moved: time 1, memory 1, metric 1" in out
    # looser thresholds: nothing crossed, and the summary still says what moved
    assert cli.main(["compare", str(base), str(new), "--max-slowdown", "1.5",
                     "--max-memory-growth", "1.1", "--max-metric-change", "1"]) == 0
    out = capsys.readouterr().out
    assert "OK: every figure within its tolerance" in out and "moved: memory 1, metric 1" in out


def test_compare_pairs_seeds_and_fails_when_new_lacks_one(tmp_path, capsys):
    base = fake_run(tmp_path / "base", seeds=(0, 1, 2), traces=False)
    fewer = fake_run(tmp_path / "fewer", seeds=(0, 1), traces=False)
    assert cli.main(["compare", str(base), str(fewer)]) == 1
    out = capsys.readouterr().out
    assert ("mnist/backend-00/quick/seed2/cpu cell: in BASE (ok), missing in NEW"
            in out.split("FAIL:")[1])
    assert out.split("FAIL:")[1].count("seed2/cpu cell") == len(BACKENDS)
    # each seed pairs with its own: seed 1's metric (3.0) is not compared with seed 0's (2.0)
    comparison = compare_runs(base, base, Thresholds())
    assert comparison.exit_status == 0 and not comparison.failed


def test_compare_fails_when_a_cell_stops_working(tmp_path, capsys):
    base = fake_run(tmp_path / "base", seeds=(0, 1, 2), traces=False)
    new = fake_run(tmp_path / "new", seeds=(0, 1, 2), traces=False, status=failing)
    assert cli.main(["compare", str(base), str(new)]) == 1
    assert "ok in BASE, failed in NEW" in capsys.readouterr().out


def test_compare_fails_on_a_metric_that_is_missing_or_not_finite(tmp_path, capsys):
    base = fake_run(tmp_path / "base", seeds=(0,), traces=False, backends=["b"])
    new = fake_run(tmp_path / "new", seeds=(0,), traces=False, backends=["b"])
    _rewrite_rows(new, lambda r: {**r, "metrics": {"test_error_pct": float("nan")}})
    assert cli.main(["compare", str(base), str(new)]) == 1
    assert "NEW's test_error_pct is nan: missing or not a finite number" in (
        capsys.readouterr().out)
    _rewrite_rows(new, lambda r: {**r, "metrics": {}})
    assert cli.main(["compare", str(base), str(new)]) == 1
    assert "NEW's test_error_pct is None" in capsys.readouterr().out


def test_compare_fails_when_base_has_no_ok_row(tmp_path, capsys):
    base = fake_run(tmp_path / "base", seeds=(0,), traces=False, backends=["b"],
                    status=lambda b, s: "failed")
    new = fake_run(tmp_path / "new", seeds=(0,), traces=False, backends=["b"])
    assert cli.main(["compare", str(base), str(new)]) == 1
    assert "BASE has no ok row: there is nothing to gate on" in capsys.readouterr().out


def test_flagged_times_are_not_judged_and_exit_with_their_own_status(tmp_path, capsys):
    """Counts and metrics match; only the step time differs, and NEW's timing is flagged (a
    loaded machine): neither a pass nor a slowdown, exit 3, with the reason."""
    base = fake_run(tmp_path / "base", seeds=(0,), traces=False, backends=["b"])
    new = fake_run(tmp_path / "new", seeds=(0,), traces=False, backends=["b"],
                   step_time=lambda b, s: 1.5)
    _rewrite_rows(new, lambda r: {**r, "timing_flag": True,
                                  "timing_warning": "host loaded: other processes kept 1.60 "
                                                    "cores busy"})
    assert cli.main(["compare", str(base), str(new)]) == 3
    out = capsys.readouterr().out
    assert "FAIL" not in out and "OK:" not in out
    assert "TIMES NOT COMPARABLE: 1 step time(s) could not be judged (exit status 3)" in out
    assert "NEW's timing is flagged (host loaded: other processes kept 1.60 cores busy)" in out
    assert "moved: nothing" in out  # no count, metric or memory moved
    # unflagged, the same slowdown fails as one
    _rewrite_rows(new, lambda r: {**r, "timing_flag": False, "timing_warning": ""})
    assert cli.main(["compare", str(base), str(new)]) == 1
    assert "moved: time 1" in capsys.readouterr().out


def test_compare_says_which_columns_it_could_not_compare(tmp_path, capsys):
    base = fake_run(tmp_path / "base", seeds=(0,), traces=False, backends=["b"])
    new = fake_run(tmp_path / "new", seeds=(0,), traces=False, backends=["b"])
    _rewrite_rows(new, lambda r: {**r, "train_step_time_s": None, "nfe_backward": 41.0})
    assert cli.main(["compare", str(base), str(new)]) == 1
    out = capsys.readouterr().out
    assert ("note: mnist/b/quick/seed0/cpu: train_step_time_s not compared (BASE 0.1, NEW None: "
            "not measured on one side)") in out
    assert "nfe_backward: 40 -> 41, +1 (limit 0.01 relative)" in out and "moved: count 1" in out
    assert cli.main(["compare", str(base), str(new), "--max-count-change", "0.05"]) == 0
    _rewrite_rows(new, lambda r: {**r, "nfe_backward": 40.2})  # 0.5%: within the default 1%
    assert cli.main(["compare", str(base), str(new)]) == 0
    assert cli.main(["compare", str(base), str(new), "--max-count-change", "0"]) == 1


def test_compare_bad_input_exits_2(tmp_path, capsys):
    base = fake_run(tmp_path / "base", seeds=(0,), traces=False)
    assert cli.main(["compare", str(base), str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli.main(["compare", str(base), str(base), "--max-slowdown", "0"]) == 2
    assert "--max-slowdown 0.0: expected a positive ratio" in capsys.readouterr().err
    other = fake_run(tmp_path / "other", seeds=(0,), traces=False, backends=["zzz"])
    assert cli.main(["compare", str(base), str(other)]) == 2
    err = capsys.readouterr().err
    assert "nothing to compare" in err and "backends BASE: backend-00" in err


def test_compare_matches_options_like_memory_steps(tmp_path, capsys):
    base = fake_run(tmp_path / "base", seeds=(0,), traces=False, backends=["b"])
    new = fake_run(tmp_path / "new", seeds=(0,), traces=False, backends=["b"])
    for path, times in ((base, (0.1, 1.0)), (new, (0.1, 1.2))):  # L=64 is 20% slower in NEW
        rows = [json.loads(line) for line in (path / "rows.jsonl").read_text().splitlines()]
        lines = []
        for L, t in zip((8, 64), times, strict=True):
            lines.append(json.dumps({**rows[0], "cell_id": rows[0]["cell_id"] + f"/steps={L}",
                                     "train_step_time_s": t}))
        (path / "rows.jsonl").write_text("\n".join(lines) + "\n")
    assert cli.main(["compare", str(base), str(new)]) == 1
    failures = capsys.readouterr().out.split("FAIL:")[1]
    assert "mnist/b/quick/seed0/cpu/steps=64 train_step_time_s: 1 -> 1.2" in failures
    assert "steps=8" not in failures


def test_compare_reads_published_folders(tmp_path, capsys):
    base = fake_run(tmp_path / "base", seeds=(0,), traces=False)
    new = fake_run(tmp_path / "new", seeds=(0,), traces=False, step_time=slower)
    publish_run(base, tmp_path / "results" / "base")
    assert (tmp_path / "results" / "base" / "index.html").exists()
    assert cli.main(["compare", str(tmp_path / "results" / "base"), str(new)]) == 1
    assert "backend-02" in capsys.readouterr().out


# -- results index --------------------------------------------------------------------------------
def test_results_index_keeps_hand_written_text_and_links_each_page(tmp_path):
    results = tmp_path / "results"
    publish_run(fake_run(tmp_path / "a", seeds=(0,), traces=False), results / "mnist-quick-cpu")
    (results / "README.md").write_text("# Published\n\nHand-written words.\n")
    write_index(results)
    text = (results / "README.md").read_text()
    assert text.startswith("# Published\n\nHand-written words.\n") and MARKER in text
    line = [x for x in text.splitlines() if x.startswith("| [mnist-quick-cpu]")][0]
    # markdown escapes & too (07fe792: an entity such as &lt;b&gt; would show as <b>)
    for part in ("mnist", "cpu (Fake \\<CPU\\> \\& co)", "quick", "2026-11-30", "`abc123def4`",
                 "[table](mnist-quick-cpu/results.md)", "[page](mnist-quick-cpu/index.html)"):
        assert part in line
    # publish refreshes a generated index; the hand-written text stays
    cli.main(["publish", str(fake_run(tmp_path / "b", seeds=(0,), traces=False)),
              "--to", str(results / "second")])
    text = (results / "README.md").read_text()
    assert "| [second](second/)" in text and text.count(MARKER) == 1
    assert "Hand-written words." in text


def test_every_published_folder_has_its_page_and_an_index_line():
    from bench.reports.claims_publish import claims_sources, is_claims_folder

    results = ROOT / "results"
    text = (results / "README.md").read_text()
    for folder in sorted(p for p in results.iterdir() if p.is_dir()):
        if is_claims_folder(folder):  # several runs and their claim x run tables
            assert f"[claims]({folder.name}/claims.md)" in text
            runs = claims_sources(folder)[1]
            assert runs and all((sub / "index.html").exists() for sub in runs), folder
            continue
        assert (folder / "index.html").exists(), (
            f"{folder} has no index.html (bench report {folder} --format html)")
        assert f"[page]({folder.name}/index.html)" in text


def test_cli_help_lists_the_new_commands():
    out = subprocess.run([sys.executable, "-m", "bench.cli.main", "--help"], capture_output=True,
                         text=True, cwd=ROOT).stdout
    assert "compare" in out and "index" in out

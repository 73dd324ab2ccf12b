"""Issue 32: published folders are generated, never edited (a committed page that differs from
its regeneration fails here), every column that tells rows apart is shown, the page's flag column
sits beside the times and its device line names one device, full reasons are reachable, and the
plots' tick and point labels never overlap (measured as drawn text extents) while lines on the
same points stay distinguishable."""

from __future__ import annotations

import dataclasses
import html
import json
import shutil
from pathlib import Path

import pytest

from bench.cli import main as cli
from bench.cli.regenerate import regenerate
from bench.core.rows import ResultRow
from bench.reports.html_report import device_line, html_page, page_columns
from bench.reports.publish import publish_run
from bench.store.results import RunDirectory

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results"


def _row(cell_id: str, backend: str, **fields) -> ResultRow:
    base = dict(cell_id=cell_id, suite="cnf", backend=backend, framework="torch",
                gradient_method="backprop", solver="dopri5", device="cpu", seed=0,
                budget="smoke", status="ok", metric_name="nll_nats", metric_direction="lower",
                metrics={"nll_nats": 3.0}, nfe_forward=20.0, nfe_backward=30.0, train_steps=3,
                train_step_time_s=0.1)
    return ResultRow(**{**base, **fields})


def fake_run(path: Path, rows: list[ResultRow], command: str = "run") -> Path:
    run_dir = RunDirectory.create(path)
    run_dir.write_json("config.json", {"command": command, "budget": "smoke", "device": "cpu",
                                       "threads": 1,
                                       "started_at": "2026-12-01T07:00:00+00:00",
                                       "command_line": ["bench", "run", "--suite", "cnf"]})
    run_dir.write_json("environment.json", {"cpu_model": "AMD EPYC",
                                            "git": {"commit": "abc123def456", "dirty": False}})
    for row in rows:
        run_dir.append_row(row)
    return run_dir.path


# -- published pages are generated ----------------------------------------------------------------
def test_every_committed_page_is_what_its_sources_make():
    """results/*/results.md, index.html, a study's table and results/README.md as `bench index
    results --regenerate` writes them: a NOTES.md edited without regenerating fails here."""
    stale = regenerate(RESULTS, check=True)
    assert not stale, (
        "pages that differ from their regeneration: "
        + ", ".join(str(p.relative_to(ROOT)) for p in stale)
        + "; run: bench index results --regenerate (never edit a page by hand)")


def test_a_notes_edit_reaches_the_page_only_through_regeneration(tmp_path, capsys):
    results = tmp_path / "results"
    run = fake_run(tmp_path / "run", [_row("cnf/torch-direct/smoke/seed0/cpu", "torch-direct")])
    publish_run(run, results / "cnf-smoke")
    assert cli.main(["index", str(results), "--regenerate", "--check"]) == 0
    assert "every page under" in capsys.readouterr().out
    (results / "cnf-smoke" / "NOTES.md").write_text("# Notes\n\nA reading added later.\n")
    assert cli.main(["index", str(results), "--regenerate", "--check"]) == 1
    out = capsys.readouterr().out
    assert f"stale: {results / 'cnf-smoke' / 'index.html'}" in out and "results.md" not in out
    assert "A reading added later." not in (results / "cnf-smoke" / "index.html").read_text()
    assert cli.main(["index", str(results), "--regenerate"]) == 0
    assert "rewritten:" in capsys.readouterr().out
    assert "A reading added later." in (results / "cnf-smoke" / "index.html").read_text()
    assert cli.main(["index", str(results), "--regenerate", "--check"]) == 0
    # an edited table is put back as its rows make it
    table = results / "cnf-smoke" / "results.md"
    text = table.read_text()
    table.write_text(text.replace("3 |", "2.5 |"))
    assert regenerate(results) == [table] and table.read_text() == text
    assert cli.main(["index", str(results), "--check"]) == 2  # --check needs --regenerate
    assert "--check and --plots go with --regenerate" in capsys.readouterr().err


def test_publish_writes_the_pages_a_regeneration_writes(tmp_path):
    run = fake_run(tmp_path / "run", [
        _row("cnf/torch-direct/smoke/seed0/cpu", "torch-direct", timing_flag=True,
             timing_warning="host loaded: other processes kept 1.00 cores busy")])
    publish_run(run, tmp_path / "results" / "x", allow_flagged_times=True)
    assert regenerate(tmp_path / "results", check=True) == []
    table = (tmp_path / "results" / "x" / "results.md").read_text()
    assert "0.1 †" in table and "† timing flagged as not comparable" in table


def test_every_published_table_tells_its_rows_apart():
    """In every committed results.md the cells before ``status`` (what identifies a row) differ
    from row to row: the gradient study's k = 1 and k = 4 rows (grad_scale) included."""
    for table in sorted(RESULTS.glob("*/results.md")):
        lines = [line for line in table.read_text().splitlines() if line.startswith("| ")]
        header = [c.strip() for c in lines[0].strip("|").split("|")]
        at = header.index("status")
        keys = [tuple(c.strip() for c in line.strip("|").split("|")[:at]) for line in lines[2:]]
        twice = {k for k in keys if keys.count(k) > 1}
        assert not twice, f"{table}: rows that look alike: {sorted(twice)[:3]}"
    gradients = (RESULTS / "gradient-accuracy-cpu" / "results.md").read_text()
    assert "| grad_scale |" in gradients.splitlines()[0]


# -- the page -------------------------------------------------------------------------------------
def test_page_flags_times_beside_them_one_device_and_full_reasons(tmp_path):
    reason = ("backend 'resnet' has no continuous time: a latent ODE must output the latent "
              "state at every (irregular) observation time; use an ODE backend (e.g. "
              "torch-adjoint, torch-direct, rknet) " + "and more words " * 8).strip()
    rows = [
        _row("cnf/torch-direct/smoke/seed0/cpu", "torch-direct", device_name="AMD EPYC, 1 threads",
             timing_flag=True, timing_warning="host loaded: 1.00 cores busy"),
        _row("cnf/diffrax-checkpoint/smoke/seed0/cpu", "diffrax-checkpoint", framework="jax",
             device_name="AMD EPYC"),
        _row("cnf/resnet/smoke/seed0/cpu", "resnet", status="unsupported", error=reason,
             metrics={}, nfe_forward=None, nfe_backward=None, train_step_time_s=None),
    ]
    path = fake_run(tmp_path / "run", rows)
    page = html_page(path)
    head = page.split('id="results"')[1].split("</thead>")[0]
    columns = [c.split('"')[0] for c in head.split('data-col="')[1:]]
    times = [i for i, c in enumerate(columns) if c.endswith("time_s")]
    assert columns.index("timing_warning") == max(times) + 1  # beside the times, not far right
    body = page.split("<tbody>")[1]
    flagged = [line for line in body.splitlines() if "torch-direct" in line][0]
    assert flagged.count("\u2020</span>") == len(times)  # each of its times marked
    assert "\u2020" not in [line for line in body.splitlines() if "diffrax" in line][0]
    # one device, named once, the threads a fact of their own
    assert "<th>device</th><td>cpu (AMD EPYC)</td>" in page
    assert "<th>threads per cell</th><td>1</td>" in page
    assert device_line([dataclasses.replace(rows[0], device="cuda", device_name="H100")]) == (
        "cuda (H100)")
    # the reason in full: in the table cell's title and in the list of unsupported cells
    assert f'title="{html.escape(reason)}"' in page
    assert f"<li><b>cnf/resnet/smoke/seed0/cpu</b>: {html.escape(reason)}</li>" in page
    assert page_columns(["a", "timing_warning", "b"]) == ["a", "timing_warning", "b"]


def test_markdown_keeps_an_unsupported_reason_whole(tmp_path):
    reason = "backend 'resnet' is not supported: " + "a long reason " * 12 + "end."
    path = fake_run(tmp_path / "run", [
        _row("cnf/resnet/smoke/seed0/cpu", "resnet", status="unsupported", error=reason,
             metrics={}, nfe_forward=None, nfe_backward=None, train_step_time_s=None)])
    publish_run(path, tmp_path / "results" / "r")
    assert reason in (tmp_path / "results" / "r" / "results.md").read_text()


# -- plots ----------------------------------------------------------------------------------------
@pytest.fixture
def figures(monkeypatch):
    """The figures saved during the test, by file name (kept open to measure their text)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import bench.reports.plots as plots

    saved = {}
    real_save = plots.save_figure

    def save_figure(fig, out, **kwargs):
        saved[Path(out).name] = fig
        return real_save(fig, out, **kwargs)

    monkeypatch.setattr(plots, "save_figure", save_figure)
    monkeypatch.setattr(plt, "close", lambda fig=None: None)
    yield saved
    plt.close("all")


def _overlaps(boxes) -> list[tuple[int, int]]:
    return [(i, j) for i in range(len(boxes)) for j in range(i + 1, len(boxes))
            if boxes[i].overlaps(boxes[j])]


def assert_no_text_overlaps(fig) -> None:
    """No two visible tick labels of one axis, and no two point labels of one axes, overlap."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            labels = [t for t in axis.get_ticklabels(which="both")
                      if t.get_visible() and t.get_text()
                      and ax.get_window_extent().expanded(1.5, 1.5).overlaps(
                          t.get_window_extent(renderer))]
            boxes = [t.get_window_extent(renderer) for t in labels]
            assert not _overlaps(boxes), [(labels[i].get_text(), labels[j].get_text())
                                          for i, j in _overlaps(boxes)]
        notes = [t for t in ax.texts if t.get_visible()]
        boxes = [t.get_window_extent(renderer) for t in notes]
        assert not _overlaps(boxes), [(notes[i].get_text(), notes[j].get_text())
                                      for i, j in _overlaps(boxes)]


def _distinct_lines(ax) -> None:
    lines = ([c[0] for c in ax.containers] if ax.containers  # errorbar: its data line
             else [line for line in ax.get_lines() if line.get_label()[:1] != "_"])
    styles = [(line.get_color(), line.get_marker(), line.get_linestyle(),
               line.get_linewidth()) for line in lines]
    assert len(set(styles)) == len(styles)
    # layered: lines drawn later are thinner, so one on the same points as an earlier one shows
    widths = [line.get_linewidth() for line in lines]
    assert widths == sorted(widths, reverse=True) and widths[0] > widths[-1]


def _gradient_rows() -> list[ResultRow]:
    """A study like results/gradient-accuracy-cpu: lines over tolerances 1e-3..1e-8 whose
    points crowd (the time axis spans less than a decade), two lines on the same points."""
    rows = []
    backends = ["torch-direct", "torch-adjoint[adjoint_norm=default]",
                "torch-adjoint[adjoint_norm=seminorm]", "diffrax-checkpoint"]
    for b, backend in enumerate(backends):
        name, _, params = backend.partition("[")
        for k, rtol in enumerate([1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8]):
            label = f"{name}[rtol={rtol:g},atol={rtol:g}" + (f",{params}" if params else "]")
            same = 1 if b == 2 else b  # seminorm on default's points exactly
            rows.append(_row(f"cnf/{label}/smoke/seed0/cpu", label, grad_scale=1.0,
                             rtol=rtol, atol=rtol, grad_rel_error=10 ** (-3 - k * 0.7) * (1 + same),
                             grad_nfe_backward=20.0 + 3 * k + same, grad_time_s=0.02 + 0.002 * k))
    return rows


def test_gradient_plot_labels_do_not_overlap_and_lines_stay_apart(tmp_path, figures):
    from bench.studies.gradient_plots import plot_study

    rows = _gradient_rows()
    # as read back from a published results.csv: no backend_params, only the label
    path = fake_run(tmp_path / "run", rows, command="gradients")
    publish_run(path, tmp_path / "published")
    published = RunDirectory.open(tmp_path / "published").rows()
    assert not any(r.backend_params for r in published)
    plot_study(published, tmp_path / "published")
    fig = figures["cnf_scale1_gradient_error.png"]
    assert_no_text_overlaps(fig)
    ax = fig.axes[0]
    labels = sorted(line.get_label() for line in ax.get_lines())
    assert labels == ["diffrax-checkpoint", "torch-adjoint[adjoint_norm=default]",
                      "torch-adjoint[adjoint_norm=seminorm]", "torch-direct"]
    for each in fig.axes:
        _distinct_lines(each)
    assert ax.texts, "no point is labelled"


def test_work_precision_labels_do_not_overlap(tmp_path, figures):
    from bench.studies.work_precision import plot_work_precision

    rows = []
    for b, backend in enumerate(["torch-direct", "torch-adjoint", "diffrax-checkpoint",
                                 "diffrax-backsolve"]):
        for k, rtol in enumerate([1e-3, 1e-4, 1e-5, 1e-6]):
            label = f"{backend}[rtol={rtol:g},atol={rtol:g}]"
            rows.append(_row(f"cnf/{label}/smoke/seed0/cpu", label, rtol=rtol, atol=rtol,
                             metrics={"nll_nats": 3.71 + 1e-4 * (b % 2)},
                             nfe_forward=30.0 + 4 * k, nfe_backward=30.0 + 4 * k + b % 2,
                             train_step_time_s=0.3 + 0.01 * k))
    path = fake_run(tmp_path / "run", rows)
    plot_work_precision(path)
    fig = figures["cnf_work_precision.png"]
    assert_no_text_overlaps(fig)
    for ax in fig.axes:
        _distinct_lines(ax)


def test_regenerate_redraws_the_row_plots_of_a_gradient_study(tmp_path, figures):
    path = fake_run(tmp_path / "run", _gradient_rows(), command="gradients")
    publish_run(path, tmp_path / "results" / "grads")
    (tmp_path / "results" / "grads" / "results.csv").touch()
    regenerate(tmp_path / "results", plots=True)
    assert "cnf_scale1_gradient_error.png" in figures
    assert (tmp_path / "results" / "grads" / "gradients.md").exists()
    config = json.loads((tmp_path / "results" / "grads" / "config.json").read_text())
    assert config["command"] == "gradients"
    shutil.rmtree(tmp_path / "results" / "grads")


def test_readme_table_is_the_published_rows():
    """README's main-job table quotes results/mnist-quick-cpu seed 0: every cell as the
    published results.csv gives it (a re-measured folder fails here until README follows)."""
    import pandas as pd

    from bench.reports.report import format_value

    text = (ROOT / "README.md").read_text()
    lines = text.split("| backend | gradient_method | solver | test_error_pct")[1].split("\n\n")[0]
    rows = [[c.strip() for c in line.strip("|").split("|")]
            for line in lines.splitlines()[2:] if line.startswith("|")]
    frame = pd.read_csv(RESULTS / "mnist-quick-cpu" / "results.csv")
    frame = frame[frame.seed == 0].set_index("backend")
    assert sorted(r[0] for r in rows) == sorted(frame.index)
    for backend, method, solver, error, nfe_f, nfe_b, step, memory in rows:
        row = frame.loc[backend]
        assert (method, solver) == (row.gradient_method, row.solver)
        published = [row.test_error_pct, row.nfe_forward, row.nfe_backward,
                     row.train_step_time_s, row.peak_memory_bytes / 2**20]
        assert [error, nfe_f, nfe_b, step, memory] == [format_value(float(v)) for v in published]
        assert not row.timing_flag  # the README quotes these times as clean ones

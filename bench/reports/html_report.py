"""One self-contained HTML page per run or published results folder (``index.html``).

The page holds the results table (click a header to sort; select a suite, backend or status to
filter; a few lines of inline JavaScript, no library), the run's PNG plots inlined as base64 data
URIs, the failed cells with their errors, the command lines and the environment. It opens from
disk with no server and no network: nothing is fetched. Every text is escaped. Only regular
files inside the folder are read into the page (a PNG planted as a link to a file elsewhere is
not, and the folder is refused: see :func:`bench.store.files.check_folder`); the page is written
whole and renamed into place, never through a link."""

from __future__ import annotations

import base64
import html
import json
import math
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.core.errors import BenchError
from bench.reports.report import format_value, table_frame
from bench.store.files import atomic_write_text, is_regular_file, read_bytes
from bench.store.results import RunDirectory, rows_to_frame, safe_name, warn

PAGE_NAME = "index.html"
PROBLEM_STATUSES = ("failed", "timeout", "diverged")

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;font-size:13px}
.wide{overflow-x:auto;max-width:100%}
th,td{border:1px solid #ccc;padding:2px 6px;white-space:nowrap}
th{background:#f0f0f0;cursor:pointer;position:sticky;top:0}
td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.st-failed,tr.st-timeout,tr.st-diverged{background:#fde8e8}
tr.st-unsupported{color:#888}
.filters label{margin-right:1em}
img{max-width:100%;border:1px solid #ddd;margin:0.5em 0}
pre{background:#f7f7f7;padding:0.5em;overflow-x:auto;white-space:pre-wrap}
"""

# Sort by a column (numbers as numbers, missing last), filter rows by the selects (also from the
# address: index.html#status=failed&backend=x&sort=-train_step_time_s, '-' for descending);
# decoded images are marked data-rendered.
_SCRIPT = """
(function(){
var table=document.getElementById('results');if(!table)return;
var body=table.tBodies[0],heads=table.tHead.rows[0].cells,dir={};
function key(td){var v=td.getAttribute('data-v');var n=parseFloat(v);
 return (v!==''&&!isNaN(n)&&isFinite(v))?n:v;}
Array.prototype.forEach.call(heads,function(th,i){th.addEventListener('click',function(){
 dir[i]=-(dir[i]||-1);var rows=Array.prototype.slice.call(body.rows);
 rows.sort(function(a,b){var x=key(a.cells[i]),y=key(b.cells[i]);
  if(x===y)return 0;if(x==='')return 1;if(y==='')return -1;
  if(typeof x!==typeof y){x=String(x);y=String(y);}return (x<y?-1:1)*dir[i];});
 rows.forEach(function(r){body.appendChild(r);});});});
var selects=document.querySelectorAll('select[data-col]');
function apply(){var shown=0;Array.prototype.forEach.call(body.rows,function(r){var ok=true;
 Array.prototype.forEach.call(selects,function(s){var c=+s.getAttribute('data-col');
  if(s.value!==''&&r.cells[c].getAttribute('data-v')!==s.value)ok=false;});
 r.style.display=ok?'':'none';if(ok)shown++;});
 document.getElementById('shown').textContent=shown;}
Array.prototype.forEach.call(selects,function(s){s.addEventListener('change',apply);});
location.hash.replace(/^#/,'').split('&').forEach(function(kv){var p=kv.split('=');
 var v=decodeURIComponent(p[1]||''),s=document.getElementById('filter-'+p[0]);
 if(s&&p.length===2)s.value=v;
 if(p[0]==='sort')Array.prototype.forEach.call(heads,function(th){
  if(th.textContent===v.replace(/^-/,'')){th.click();if(v[0]==='-')th.click();}});});
apply();
Array.prototype.forEach.call(document.images,function(img){function done(){
 if(img.naturalWidth>0)img.setAttribute('data-rendered','1');}
 if(img.complete)done();else img.addEventListener('load',done);});
})();
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _cell_text(value: Any) -> str:
    return format_value(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _raw(value: Any) -> str:
    """The value a cell sorts and filters on (numbers unrounded; missing as '')."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value)


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    return value


def _table(frame: Any) -> str:
    columns = [str(c) for c in frame.columns]
    head = "".join(f'<th title="click to sort">{_e(c)}</th>' for c in columns)
    lines = []
    for record in frame.itertuples(index=False):
        values = [_plain(v) for v in record]
        status = str(values[columns.index("status")]) if "status" in columns else ""
        cells = "".join(
            f'<td data-v="{_e(_raw(v))}"' + (' class="num"' if _is_number(v) else "")
            + f">{_e(_cell_text(v))}</td>" for v in values)
        lines.append(f'<tr class="st-{_e(safe_name(status))}">{cells}</tr>')
    return (f'<div class="wide"><table id="results"><thead><tr>{head}</tr></thead>\n<tbody>\n'
            + "\n".join(lines) + "\n</tbody></table></div>")


def _filters(frame: Any) -> str:
    parts = []
    columns = [str(c) for c in frame.columns]
    for name in ("suite", "backend", "status"):
        if name not in columns:
            continue
        values = sorted({_raw(_plain(v)) for v in frame[name]})
        options = '<option value="">all</option>' + "".join(
            f'<option value="{_e(v)}">{_e(v)}</option>' for v in values)
        parts.append(f'<label>{_e(name)} <select data-col="{columns.index(name)}" '
                     f'id="filter-{name}">{options}</select></label>')
    return '<p class="filters">' + "".join(parts) + (
        f' <span><span id="shown">{len(frame)}</span> of {len(frame)} rows shown</span></p>')


def _failed(run_dir: RunDirectory, rows: list[Any]) -> str:
    bad = [r for r in rows if r.status in PROBLEM_STATUSES]
    if not bad:
        return "<p>No cell failed, timed out or diverged.</p>"
    items = []
    for row in bad:
        first = (row.error or "").strip().splitlines()
        cell = run_dir.cell_dir(row.cell_id, create=False)
        logs = [cell / name for name in ("error.log", "cell.log")
                if is_regular_file(cell / name)]
        relative = logs[0].relative_to(run_dir.path).as_posix() if logs else ""
        where = (f' <span>log: <a href="{_e(relative)}"><code>{_e(relative)}</code></a></span>'
                 if logs else "")
        items.append(f"<li><b>{_e(row.cell_id)}</b> ({_e(row.status)}): "
                     f"<code>{_e(first[0] if first else '(no error text)')}</code>{where}</li>")
    return "<ul id=\"failures\">" + "\n".join(items) + "</ul>"


def _commands(run_dir: RunDirectory) -> str:
    lines = []
    path = run_dir.path / "invocations.jsonl"
    if is_regular_file(path):
        for line in _read(path).splitlines():
            try:
                data = json.loads(line)
            except (ValueError, RecursionError):
                continue
            if isinstance(data, dict) and data.get("command_line"):
                lines.append((data.get("started_at", ""), data["command_line"]))
    if not lines:
        config = run_dir.read_json("config.json") or {}
        if config.get("command_line"):
            lines.append((config.get("started_at", ""), config["command_line"]))
    if not lines:
        return "<p>(no command line recorded)</p>"
    return "<pre>" + "\n".join(
        (f"# {_e(when)}\n" if when else "") + _e(shlex.join(str(w) for w in words)
                                                 if isinstance(words, list) else words)
        for when, words in lines) + "</pre>"


def _read(path: Path) -> str:
    """A regular file's text ('' with a warning when it cannot be read)."""
    try:
        return read_bytes(path).decode("utf-8", errors="replace")
    except OSError as exc:
        warn(f"{path}: not read into the page ({exc.strerror or exc})")
        return ""


def _plots(run_dir: RunDirectory) -> str:
    images = [p for p in sorted(run_dir.path.glob("*.png")) if is_regular_file(p)]
    if not images:
        return "<p>(no plots in this run)</p>"
    parts = []
    for image in images:
        try:
            data = base64.b64encode(read_bytes(image)).decode("ascii")
        except OSError as exc:
            warn(f"{image}: not read into the page ({exc.strerror or exc})")
            continue
        parts.append(f'<figure><img alt="{_e(image.name)}" src="data:image/png;base64,{data}">'
                     f"<figcaption>{_e(image.name)}</figcaption></figure>")
    return "\n".join(parts)


def _claims(run_dir: RunDirectory) -> str:
    """The verdicts of the registered claims that this folder's cells measure
    (:func:`bench.reports.claims.claims_section`; ``bench claims`` judges several folders)."""
    from bench.core.registry import PluginSelection, Registry
    from bench.reports.claims import claims_section

    registry = Registry.load(PluginSelection.from_environment())
    return claims_section(list(registry.claims.values()), run_dir.path)


def _summary(run_dir: RunDirectory, rows: list[Any]) -> str:
    env = run_dir.read_json("environment.json") or {}
    config = run_dir.read_json("config.json") or {}
    git_info = env.get("git")
    git: dict[str, Any] = git_info if isinstance(git_info, dict) else {}
    devices = sorted({f"{r.device}" + (f" ({r.device_name})" if r.device_name else "")
                      for r in rows})
    facts = [
        ("suites", ", ".join(dict.fromkeys(r.suite for r in rows)) or "-"),
        ("budget", ", ".join(sorted({r.budget for r in rows})) or config.get("budget", "-")),
        ("device", ", ".join(devices) or config.get("device", "-")),
        ("CPU", env.get("cpu_model", "-")),
        ("started", config.get("started_at", "-")),
        ("commit", str(git.get("commit") or "-") + (" (dirty)" if git.get("dirty") else "")),
        ("cells", ", ".join(f"{sum(r.status == s for r in rows)} {s}"
                            for s in dict.fromkeys(r.status for r in rows)) or "none"),
    ]
    return "<table class=\"facts\">" + "".join(
        f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in facts) + "</table>"


def html_page(path: str | Path) -> str:
    """The self-contained page of a run directory or a published results folder."""
    run_dir = RunDirectory.open(Path(path))
    rows = run_dir.rows()
    frame = rows_to_frame(rows)
    title = f"{run_dir.path.resolve().name}: neural-ode-bench results"
    parts = [f"<h1>{_e(title)}</h1>", _summary(run_dir, rows)]
    if frame.empty:
        parts.append("<p>No rows: no cell has finished in this run yet.</p>")
    else:
        table = table_frame(frame)
        parts += ["<h2>Results</h2>",
                  "<p>Units are in the column names (<code>_s</code> seconds, <code>_mib</code> "
                  "MiB, <code>_pct</code> percent, <code>nfe</code> function evaluations per "
                  "training iteration). Click a header to sort.</p>",
                  _filters(table), _table(table)]
    parts += ["<h2>Failed cells</h2>", _failed(run_dir, rows),
              "<h2>Claims</h2>", _claims(run_dir),
              "<h2>Plots</h2>", _plots(run_dir)]
    notes = run_dir.path / "NOTES.md"
    if is_regular_file(notes):
        parts += ["<h2>Notes (NOTES.md)</h2>", f"<pre>{_e(_read(notes))}</pre>"]
    env = run_dir.read_json("environment.json")
    parts += ["<h2>Command line</h2>", _commands(run_dir),
              "<h2>Environment (environment.json)</h2>",
              f"<pre id=\"environment\">{_e(json.dumps(env, indent=2)) if env else '-'}</pre>"]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_e(title)}</title><style>{_STYLE}</style></head><body>\n"
            + "\n".join(parts) + f"\n<script>{_SCRIPT}</script>\n</body></html>\n")


def report_page(run_dirs: Sequence[str], columns: Sequence[str] | None = None) -> str:
    """``bench report --format html``: the page of one run (no column choice)."""
    if len(run_dirs) != 1 or columns:
        raise BenchError("--format html takes one run directory and no --columns")
    return html_page(run_dirs[0])


def write_page(path: str | Path, dest: str | Path | None = None) -> Path:
    """Write :func:`html_page` of ``path`` to ``dest`` (default: ``<path>/index.html``)."""
    page = html_page(path)
    out = Path(dest) if dest is not None else Path(path) / PAGE_NAME
    try:
        atomic_write_text(out, page)
    except OSError as exc:
        raise BenchError(f"cannot write {str(out)!r}: {exc.strerror or exc}") from None
    return out

"""One self-contained HTML page per run or published results folder (``index.html``).

The page holds the results table (click a header to sort, the sorted column marked with an arrow;
select a suite, backend or status to filter, also from the address, ``#status=failed``; a few
lines of inline JavaScript, no library; the ``timing_warning`` column beside the times, flagged
times marked with a dagger), the run's PNG plots inlined as base64 data URIs, the failed cells
with their errors and the unsupported ones with their reasons in full, NOTES.md, the command
lines and the environment. It opens from
disk with no server and no network: nothing is fetched. Every text is escaped. Only regular
files inside the folder are read into the page (a PNG planted as a link to a file elsewhere is
not, and the folder is refused: see :func:`bench.store.files.check_folder`); the page is written
whole and renamed into place, never through a link."""

from __future__ import annotations

import base64
import functools
import html
import json
import math
import re
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.core.errors import BenchError
from bench.reports.loop_split import STYLE as LOOP_SPLIT_STYLE
from bench.reports.loop_split import loop_split_section
from bench.reports.report import FLAGS, TIME_COLUMNS, format_value, table_frame
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
th .ind{color:#888;margin-left:0.3em}
th[aria-sort] .ind{color:#000}
td.error{max-width:40em;overflow:hidden;text-overflow:ellipsis}
.flag{color:#b00}
td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.st-failed,tr.st-timeout,tr.st-diverged{background:#fde8e8}
tr.st-unsupported{color:#888}
.filters label{margin-right:1em}
img{max-width:100%;border:1px solid #ddd;margin:0.5em 0}
pre{background:#f7f7f7;padding:0.5em;overflow-x:auto;white-space:pre-wrap}
"""

# Sort by a column (numbers as numbers, missing last; the sorted header gets aria-sort and an
# arrow), filter rows by the selects, also from the address (index.html#status=failed&backend=x&
# sort=-train_step_time_s, '-' for descending), read at load and on every change of the address
# (a link to #status=failed on the page itself); a value the column does not hold becomes an
# option and shows no row. Decoded images are marked data-rendered.
_SCRIPT = """
(function(){
var table=document.getElementById('results');if(!table)return;
var body=table.tBodies[0],heads=table.tHead.rows[0].cells;
function key(td){var v=td.getAttribute('data-v');var n=parseFloat(v);
 return (v!==''&&!isNaN(n)&&isFinite(v))?n:v;}
function sortBy(i,d){var rows=Array.prototype.slice.call(body.rows);
 rows.sort(function(a,b){var x=key(a.cells[i]),y=key(b.cells[i]);
  if(x===y)return 0;if(x==='')return 1;if(y==='')return -1;
  if(typeof x!==typeof y){x=String(x);y=String(y);}return (x<y?-1:1)*d;});
 rows.forEach(function(r){body.appendChild(r);});
 Array.prototype.forEach.call(heads,function(th,j){var ind=th.querySelector('.ind');
  if(j===i){th.setAttribute('aria-sort',d>0?'ascending':'descending');
   ind.textContent=d>0?'\u25b2':'\u25bc';}
  else{th.removeAttribute('aria-sort');ind.textContent='\u21c5';}});}
Array.prototype.forEach.call(heads,function(th,i){th.addEventListener('click',function(){
 sortBy(i,th.getAttribute('aria-sort')==='ascending'?-1:1);});});
var selects=document.querySelectorAll('select[data-col]');
function apply(){var shown=0;Array.prototype.forEach.call(body.rows,function(r){var ok=true;
 Array.prototype.forEach.call(selects,function(s){var c=+s.getAttribute('data-col');
  if(s.value!==''&&r.cells[c].getAttribute('data-v')!==s.value)ok=false;});
 r.style.display=ok?'':'none';if(ok)shown++;});
 document.getElementById('shown').textContent=shown;}
Array.prototype.forEach.call(selects,function(s){s.addEventListener('change',apply);});
function fromAddress(){
 Array.prototype.forEach.call(selects,function(s){s.value='';});
 location.hash.replace(/^#/,'').split('&').forEach(function(kv){var p=kv.split('=');
  if(p.length!==2)return;var v=decodeURIComponent(p[1]),s=document.getElementById('filter-'+p[0]);
  if(s){if(!Array.prototype.some.call(s.options,function(o){return o.value===v;})){
    var o=document.createElement('option');o.value=v;o.textContent=v+' (none)';s.appendChild(o);}
   s.value=v;}
  if(p[0]==='sort')Array.prototype.forEach.call(heads,function(th,i){
   if(th.getAttribute('data-col')===v.replace(/^-/,''))sortBy(i,v[0]==='-'?-1:1);});});
 apply();}
window.addEventListener('hashchange',fromAddress);
fromAddress();
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


def page_columns(columns: Sequence[str]) -> list[str]:
    """The page's column order: the readable table's, with ``timing_warning`` moved beside the
    last time column (the warning reads with the times it flags, not at the far right)."""
    columns = list(columns)
    times = [i for i, c in enumerate(columns) if c in TIME_COLUMNS]
    if "timing_warning" in columns and times:
        columns.remove("timing_warning")
        at = max(i for i, c in enumerate(columns) if c in TIME_COLUMNS) + 1
        columns.insert(at, "timing_warning")
    return columns


def _td(column: str, value: Any, flagged: bool) -> str:
    classes = (["num"] if _is_number(value) else []) + (["error"] if column == "error" else [])
    text = _e(_cell_text(value))
    if flagged and column in TIME_COLUMNS and _raw(value) != "":
        text += '<span class="flag" title="timing flagged: see timing_warning"> \u2020</span>'
    title = f' title="{_e(value)}"' if column == "error" and value else ""
    return (f'<td data-v="{_e(_raw(value))}"' + (f' class="{" ".join(classes)}"' if classes
                                                  else "") + f"{title}>{text}</td>")


def _table(frame: Any) -> str:
    columns = [str(c) for c in frame.columns]
    head = "".join(f'<th title="click to sort" data-col="{_e(c)}">{_e(c)}'
                   '<span class="ind">\u21c5</span></th>' for c in columns)
    flags = list(frame.attrs.get(FLAGS) or [False] * len(frame))
    lines = []
    for record, flagged in zip(frame.itertuples(index=False), flags, strict=False):
        values = [_plain(v) for v in record]
        status = str(values[columns.index("status")]) if "status" in columns else ""
        cells = "".join(_td(c, v, bool(flagged)) for c, v in zip(columns, values, strict=True))
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
    from bench.core.registry import PluginSelection
    from bench.reports.claims import claims_section

    return claims_section(list(_registered_claims(PluginSelection.from_environment())),
                          run_dir.path)


@functools.lru_cache(maxsize=4)
def _registered_claims(selection: Any) -> tuple[Any, ...]:
    """The claims of a plugin selection, loaded once per process (``bench index --regenerate``
    writes a page per published folder)."""
    from bench.core.registry import Registry

    return tuple(Registry.load(selection).claims.values())


#: A torch cell's device name ends with its thread count (``AMD EPYC, 1 threads``).
_THREADS = re.compile(r",\s*(\d+) threads?$")


def device_line(rows: Sequence[Any], env: dict[str, Any] | None = None) -> str:
    """Each device the cells ran on, once, with its model: ``cpu (AMD EPYC)``. Torch cells name
    their thread count in the device name and JAX cells do not; that is the same CPU, and the
    threads are a fact of their own (the summary's ``threads per cell``), not a second
    device."""
    models: dict[str, set[str]] = {}
    for row in rows:
        name = _THREADS.sub("", str(row.device_name or "")).strip()
        models.setdefault(str(row.device), set()).update([name] if name else [])
    cpu = (env or {}).get("cpu_model")
    parts = []
    for device, names in sorted(models.items()):
        if device.startswith("cpu") and cpu:
            names = {str(cpu)}
        parts.append(device + (f" ({', '.join(sorted(names))})" if names else ""))
    return ", ".join(parts)


def _threads(config: dict[str, Any]) -> str:
    threads = config.get("threads")
    if threads in (None, ""):
        return "-"
    return "the frameworks' own" if threads == 0 else str(threads)


def _unsupported(rows: list[Any]) -> str:
    """The unsupported cells with their reasons in full (the table shows one line of each)."""
    skipped = [r for r in rows if r.status == "unsupported"]
    if not skipped:
        return ""
    items = "\n".join(f"<li><b>{_e(r.cell_id)}</b>: {_e((r.error or '').strip())}</li>"
                      for r in skipped)
    return f"<h2>Unsupported cells</h2>\n<ul id=\"unsupported\">{items}</ul>"


def _summary(run_dir: RunDirectory, rows: list[Any]) -> str:
    env = run_dir.read_json("environment.json") or {}
    config = run_dir.read_json("config.json") or {}
    git_info = env.get("git")
    git: dict[str, Any] = git_info if isinstance(git_info, dict) else {}
    facts = [
        ("suites", ", ".join(dict.fromkeys(r.suite for r in rows)) or "-"),
        ("budget", ", ".join(sorted({r.budget for r in rows})) or config.get("budget", "-")),
        ("device", device_line(rows, env) or config.get("device", "-")),
        ("threads per cell", _threads(config)),
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
        flags = table.attrs.get(FLAGS)
        table = table[page_columns([str(c) for c in table.columns])]
        table.attrs[FLAGS] = flags
        parts += ["<h2>Results</h2>",
                  "<p>Units are in the column names (<code>_s</code> seconds, <code>_mib</code> "
                  "MiB, <code>_pct</code> percent, <code>nfe</code> function evaluations per "
                  "training iteration). Click a header to sort. Times marked \u2020 were "
                  "flagged as not comparable (<code>timing_warning</code> says why).</p>",
                  _filters(table), _table(table)]
    parts.append(loop_split_section(rows))  # '' when no row has the loop-time split
    parts += ["<h2>Failed cells</h2>", _failed(run_dir, rows), _unsupported(rows),
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
            f"<title>{_e(title)}</title><style>{_STYLE}{LOOP_SPLIT_STYLE}</style></head><body>\n"
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

"""``bench list``'s lines for one backend or suite, and their containment: a plugin whose own
code raises while being described (``check_available()``, a ``description`` property, ...) is
shown as broken, never a traceback, and the other plugins are listed as usual."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench.core.errors import PLUGIN_FAULTS
from bench.core.registry import Registry
from bench.planning.backend_grid import describe_parameters


def lines_or_broken(kind: str, name: str, describe: Callable[[], list[str]],
                     broken: dict[str, list[str]], registry: Registry) -> list[str]:
    """A backend's or suite's lines for ``bench list``; when its plugin's code raises (a
    property, ``check_available()``, ...), one line saying so, and the problem is kept under
    its plugin for the Plugins section: one broken plugin never hides the others."""
    try:
        return describe()
    except PLUGIN_FAULTS as exc:  # a plugin's bug, shown and contained
        problem = f"{kind} {name!r}: {_raised(exc)}"
        broken.setdefault(registry.origin.get(name, "?"), []).append(problem)
        return [f"  {name:<22} [broken: {_raised(exc)}]"]


def _raised(exc: BaseException) -> str:
    """An exception as one line: its type and message (the first line)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}" + (f": {text[0]}" if text else "")


def backend_lines(name: str, b: Any) -> list[str]:
    missing = b.check_available()
    state = f"  [unavailable: {missing}]" if missing else ""
    state += "" if b.in_all else "  [not in 'all': run it by name]"
    lines = [f"  {name:<22} {b.framework:<6} {b.gradient_method:<22} {b.solver:<8}{state}"]
    if b.description:
        lines.append(f"  {'':<22} {b.description}")
    lines += [f"    parameter {line}" for line in describe_parameters(b)]
    return lines


def suite_lines(name: str, s: Any) -> list[str]:
    lines = [f"  {name:<22} metric {s.metric_name} ({s.metric_direction} is better); "
             f"frameworks: {', '.join(s.frameworks)}"]
    if s.description:
        lines.append(f"  {'':<22} {s.description}")
    for budget in s.budgets.values():
        lines.append(f"    budget {budget.name:<10} {budget.description}")
        tolerances = s.budget_tolerances(budget)
        if tolerances:
            lines.append(f"    {'':<17} solver tolerances {tolerances}: they replace each "
                         "adaptive backend's own (recorded in every row's rtol/atol)")
    for key in s.options:
        spec = s.option_spec(key)
        kind = getattr(spec.type, "__name__", str(spec.type))
        lines.append(f"    option {key}={spec.default!r}  ({kind}; valid: "
                     f"{spec.describe_valid()})" + (f"  {spec.help}" if spec.help else ""))
    return lines

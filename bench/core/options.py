"""Suite options (``--set name=value``): :class:`OptionSpec` declares one option's type,
default, valid values and help; a value is converted and checked by its spec, in the parent,
before any cell starts."""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Callable, Sequence
from typing import Any

from bench.core.errors import BenchError


@dataclasses.dataclass(frozen=True)
class OptionSpec:
    """One suite option (``--set name=value``): its type, default, valid values and help.

    ``type`` is ``str``, ``int``, ``float`` or ``bool``; a value is converted to it (``"true"``
    -> True; an ``int`` option takes no fraction, a ``float`` one no NaN or infinity), then checked
    against ``choices`` or by ``validator`` (which returns None, or what is wrong), and
    ``valid`` says in words what is accepted (shown in errors and by ``bench list``).
    ``nullable``: None (``none``) is accepted too (e.g. a folder that may be left unset).
    """

    name: str
    type: type
    default: Any
    help: str = ""
    choices: tuple[Any, ...] | None = None
    validator: Callable[[Any], str | None] | None = None
    valid: str = ""
    nullable: bool = False

    def describe_valid(self) -> str:
        """The accepted values, in words."""
        if self.choices is not None:
            text = ", ".join(str(c) for c in self.choices)
        elif self.valid:
            text = self.valid
        else:
            text = {bool: "true or false", int: "an integer", float: "a finite number",
                    str: "a string"}.get(self.type, self.type.__name__)
        return text + (" (or none)" if self.nullable else "")

    def parse(self, value: Any, owner: str = "", what: str = "option") -> Any:
        """``value`` converted to the option's type and checked; a bad one raises
        :class:`bench.core.errors.BenchError` naming the option (``what``: ``option`` of a suite,
        ``parameter`` of a backend), its ``owner`` (``suite cnf``, ``backend torch-adjoint``;
        a bare name is a suite's), the valid values and the closest valid choice."""
        where = "" if not owner else f" of {owner}" if " " in owner else f" of suite {owner}"

        def bad(problem: str = "") -> BenchError:
            detail = f" ({problem})" if problem else ""
            hint = ""
            if self.choices is not None:
                close = difflib.get_close_matches(str(value), [str(c) for c in self.choices],
                                                  n=1, cutoff=0.5)
                hint = f" Did you mean {close[0]!r}?" if close else ""
            return BenchError(f"{what} {self.name}={value!r}{where} is not valid{detail}; "
                              f"valid: {self.describe_valid()}.{hint}")

        if value is None or (self.nullable and str(value).strip().lower() in ("none", "")):
            if self.nullable:
                return None
            raise bad()
        converted = _convert(value, self.type)
        if converted is None:
            raise bad()
        if self.choices is not None and converted not in self.choices:
            raise bad()
        if self.validator is not None:
            problem = self.validator(converted)
            if problem:
                raise bad(problem)
        return converted


def _convert(value: Any, kind: type) -> Any:
    """``value`` as ``kind``, or None when it is not one."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        return {"1": True, "true": True, "yes": True, "on": True,
                "0": False, "false": False, "no": False, "off": False}.get(text)
    if kind is int:
        if isinstance(value, bool):
            return None
        if isinstance(value, int):
            return value
        number = _convert(value, float)
        if number is None or not float(number).is_integer():
            return None
        return int(number)
    if kind is float:
        if isinstance(value, bool):
            return None
        try:
            number = float(value)
        except (TypeError, ValueError):
            return None
        return number if math.isfinite(number) else None
    if kind is str:
        return value if isinstance(value, str) else None
    return value if isinstance(value, kind) else None


def non_negative(value: Any) -> str | None:
    """A validator: the value must be zero or more."""
    return None if value >= 0 else "must not be negative"


def positive(value: Any) -> str | None:
    """A validator: the value must be above zero."""
    return None if value > 0 else "must be positive"


def in_unit_interval(value: Any) -> str | None:
    """A validator: 0 < value <= 1."""
    return None if 0.0 < value <= 1.0 else "must be in (0, 1]"


def option_defaults(specs: Sequence[OptionSpec]) -> dict[str, Any]:
    """The ``options`` mapping (name -> default) of a suite's option specs."""
    return {spec.name: spec.default for spec in specs}


def format_value(value: Any) -> str:
    """A parameter value as a label shows it (floats in their shortest exact form)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)

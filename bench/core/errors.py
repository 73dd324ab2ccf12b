"""Errors the harness raises for bad input, each naming the problem and the valid choices."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class BenchError(Exception):
    """An error caused by the user's input or configuration (shown without a traceback)."""


class UnknownNameError(BenchError, KeyError):
    """A suite, backend, budget or format name that does not exist."""

    def __init__(self, kind: str, name: str, choices: Iterable[str]):
        self.kind = kind
        self.name = name
        self.choices = sorted(choices)
        message = f"unknown {kind} {name!r}."
        close = difflib.get_close_matches(name, self.choices, n=1, cutoff=0.5)
        if close:
            message += f" Did you mean {close[0]!r}?"
        choices = (", ".join(self.choices) if self.choices
                   else "(none loaded: see `bench list` and BENCH_LOAD_PLUGINS)")
        message += f" Valid choices: {choices}."
        super().__init__(message)

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0])

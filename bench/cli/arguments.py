"""The command line's argument types: each value checked with the request's own checks
(:mod:`bench.planning.request`), so a bad one is argparse's error (exit 2) naming the problem."""

from __future__ import annotations

import argparse
import ast
from typing import Any

from bench.planning.request import memory_problem, threads_problem, timeout_problem


def _option(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE")
    key, raw = text.split("=", 1)
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    return key.strip(), value


def _threads(text: str) -> int:
    """A positive thread count, or ``auto`` / ``0``: the frameworks' own choice (stored as 0)."""
    if text.strip().lower() == "auto":
        return 0
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a thread count: give a positive integer, or auto (or 0) for the "
            "frameworks' own") from None
    return _checked(value, threads_problem(value, repr(text)))


def _jobs(text: str) -> int:
    """A positive number of cells at once."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    return _checked(value, None if value >= 1 else
                    f"{text!r} is not a number of cells at once: give a positive integer")


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def _positive_float(text: str) -> float:
    value = _number(text)
    return _checked(value, timeout_problem(value, repr(text)))


def _memory_mb(text: str) -> float:
    value = _number(text)
    return _checked(value, memory_problem(value, repr(text)))


def _checked(value: Any, problem: str | None) -> Any:
    """``value``, or argparse's error when the request's check finds a ``problem``."""
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return value

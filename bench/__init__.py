"""neural-ode-bench: a benchmarking harness for Neural ODEs.

The core is framework-neutral: it never imports torch or jax. Backends and suites are plugins.
"""

from bench.errors import BenchError, UnknownNameError
from bench.hookspecs import hookimpl
from bench.interfaces import (
    AbstractBackend,
    AbstractSuite,
    AbstractTask,
    Budget,
    CellContext,
    Evaluation,
    StepStats,
    Support,
)
from bench.measure import MemoryTracker
from bench.options import OptionSpec
from bench.registry import PluginSelection, Registry
from bench.results import load_run
from bench.rows import ResultRow

__all__ = [
    "AbstractBackend", "AbstractSuite", "AbstractTask", "BenchError", "Budget", "CellContext",
    "Evaluation", "MemoryTracker", "OptionSpec", "PluginSelection", "Registry", "ResultRow",
    "StepStats", "Support", "UnknownNameError", "hookimpl", "load_run",
]
__version__ = "0.1.0"

"""neural-ode-bench: a benchmarking harness for Neural ODEs.

The core is framework-neutral: it never imports torch or jax. Backends and suites are plugins.
"""

from bench.core.errors import BenchError, UnknownNameError
from bench.core.hookspecs import hookimpl
from bench.core.interfaces import (
    AbstractBackend,
    AbstractSuite,
    AbstractTask,
    Budget,
    CellContext,
    Evaluation,
    StepStats,
    Support,
)
from bench.core.measure import MemoryTracker
from bench.core.options import OptionSpec
from bench.core.registry import PluginSelection, Registry
from bench.core.rows import ResultRow
from bench.store.results import load_run

__all__ = [
    "AbstractBackend", "AbstractSuite", "AbstractTask", "BenchError", "Budget", "CellContext",
    "Evaluation", "MemoryTracker", "OptionSpec", "PluginSelection", "Registry", "ResultRow",
    "StepStats", "Support", "UnknownNameError", "hookimpl", "load_run",
]
__version__ = "0.1.0"

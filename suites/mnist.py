"""MNIST classification (Chen et al. 2018, Table 1): ODE-Net, RK-Net and ResNet.

This module declares the suite. Data, batch order, augmentation offsets, initial weights,
learning-rate schedule and budgets are framework-neutral, in :mod:`bench.suites.mnist_data`, so
that every framework's model (:mod:`bench.suites.mnist_torch`, :mod:`bench.suites.mnist_jax`)
trains on the very same batches from the very same initial weights for a given seed. The
architecture and the paper's settings follow the authors' ``torchdiffeq/examples/odenet_mnist.py``:

- downsampling: Conv(1->64, 3x3), GN, ReLU, Conv(64->64, 4x4, s2, p1), GN, ReLU,
  Conv(64->64, 4x4, s2, p1): 28x28 -> 26x26 -> 13x13 -> 6x6 (the ODE state is 64 x 6 x 6);
- dynamics f(t, h) of the continuous models (one block, ``make_dynamics(True)``): GN, ReLU,
  ConcatConv2d(64->64, 3x3, p1), GN, ReLU, ConcatConv2d(64->64, 3x3, p1), GN; ConcatConv2d feeds t
  as an extra constant input channel (channel 0, as in torchdiffeq);
- residual block of the ResNet (six untied blocks, ``make_dynamics(False)``): GN, ReLU,
  Conv(3x3, no bias), GN, ReLU, Conv(3x3, no bias), as the authors' ``ResBlock``;
- head: GN, ReLU, global average pool, Linear(64->10).
GroupNorm is GroupNorm(min(32, C), C). ODE-Net: 208,266 parameters; ResNet: 576,778.

A budget may narrow every layer (``channels``; GroupNorm then keeps two channels per group, as the
paper's 32 groups of 64, see :func:`bench.suites.mnist_data.norm_groups`) and train with Adam
(``optimizer``). The ``paper`` budget is the authors' setting; ``quick`` (32 channels, 420 Adam
steps of batch 64 at lr 1e-2 with two decays, under half an epoch) is a CPU budget whose error
compares the methods at equal work and is far from Table 1's (its description says exactly how
far).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from bench.suites.mnist_data import BUDGETS, MnistPipeline

import bench
from bench.core.errors import BenchError
from bench.core.interfaces import (
    AbstractSuite,
    CellContext,
)
from bench.core.options import OptionSpec, option_defaults

# -------------------------------------------------------------------------------------------------
# The suite
# -------------------------------------------------------------------------------------------------


def _as_bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise BenchError(f"option {name}={value!r}: expected true or false")


class MnistSuite(AbstractSuite):
    name = "mnist"
    description = ("MNIST classification, Chen et al. 2018 Table 1: ODE-Net/RK-Net (one ODE block) "
                   "or ResNet (6 residual blocks) between conv downsampling and a linear head")
    metric_name = "test_error_pct"
    metric_direction = "lower"
    tasks = {"torch": "bench.suites.mnist_torch:MnistTorchTask",
             "jax": "bench.suites.mnist_jax:MnistJaxTask"}
    budgets = BUDGETS
    option_specs = (
        OptionSpec("data_dir", str, None, nullable=True, valid="a folder",
                   help="folder with the four MNIST IDX files (also --data-dir, BENCH_MNIST_DIR)"),
        OptionSpec("download", bool, True,
                   help="download missing files into the cache (~/.cache/neural-ode-bench)"),
    )
    options = option_defaults(option_specs)
    location_options = ("data_dir", "download")

    def check_data(self, options: Mapping[str, Any]) -> str | None:
        """Find the four files once (--data-dir, BENCH_MNIST_DIR, the cache, else download into
        the cache), so that a missing dataset is one message before any cell starts."""
        import sys

        from bench.suites.mnist_files import MnistDataError, resolve_mnist_dir

        values = {**self.options, **options}
        try:
            resolve_mnist_dir(values["data_dir"], _as_bool(values["download"], "download"),
                              log=lambda message: print(message, file=sys.stderr))
        except MnistDataError as exc:
            return f"suite mnist: {exc}"
        return None

    def task_inputs(self, ctx: CellContext) -> MnistPipeline:
        options = self.cell_options(ctx)
        from bench.suites.mnist_files import load_mnist

        arrays = load_mnist(options["data_dir"], _as_bool(options["download"], "download"),
                            log=ctx.log)
        ctx.log(f"mnist: data from {arrays.source}")
        return MnistPipeline(arrays, ctx.budget.settings, ctx.seed)


@bench.hookimpl
def bench_register_suites(register: Callable[[AbstractSuite], None]) -> None:
    register(MnistSuite())

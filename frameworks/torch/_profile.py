"""The loop-time split of a torch training step: how much of its forward solves is the dynamics'
evaluations and how much the solver's own loop (step-size control, stage arithmetic, tensor
bookkeeping, Python overhead: torchdiffeq#278). Imported only when a profile runs (it imports
torch).

:func:`profile_solves` wraps one extra, untimed training step (the core runs it after the memory
steps) in torch's global module hooks (``register_module_forward_pre_hook`` and
``register_module_forward_hook``, removed afterwards): every :class:`OdeBlock` call is a solve,
timed from its pre-hook to its hook, and every call of its counted dynamics while the block's
forward pass runs (``counter.in_forward``; an adjoint's reverse solve is not a forward solve) is
an evaluation, timed the same way; on a GPU each clock reading is synchronised. The solver's loop
is the solve's time minus its evaluations'. The global hooks make every module call take
torch's slower hooked path for this one step (a few microseconds a call), which is why it is
never a timed step; the dynamics' own submodules pay it inside ``dynamics_time_s``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def profile_solves(device: str) -> Iterator[dict[str, Any]]:
    """Profile the block's step (see the module's docstring); the yielded dict is filled when
    the block ends: ``solve_time_s``, ``dynamics_time_s``, ``nfe``, ``solves``, or ``reason``."""
    import torch
    from bench.frameworks.torch._blocks import CountedDynamics, OdeBlock

    cuda = device.startswith("cuda")

    def clock() -> float:
        if cuda:
            torch.cuda.synchronize(device)
        return time.perf_counter()

    result: dict[str, Any] = {}
    totals = {"solve": 0.0, "dynamics": 0.0, "nfe": 0, "solves": 0}
    solve_started: dict[int, float] = {}  # id(block) -> start (a block inside a block: its own)
    eval_started: list[tuple[int, float]] = []  # (id(dynamics), start) of the running call
    depth = [0]

    def before(module: Any, args: Any) -> None:
        if isinstance(module, OdeBlock):
            depth[0] += 1
            if depth[0] == 1:
                solve_started[id(module)] = clock()
        elif (isinstance(module, CountedDynamics) and depth[0] == 1
              and module.counter.in_forward):
            eval_started.append((id(module), clock()))

    def after(module: Any, args: Any, output: Any) -> None:
        if isinstance(module, OdeBlock):
            if depth[0] == 1 and id(module) in solve_started:
                totals["solve"] += clock() - solve_started.pop(id(module))
                totals["solves"] += 1
            depth[0] = max(0, depth[0] - 1)
        elif (isinstance(module, CountedDynamics) and eval_started
              and eval_started[-1][0] == id(module)):
            totals["dynamics"] += clock() - eval_started.pop()[1]
            totals["nfe"] += 1

    pre = torch.nn.modules.module.register_module_forward_pre_hook(before)
    post = torch.nn.modules.module.register_module_forward_hook(after)
    try:
        yield result
    finally:
        pre.remove()
        post.remove()
        if totals["solves"]:
            result.update(solve_time_s=totals["solve"], dynamics_time_s=totals["dynamics"],
                          nfe=float(totals["nfe"]), solves=totals["solves"])
        else:
            result["reason"] = ("the profiled step called no bench.frameworks.torch.OdeBlock "
                                "(a block of another kind is not profiled)")

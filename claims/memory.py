"""Memory claims: training memory against the number of solver steps L (``bench memory``).

Each claim fits the slope of log(memory) on log(L) per backend and per measurement, as the memory
study does (:func:`bench.studies.memory.scaling_table`), and judges the slope's 95% interval
(t quantile of the fit's degrees of freedom times its standard error) against the study's cut
points: O(1) holds when the whole interval is below 0.12 (the cut between O(1) and O(log L)), O(L)
when it is all above 0.75 (between O(sqrt L) and O(L)). Every backend named must agree.

A backend's exact measurements decide: the bytes autograd saves for backward (torch) and XLA's
temporary buffers of the compiled step (JAX) count what the gradient method keeps, whatever the
allocator does. The resident peak (``peak_memory_bytes``) decides only where there is no exact
one; elsewhere its fit is reported beside them, since a process's resident memory also moves with
the allocator's reuse of freed pages (results/memory-scaling-cpu/NOTES.md) and, on a loaded
machine, jumps by whole arenas.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from bench.claims._rows import failed_cells, fmt, missing, number, ok_rows

from bench.core.claims import (
    Claim,
    Judgement,
    Need,
    Verdict,
    combine,
    interval_verdict,
    t_quantile95,
)
from bench.core.rows import ResultRow

MEMORY_SUITE = "memory-scaling"
#: The resident-memory measurement: decides only where a backend has no exact one.
RESIDENT = "peak_memory_bytes"
#: The depths ``bench claims --run`` measures: 4 points, a factor 8 in L, a few minutes on a CPU.
RUN_STEPS = "8,16,32,64"
#: At least this many depths for a slope with an interval.
MIN_DEPTHS = 3


def memory_claim(name: str, backends: tuple[str, ...], order: str, statement: str,
                 source: str, run: tuple[str, ...] | None = None) -> Claim:
    """A claim that every named backend's training memory is ``order`` (``"O(1)"`` or
    ``"O(L)"``) in L; ``run``: the backends ``--run`` measures (default: all of them)."""
    if order not in ("O(1)", "O(L)"):
        raise ValueError(f"order must be 'O(1)' or 'O(L)', not {order!r}")
    needs = (Need("memory", MEMORY_SUITE, ",".join(run or backends), steps=RUN_STEPS),)

    def check(rows: Sequence[ResultRow]) -> Judgement:
        return judge_scaling(rows, backends, order, needs)

    return Claim(name, statement, source, check, needs)


def judge_scaling(rows: Sequence[ResultRow], backends: tuple[str, ...], order: str,
                  needs: tuple[Need, ...]) -> Judgement:
    """The verdict on ``order`` for the memory-scaling rows of ``backends`` (see the module)."""
    from bench.store.results import rows_to_frame
    from bench.studies.memory import CUTS, scaling_table

    measured = ok_rows(rows, MEMORY_SUITE, backends,
                       where=lambda r: number(r, "steps") is not None
                       and r.options.get("solve", "fixed") == "fixed")
    if not measured:
        return failed_cells(rows, MEMORY_SUITE, backends) or missing(
            needs, f"ok {MEMORY_SUITE} rows of {' or '.join(backends)}")
    frame = rows_to_frame(measured)
    frame["steps"] = [number(r, "steps") for r in measured]
    table = scaling_table(frame)
    threshold, claimed = (CUTS[0], "below") if order == "O(1)" else (CUTS[-1], "above")
    judgements: dict[str, list[tuple[str, Judgement]]] = {}  # backend -> (measure, judgement)
    for record in table.to_dict("records"):
        found = judgements.setdefault(str(record["backend"]), [])
        label = f"{record['backend']} {record['measure']}"
        error = record.get("error")
        if isinstance(error, str):  # too few positive measurements to fit
            found.append((record["measure"], Judgement(
                Verdict.INCONCLUSIVE, unit="log-log slope", reason=f"{label}: {error}")))
            continue
        points = int(record["points"])
        if points < MIN_DEPTHS:
            found.append((record["measure"], Judgement(
                Verdict.INCONCLUSIVE, record["slope"], unit="log-log slope",
                reason=f"{label}: {points} depths, a slope needs {MIN_DEPTHS}")))
            continue
        half = t_quantile95(points - 2) * record["slope_stderr"]
        low, high = record["slope"] - half, record["slope"] + half
        verdict = interval_verdict(low, high, threshold, claimed)
        found.append((record["measure"], Judgement(
            verdict, record["slope"], low, high, "log-log slope",
            f"{label}: slope {fmt(record['slope'])} [{fmt(low)}, {fmt(high)}] over L = "
            f"{record['L_min']}..{record['L_max']} ({points} depths), {order} needs it "
            f"{claimed} {threshold}", points)))
    if not judgements:
        return missing(needs, "memory measurement in the rows")
    return combine([deciding(found) for found in judgements.values()])


def deciding(found: list[tuple[str, Judgement]]) -> Judgement:
    """One backend's judgement: its exact measurements' (all must agree), the resident peak's
    reported beside them; the resident peak's alone where it has no exact one."""
    exact = [j for measure, j in found if measure != RESIDENT]
    if not exact:
        return combine([j for _, j in found])
    verdict = combine(exact)
    resident = [j for measure, j in found if measure == RESIDENT]
    if resident:
        verdict = dataclasses.replace(verdict, reason=verdict.reason + "; reported, not deciding: "
                                      + "; ".join(f"{j.reason} ({j.verdict})" for j in resident))
    return verdict


def claims() -> list[Claim]:
    """The memory claims that ship."""
    paper = "Chen et al. 2018, Neural Ordinary Differential Equations"
    chen = f"{paper}, Sec. 2 and Table 1"
    return [
        memory_claim(
            "memory-adjoint-torch", ("torch-adjoint",), "O(1)",
            "The continuous adjoint's training memory is O(1) in the solver steps L (torch: "
            "torchdiffeq's odeint_adjoint): log-log slope below 0.12.",
            f"{chen} (ODE-Net memory O(1)); torchdiffeq#259 "
            "(https://github.com/rtqichen/torchdiffeq/issues/259)"),
        memory_claim(
            "memory-adjoint-jax", ("diffrax-backsolve",), "O(1)",
            "The continuous adjoint's training memory is O(1) in L (JAX: diffrax's "
            "BacksolveAdjoint): log-log slope below 0.12.",
            f"{chen}; diffrax's BacksolveAdjoint documentation "
            "(https://docs.kidger.site/diffrax/api/adjoints/)"),
        memory_claim(
            "memory-backprop-torch", ("torch-direct",), "O(L)",
            "Backpropagation through the solver's operations stores every step: memory O(L) "
            "(torch: torchdiffeq's odeint): log-log slope above 0.75.",
            f"{chen} (backpropagating through the solver's operations: memory grows with the "
            "steps)"),
        memory_claim(
            "memory-backprop-jax", ("diffrax-direct", "jax-rknet"), "O(L)",
            "Backpropagation through the solver is O(L) in JAX too (diffrax's DirectAdjoint, "
            "or the JAX RK-Net where it is not measured): log-log slope above 0.75.",
            f"{chen}; diffrax's DirectAdjoint documentation "
            "(https://docs.kidger.site/diffrax/api/adjoints/)",
            run=("jax-rknet",)),  # DirectAdjoint compiles slowly: measured by name only
        memory_claim(
            "memory-rknet", ("rknet", "jax-rknet"), "O(L)",
            "RK-Net (backpropagation through a fixed-step RK4 network) needs memory O(L): "
            "log-log slope above 0.75 (torch and JAX).",
            f"{paper}, Table 1 (RK-Net memory O(L))"),
        memory_claim(
            "memory-resnet", ("resnet",), "O(L)",
            "A ResNet of L residual blocks needs memory O(L): log-log slope above 0.75.",
            f"{paper}, Table 1 (ResNet memory O(L))"),
    ]

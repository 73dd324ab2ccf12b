"""Counting, gradient and timing claims: evaluations per solver step, the gradients of the torch
and JAX backends against each other and against a float64 reference (``bench gradients``), the
adjoint's gradient error against backpropagation's, and JIT compilation apart from the step.

The gradient claims read ``grad_rel_error`` (||g - g_ref|| / ||g_ref||, the reference a float64
dopri5 backpropagation at rtol = atol = 1e-12 in the cell's own framework; the torch and JAX
references agree to about 1e-9). The solves run in float32, so errors below about 1e-6 are
rounding, not the solver: the comparisons leave such pairs out or allow for them.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from bench.claims._rows import (
    base_name,
    failed_cells,
    fmt,
    group,
    missing,
    number,
    ok_rows,
    options_key,
    too_few,
)

from bench.core.claims import (
    Claim,
    Judgement,
    Need,
    Verdict,
    combine,
    interval_verdict,
    median_interval,
)
from bench.core.rows import ResultRow

#: Below this a float32 gradient's relative error is rounding.
FLOAT32_FLOOR = 1e-6
GRADIENT_TOLERANCES = "1e-3,1e-4,1e-5,1e-6"


# -------------------------------------------------------------------------------------------------
# Evaluations per step
# -------------------------------------------------------------------------------------------------

FIXED_NEED = Need("memory", "memory-scaling", "torch-direct,torch-adjoint,rknet,resnet,"
                  "diffrax-backsolve,jax-rknet", steps="8,16,32,64")


def expected_nfe(solver: str, steps: float) -> float | None:
    """Forward evaluations of a fixed-step solve of ``steps`` steps with ``solver`` (the row's
    solver column), or None for a solver this claim does not know."""
    name = solver.lower()
    if name.startswith("rk4"):  # classical RK4 and torchdiffeq's 3/8 rule: 4 stages
        return 4 * steps
    if name.startswith("dopri5"):  # 7 stages, the last reused as the next step's first (FSAL)
        return 6 * steps + 1
    if name in ("resnet", "euler"):
        return steps
    if name.startswith(("midpoint", "heun")):
        return 2 * steps
    return None


def judge_fixed_nfe(rows: Sequence[ResultRow]) -> Judgement:
    fixed = ok_rows(rows, "memory-scaling",
                    where=lambda r: number(r, "steps") is not None and r.nfe_forward is not None
                    and r.options.get("solve", "fixed") == "fixed")
    checked: list[tuple[ResultRow, float]] = []
    for r in fixed:
        expected = expected_nfe(r.solver, number(r, "steps") or 0)
        if expected is not None:
            checked.append((r, expected))
    if not checked:
        return failed_cells(rows, "memory-scaling", None) or missing(
            (FIXED_NEED,), "fixed-step memory-scaling row of a known solver")
    excess = [((r.nfe_forward or 0.0) - e) / (number(r, "steps") or 1) for r, e in checked]
    worst = max(range(len(excess)), key=lambda i: abs(excess[i]))
    row, expected = checked[worst]
    solvers = ", ".join(sorted({r.solver for r, _ in checked}))
    if abs(excess[worst]) < 1e-9:
        return Judgement(Verdict.HOLDS, 0.0, unit="NFE per step off",
                         reason=f"all {len(checked)} fixed-step cells count exactly the "
                         f"tableau's evaluations ({solvers})", cells=len(checked))
    return Judgement(Verdict.FAILS, excess[worst], unit="NFE per step off",
                     reason=f"{row.backend} at L = {fmt(number(row, 'steps'))}: "
                     f"{fmt(row.nfe_forward)} forward evaluations, the tableau gives "
                     f"{fmt(expected)}", cells=len(checked))


# -------------------------------------------------------------------------------------------------
# torch and JAX, the same model
# -------------------------------------------------------------------------------------------------

SAME_RESULT_NEED = Need("run", "cnf", "torch-direct,diffrax-checkpoint")
SAME_NLL = 0.01


def judge_same_result(rows: Sequence[ResultRow]) -> Judgement:
    cnf = ok_rows(rows, "cnf", where=lambda r: number(r, "nll_nats") is not None)
    groups = group(cnf, lambda r: (r.budget, r.seed, options_key(r), r.solver.split(" ")[0],
                                   r.rtol, r.atol))
    diffs = []
    for members in groups.values():
        torch = [number(r, "nll_nats") or 0.0 for r in members if r.framework == "torch"]
        jax = [number(r, "nll_nats") or 0.0 for r in members if r.framework == "jax"]
        if torch and jax:
            diffs.append(max(abs(t - j) for t in torch for j in jax))
    if not diffs:
        return missing((SAME_RESULT_NEED,), "cnf cells of a torch and a JAX backend at the same "
                       "seed, budget, solver and tolerance")
    worst = max(diffs)
    verdict = Verdict.HOLDS if worst <= SAME_NLL else Verdict.FAILS
    return Judgement(verdict, worst, unit="nats",
                     reason=f"largest torch/JAX difference in test NLL {fmt(worst)} nats over "
                     f"{len(diffs)} matched groups; the claim needs at most {SAME_NLL}",
                     cells=len(cnf))


GRADIENT_NEED = Need("gradients", "cnf", "torch-direct,diffrax-checkpoint,torch-adjoint,"
                     "diffrax-backsolve", tolerances=GRADIENT_TOLERANCES, scales="1")


def _gradient_key(row: ResultRow) -> tuple[object, ...]:
    return (row.suite, row.grad_scale, row.seed, row.rtol, row.atol, options_key(row))


def _error(row: ResultRow) -> float | None:
    """The row's gradient error; ``inf`` for a non-finite one (a gradient that blew up)."""
    found = row.grad_rel_error
    if found is None:
        return None
    return float(found) if math.isfinite(found) else math.inf


def judge_same_gradient(rows: Sequence[ResultRow]) -> Judgement:
    exact = ok_rows(rows, where=lambda r: r.gradient_method in ("backprop",
                                                               "recursive-checkpoint")
                    and r.rtol is not None and _error(r) is not None)
    judgements = []
    for members in group(exact, _gradient_key).values():
        torch = [r for r in members if r.framework == "torch"]
        jax = [r for r in members if r.framework == "jax"]
        for t in torch:
            for j in jax:
                e_t, e_j = _error(t) or 0.0, _error(j) or 0.0
                threshold = max(10 * (t.rtol or 0.0), 10 * FLOAT32_FLOOR)
                low, high = abs(e_t - e_j), e_t + e_j
                verdict = interval_verdict(low, high, threshold, "below")
                judgements.append(Judgement(
                    verdict, high, low, high, "relative",
                    f"{t.suite} k={fmt(t.grad_scale)} rtol={fmt(t.rtol)}: {base_name(t)} "
                    f"{fmt(e_t)} and {base_name(j)} {fmt(e_j)} from the reference, so they "
                    f"differ by {fmt(low)} to {fmt(high)}; the claim needs at most "
                    f"{fmt(threshold)}", 2))
    if not judgements:
        return missing((GRADIENT_NEED,), "gradient-study pair of a torch and a JAX "
                       "backpropagation at the same suite, scale and tolerance")
    worst = combine(judgements)
    failing = [j for j in judgements if j.verdict is worst.verdict]
    return Judgement(worst.verdict, worst.figure, worst.low, worst.high, worst.unit,
                     f"{worst.verdict} in {len(failing)} of {len(judgements)} pairs, e.g. "
                     f"{failing[0].reason}", worst.cells)


# -------------------------------------------------------------------------------------------------
# The adjoint's gradient
# -------------------------------------------------------------------------------------------------

def judge_adjoint_vs_backprop(rows: Sequence[ResultRow]) -> Judgement:
    measured = ok_rows(rows, where=lambda r: r.rtol is not None and _error(r) is not None
                       and (r.adjoint_norm or "default") == "default")
    ratios, cells = [], 0
    for members in group(measured, lambda r: (*_gradient_key(r), r.framework)).values():
        adjoint = [r for r in members if r.gradient_method == "adjoint"]
        backprop = [r for r in members if r.gradient_method in ("backprop",
                                                                "recursive-checkpoint")]
        for a in adjoint:
            for b in backprop:
                e_a, e_b = _error(a) or 0.0, _error(b) or 0.0
                if max(e_a, e_b) < FLOAT32_FLOOR or min(e_a, e_b) <= 0:
                    continue  # both at rounding level: no ratio to speak of
                ratios.append(math.log10(e_a / e_b))
                cells += 2
    if not ratios:
        return missing((GRADIENT_NEED,), "gradient-study pair of an adjoint and a "
                       "backpropagation in one framework at the same tolerance")
    interval = median_interval(ratios)
    if interval is None:
        return too_few(10 ** statistics.median(ratios), f"{len(ratios)} pair(s) above "
                       "float32 rounding: a median's interval needs 5", "ratio", cells)
    median, low, high, coverage = interval
    verdict = interval_verdict(low, high, 0.0, "above")
    return Judgement(verdict, 10 ** median, 10 ** low, 10 ** high, "ratio",
                     f"median adjoint / backprop gradient error {fmt(10 ** median)} "
                     f"[{fmt(10 ** low)}, {fmt(10 ** high)}] ({coverage:.0%} interval) over "
                     f"{len(ratios)} pairs at equal tolerance (pairs with both errors below "
                     f"{FLOAT32_FLOOR} left out); the claim needs it above 1", cells)


def gradient_accuracy(name: str, backend: str, statement: str, source: str) -> Claim:
    """The claim that ``backend``'s gradient is within 1% of the reference at rtol <= 1e-4 (a
    non-finite gradient fails it)."""
    need = Need("gradients", "cnf", backend, tolerances="1e-4,1e-5", scales="1")

    def check(rows: Sequence[ResultRow]) -> Judgement:
        measured = ok_rows(rows, backends=(backend,),
                           where=lambda r: r.rtol is not None and r.rtol <= 1e-4
                           and _error(r) is not None)
        if not measured:
            return failed_cells(rows, None, (backend,)) or missing(
                (need,), f"ok {backend} row with grad_rel_error at rtol <= 1e-4")
        worst = max(measured, key=lambda r: _error(r) or 0.0)
        error = _error(worst) or 0.0
        return Judgement(Verdict.HOLDS if error <= 1e-2 else Verdict.FAILS, error,
                         unit="relative",
                         reason=f"largest gradient error {fmt(error)} ({worst.suite}, "
                         f"k={fmt(worst.grad_scale)}, rtol={fmt(worst.rtol)}) over "
                         f"{len(measured)} cells; the claim needs at most 0.01",
                         cells=len(measured))

    return Claim(name, statement, source, check, (need,))


# -------------------------------------------------------------------------------------------------
# JIT compilation
# -------------------------------------------------------------------------------------------------

COMPILE_NEED = Need("run", "cnf", "diffrax-checkpoint,diffrax-backsolve,jax-rknet")
COMPILE_RATIO = 10.0
#: A steady step time needs this many training steps (the memory study's cells time one).
MIN_STEPS = 4


def _compile_ratio(row: ResultRow) -> float:
    return (row.compile_time_s or 0.0) / (row.train_step_time_s or 1.0)


def judge_compile_apart(rows: Sequence[ResultRow]) -> Judgement:
    jax = ok_rows(rows, where=lambda r: r.framework == "jax" and r.compile_time_s is not None
                  and bool(r.train_step_time_s) and (r.train_steps or 0) >= MIN_STEPS)
    if not jax:
        return missing((COMPILE_NEED,), f"ok row of a JAX backend with compile and step times "
                       f"over at least {MIN_STEPS} training steps")
    # a warm-up step whose programs came from the compile cache (or were kept traced) loaded
    # them: no compilation
    compiled = [r for r in jax if r.compile_cache not in ("hit", "partial")
                and getattr(r, "program_cache", "") not in ("hit", "partial")]
    if not compiled:
        return Judgement(Verdict.INCONCLUSIVE, unit="ratio", cells=len(jax),
                         reason=f"the first step of all {len(jax)} JAX cells loaded its programs "
                         "from the compile cache (compile_cache or program_cache hit or "
                         "partial): no compile time to judge; run them with --no-compile-cache")
    clean = [r for r in compiled if not r.timing_flag]
    if not clean:  # the figure so far is shown, not judged: load moves both times unevenly
        flagged = sorted(_compile_ratio(r) for r in compiled)
        busy = [r.host_busy_cores_other for r in compiled if r.host_busy_cores_other is not None]
        load = (f"; other processes kept {fmt(min(busy))} to {fmt(max(busy))} cores busy"
                if busy else "")
        return Judgement(Verdict.INCONCLUSIVE, statistics.median(flagged), unit="ratio",
                         cells=len(compiled),
                         reason=f"timing flagged in all {len(compiled)} JAX cells (a loaded "
                         f"host{load}): their compile time / step time, median "
                         f"{fmt(statistics.median(flagged))}, range {fmt(flagged[0])} to "
                         f"{fmt(flagged[-1])}, is not judged; the claim needs unflagged cells "
                         f"all above {COMPILE_RATIO:g}")
    ratios = sorted(_compile_ratio(r) for r in clean)
    median = statistics.median(ratios)
    verdict = interval_verdict(ratios[0], ratios[-1], COMPILE_RATIO, "above")
    return Judgement(verdict, median, ratios[0], ratios[-1], "ratio",
                     f"compile time / steady step time: median {fmt(median)}, range "
                     f"{fmt(ratios[0])} to {fmt(ratios[-1])} over {len(clean)} unflagged JAX "
                     f"cells; the claim needs every cell above {COMPILE_RATIO:g}",
                     cells=len(clean))


def claims() -> list[Claim]:
    """The counting, gradient and timing claims that ship."""
    zhuang = ("Zhuang et al. 2020, Adaptive Checkpoint Adjoint (ICML), Sec. 3; Gholami, Keutzer "
              "& Biros 2019, ANODE: the adjoint's reverse-time reconstruction of the state makes "
              "its gradient less accurate")
    return [
        Claim("nfe-per-step",
              "A fixed-step solve of L steps evaluates the dynamics exactly as the tableau says: "
              "RK4 (and the 3/8 rule) 4 L times, Dopri5 6 L + 1 (7 stages, the last reused), a "
              "ResNet block once per block.",
              "Kutta 1901 (RK4, 3/8 rule); Dormand & Prince 1980 (Dopri5, FSAL); torchdiffeq#97 "
              "(https://github.com/rtqichen/torchdiffeq/issues/97: are the counted NFE the "
              "paper's?)", judge_fixed_nfe, (FIXED_NEED,)),
        Claim("torch-jax-same-result",
              "The torch and JAX implementations are the same model: trained from the same "
              f"weights and batches at the same tolerance, their CNF test NLL differs by at most "
              f"{SAME_NLL} nats.",
              "This harness (the suites draw weights and batches framework-neutrally: "
              "docs/architecture.md); results/cnf-paper-cpu/NOTES.md",
              judge_same_result, (SAME_RESULT_NEED,)),
        Claim("torch-jax-same-gradient",
              "At the same rtol = atol, the torch and JAX backpropagated gradients agree to "
              "within 10 x rtol (relative; 1e-5 where rounding dominates).",
              "This harness's gradient study (results/gradient-accuracy-cpu/NOTES.md); "
              "a solver at tolerance rtol has an error of order rtol",
              judge_same_gradient, (GRADIENT_NEED,)),
        Claim("adjoint-gradient-less-accurate",
              "At equal tolerance the continuous adjoint's gradient is less accurate than "
              "backpropagation through the solver: median error ratio adjoint / backprop above "
              "1.", zhuang, judge_adjoint_vs_backprop, (GRADIENT_NEED,)),
        gradient_accuracy(
            "diffrax-backsolve-gradient", "diffrax-backsolve",
            "diffrax's BacksolveAdjoint gives the right gradient: within 1% of the float64 "
            "reference at rtol <= 1e-4 (diffrax 0.6.2 gave infinite gradients).",
            "diffrax#596 (https://github.com/patrick-kidger/diffrax/issues/596)"),
        gradient_accuracy(
            "torch-adjoint-gradient", "torch-adjoint",
            "torchdiffeq's odeint_adjoint gives the right gradient: within 1% of the float64 "
            "reference at rtol <= 1e-4.",
            "Chen et al. 2018, Sec. 2 (the adjoint computes the gradient exactly up to the "
            "solver's error)"),
        Claim("jax-compile-apart",
              "JIT compilation is a one-off cost apart from the step: a JAX cell's first step "
              f"costs over {COMPILE_RATIO:g} steady steps (compile_time_s / train_step_time_s), "
              "so the step time must not include it.",
              "diffrax#606 (https://github.com/patrick-kidger/diffrax/issues/606: slow jit of "
              "diffeqsolve since 0.6.1); JAX's documentation on jit",
              judge_compile_apart, (COMPILE_NEED,)),
    ]

"""Claims as checks: a published claim (a paper's table or figure, a library's documentation, an
issue) stated as a check over result rows, with a verdict.

A claim is registered by a plugin through the ``bench_register_claims`` hook, like a backend or a
suite. It names its source, the cells that measure it (:class:`Need`: what ``bench claims --run``
runs) and judges the rows of one run or published folder (:meth:`AbstractClaim.judge`), giving a
:class:`Judgement`: a :class:`Verdict` with the figure it rests on, the figure's uncertainty (an
interval) and the reason in words. A verdict is never a guess: too few seeds, an interval that
spans the threshold or flagged timings make it ``inconclusive``, and rows that cannot answer the
claim make it ``not measured``.

The helpers at the end turn an interval and a threshold into a verdict
(:func:`interval_verdict`) and give the intervals the built-in claims use (a mean's t interval,
a median's order-statistic interval), so that a third-party claim judges the same way.
"""

from __future__ import annotations

import abc
import dataclasses
import math
import statistics
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from bench.core.rows import ResultRow, TextEnum


class Verdict(TextEnum):
    """What the rows say about a claim: the ``verdict`` column of ``bench claims``."""

    #: The measured figure is on the claim's side of its threshold, uncertainty included.
    HOLDS = "holds"
    #: The measured figure is on the other side of the threshold, uncertainty included.
    FAILS = "fails"
    #: Measured, but not decisively: the interval spans the threshold, too few seeds or pairs,
    #: or the timings it rests on are flagged; the reason says which.
    INCONCLUSIVE = "inconclusive"
    #: The rows hold no cell that measures the claim (the reason says what is needed).
    NOT_MEASURED = "not measured"


#: The order in which verdicts combine across folders: the first present wins (a claim that
#: fails in one folder fails, whatever another says).
SEVERITY = (Verdict.FAILS, Verdict.INCONCLUSIVE, Verdict.HOLDS, Verdict.NOT_MEASURED)


@dataclasses.dataclass(frozen=True)
class Judgement:
    """A claim's verdict on one folder's rows, with the figure it rests on.

    ``figure`` is the measured quantity the threshold is applied to (a slope, a saving, a
    difference of errors), ``low``/``high`` its interval (None: a count or a single value with no
    uncertainty), ``unit`` its unit, ``reason`` the verdict in words (the threshold, what was
    compared, why it is inconclusive or not measured) and ``cells`` how many rows it used."""

    verdict: Verdict
    figure: float | None = None
    low: float | None = None
    high: float | None = None
    unit: str = ""
    reason: str = ""
    cells: int = 0

    @classmethod
    def not_measured(cls, reason: str) -> Judgement:
        """No row answers the claim; ``reason`` says what would."""
        return cls(Verdict.NOT_MEASURED, reason=reason)


@dataclasses.dataclass(frozen=True)
class Need:
    """Cells a claim needs, as one ``bench`` command: what ``bench claims --run`` runs.

    ``command`` is ``run`` (train: ``bench run``), ``memory`` (``bench memory``) or ``gradients``
    (``bench gradients``); ``backends`` the ``--backends`` text (parameter grids allowed).
    ``budget`` None: the budget given to ``bench claims --run``; a budget name: only that budget
    answers the claim (``paper``: hours), and ``--run`` runs it only when asked for that budget.
    The other fields are the command's options of the same name."""

    command: str
    suite: str
    backends: str
    budget: str | None = None
    seeds: str = "0"
    options: tuple[tuple[str, Any], ...] = ()
    steps: str | None = None
    tolerances: str | None = None
    scales: str | None = None

    def __post_init__(self) -> None:
        if self.command not in NEED_COMMANDS:
            raise ValueError(f"Need.command must be one of {', '.join(NEED_COMMANDS)}, not "
                             f"{self.command!r}")

    def describe(self) -> str:
        """The need as the command line that measures it."""
        words = ["bench", self.command]
        if self.command != "memory":
            words += ["--suite", self.suite]
        words += ["--backends", repr(self.backends) if "[" in self.backends else self.backends]
        if self.budget and self.command != "memory":  # the memory study has its own
            words += ["--budget", self.budget]
        if self.seeds != "0":
            words += ["--seeds", self.seeds]
        for flag, value in (("--steps", self.steps), ("--tolerances", self.tolerances),
                            ("--scales", self.scales)):
            if value:
                words += [flag, value]
        words += [f"--set {key}={value}" for key, value in self.options]
        return " ".join(words)


NEED_COMMANDS = ("run", "memory", "gradients")


class AbstractClaim(abc.ABC):
    """A published claim, checked against result rows.

    Required (checked when a plugin registers it): ``name`` (unique across plugins, no spaces),
    ``statement`` (the claim in one sentence, with its threshold) and ``source`` (where it is
    published: a paper with its table or figure, a documentation page, an issue's address).
    ``needs`` lists the cells that measure it."""

    name: str
    statement: str
    source: str
    #: The cells that measure the claim (``bench claims --run`` runs them).
    needs: tuple[Need, ...] = ()

    @abc.abstractmethod
    def judge(self, rows: Sequence[ResultRow]) -> Judgement:
        """The verdict on the rows of one run or published folder (every row, any status: pick
        the ``ok`` rows that measure the claim). Return :meth:`Judgement.not_measured` when none
        does, saying what would."""


@dataclasses.dataclass(frozen=True)
class Claim(AbstractClaim):
    """A claim from its parts: ``check`` is the judge (rows -> :class:`Judgement`)."""

    name: str
    statement: str
    source: str
    check: Callable[[Sequence[ResultRow]], Judgement]
    needs: tuple[Need, ...] = ()

    def judge(self, rows: Sequence[ResultRow]) -> Judgement:
        return self.check(rows)


def claim_problem(claim: AbstractClaim) -> str | None:
    """What a registered claim lacks (None: nothing): checked at registration, so its author
    meets it in ``bench list``."""
    cls = type(claim)
    where = f"claim class {cls.__module__}.{cls.__qualname__}"
    name = getattr(claim, "name", None)
    if not isinstance(name, str) or not name.strip() or any(c.isspace() or c in ",[]="
                                                            for c in name):
        return (f"{where} needs a name without spaces or any of ,[]= "
                f"(got {name!r}), e.g. name = 'adjoint-memory-o1'")
    where = f"claim {name!r} ({cls.__module__}.{cls.__qualname__})"
    for attribute, example in (("statement", "the claim in one sentence, with its threshold"),
                               ("source", "the paper and its table or figure, or an issue's "
                                          "address")):
        value = getattr(claim, attribute, None)
        if not isinstance(value, str) or not value.strip():
            return f"{where} has no {attribute}: set {attribute} = '<{example}>'"
    needs = getattr(claim, "needs", ())
    if not isinstance(needs, tuple) or not all(isinstance(n, Need) for n in needs):
        return f"{where}: needs must be a tuple of bench.core.claims.Need"
    return None


# -------------------------------------------------------------------------------------------------
# Judging helpers
# -------------------------------------------------------------------------------------------------

#: Two-sided 95% quantiles of Student's t by degrees of freedom (1-30; beyond: the normal's).
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
        2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
        2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t_quantile95(dof: int) -> float:
    """The two-sided 95% quantile of Student's t with ``dof`` degrees of freedom (at least 1;
    above 30 the normal's 1.96)."""
    if dof < 1:
        raise ValueError(f"degrees of freedom must be at least 1, got {dof}")
    return _T95[dof - 1] if dof <= len(_T95) else 1.96


def mean_interval(values: Iterable[float]) -> tuple[float, float, float] | None:
    """The mean of ``values`` and its two-sided 95% t interval ``(mean, low, high)``; None for
    fewer than 2 values (no spread to estimate)."""
    data = [float(v) for v in values]
    if len(data) < 2:
        return None
    mean = statistics.fmean(data)
    half = t_quantile95(len(data) - 1) * statistics.stdev(data) / math.sqrt(len(data))
    return mean, mean - half, mean + half


def median_interval(values: Iterable[float], level: float = 0.90
                    ) -> tuple[float, float, float, float] | None:
    """The median of ``values`` and a distribution-free interval for it from order statistics:
    ``(median, low, high, coverage)`` with coverage at least ``level`` (the narrowest symmetric
    pair of order statistics that reaches it). None when even the smallest and largest value
    cover less than ``level`` (fewer than 5 values at 0.90)."""
    data = sorted(float(v) for v in values)
    n = len(data)
    if n == 0:
        return None
    best: tuple[int, float] | None = None
    for k in range(1, n // 2 + 1):  # interval (x_(k), x_(n+1-k)), 1-based
        below = sum(math.comb(n, i) for i in range(k)) / 2 ** n
        coverage = 1 - 2 * below
        if coverage >= level:
            best = (k, coverage)
    if best is None:
        return None
    k, coverage = best
    return statistics.median(data), data[k - 1], data[n - k], coverage


def interval_verdict(low: float, high: float, threshold: float, claimed: str) -> Verdict:
    """The verdict on a claim that a figure is ``claimed`` (``"below"`` or ``"above"``) a
    threshold, from the figure's interval: holds when the whole interval is on the claimed side,
    fails when it is all on the other side, inconclusive when it spans the threshold."""
    if claimed not in ("below", "above"):
        raise ValueError(f"claimed must be 'below' or 'above', not {claimed!r}")
    if claimed == "below":
        low, high, threshold = -high, -low, -threshold
    if low > threshold:
        return Verdict.HOLDS
    if high < threshold:
        return Verdict.FAILS
    return Verdict.INCONCLUSIVE


def combine(judgements: Sequence[Judgement]) -> Judgement:
    """One judgement from several (e.g. one per backend): the most severe verdict (fails, then
    inconclusive, then holds) with its figure; the reasons of all, joined."""
    measured = [j for j in judgements if j.verdict is not Verdict.NOT_MEASURED]
    if not measured:
        return judgements[0] if judgements else Judgement.not_measured("no rows")
    worst = min(measured, key=lambda j: SEVERITY.index(j.verdict))
    reason = "; ".join(j.reason for j in measured if j.reason)
    return dataclasses.replace(worst, reason=reason, cells=sum(j.cells for j in measured))

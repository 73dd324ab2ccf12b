"""Memory scaling study: measure, rather than assert, how training memory grows with depth L.

``bench memory`` runs the ``memory-scaling`` suite (one training step of a fixed dynamics network
integrated with exactly L fixed steps) for every backend and every L, each measurement in its own
process, then fits the slope of log(memory) against log(L) per backend and per measurement method
and classifies it: O(1), O(log L), O(sqrt L) or O(L).

Memory figures are *increases* over what was allocated before the measured step, so parameters,
inputs and optimiser state (which do not depend on L) are already subtracted; bytes saved for
backward exclude parameters.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from pathlib import Path
from typing import cast

import numpy as np
import pandas as pd

from bench.reports.plots import finish, style_line

DEFAULT_STEPS = (8, 16, 32, 64, 128, 256, 512)

#: Ideal log-log slopes over L = 8..512 and the cut points between classes (midpoints).
#: log L has a local slope 1/ln(L): 0.48 at L=8, 0.16 at L=512; about 0.25 over the range.
CLASSES = (("O(1)", 0.0), ("O(log L)", 0.25), ("O(sqrt L)", 0.5), ("O(L)", 1.0))
CUTS = (0.12, 0.37, 0.75)

#: The claims in the literature, by gradient method.
CLAIMS = {
    "adjoint": "O(1)",
    "backprop": "O(L)",
    "recursive-checkpoint": "O(log L) to O(sqrt L) (checkpointing)",
}

#: Measurement columns that are fitted, with their method names.
MEASURES = {
    "peak_memory_bytes": None,  # the row's own peak_memory_method
    "saved_for_backward_bytes": "torch_saved_tensors",
    "xla_temp_bytes": "xla_compiled_temp_size",
}


@dataclasses.dataclass(frozen=True)
class ScalingFit:
    slope: float
    slope_stderr: float
    intercept: float
    n: int
    verdict: str


def classify(slope: float) -> str:
    for (name, _), cut in zip(CLASSES, CUTS, strict=False):
        if slope < cut:
            return name
    return CLASSES[-1][0]


def fit_scaling(steps: Iterable[float], memory: Iterable[float | None]) -> ScalingFit:
    """Least-squares slope of log(memory) on log(L), its standard error, and the class.

    Needs at least 3 points with positive memory; fewer raise ValueError.
    """
    pairs = [(float(s), float(m)) for s, m in zip(steps, memory, strict=False)
             if m is not None and not math.isnan(m) and m > 0 and s > 0]
    if len(pairs) < 3:
        raise ValueError(f"need at least 3 positive measurements to fit a slope, got {len(pairs)}")
    x = np.log([p[0] for p in pairs])
    y = np.log([p[1] for p in pairs])
    design = np.vstack([x, np.ones_like(x)]).T
    (slope, intercept), *_ = np.linalg.lstsq(design, y, rcond=None)
    residual = y - design @ np.array([slope, intercept])
    dof = len(pairs) - 2
    sigma2 = float(residual @ residual) / dof if dof > 0 else 0.0
    stderr = math.sqrt(sigma2 / float(((x - x.mean()) ** 2).sum()))
    return ScalingFit(float(slope), stderr, float(intercept), len(pairs), classify(float(slope)))


def claim_for(gradient_method: str, backend_claim: str | None = None) -> str:
    return backend_claim or CLAIMS.get(gradient_method, "-")


def agrees(verdict: str, claim: str) -> bool:
    return verdict in claim


def scaling_table(frame: pd.DataFrame, claims: dict[str, str] | None = None) -> pd.DataFrame:
    """One row per backend and measurement: slope, uncertainty, verdict next to the claim.

    ``frame`` holds the ``memory-scaling`` rows (column ``steps`` is L).
    """
    claims = claims or {}
    out = []
    ok = frame[frame["status"] == "ok"]
    for backend, group in ok.groupby("backend", sort=False):
        group = group.sort_values("steps")
        method = group["gradient_method"].iloc[0]
        for column, method_name in MEASURES.items():
            if column not in group or group[column].isna().all():
                continue
            steps, values = group["steps"].to_numpy(float), group[column].to_numpy(float)
            try:
                fit = fit_scaling(steps, values)
            except ValueError as exc:
                out.append({"backend": backend, "measure": column, "error": str(exc)})
                continue
            claim = claim_for(method, claims.get(cast(str, backend)))  # pandas types keys loosely
            out.append({
                "backend": backend,
                "framework": group["framework"].iloc[0],
                "gradient_method": method,
                "measure": column,
                "measure_method": method_name or group["peak_memory_method"].iloc[0],
                "L_min": int(steps.min()),
                "L_max": int(steps.max()),
                "memory_at_L_min_mib": values[0] / 2**20,
                "memory_at_L_max_mib": values[-1] / 2**20,
                "slope": fit.slope,
                "slope_stderr": fit.slope_stderr,
                "points": fit.n,
                "verdict": fit.verdict,
                "claim": claim,
                "agrees_with_claim": agrees(fit.verdict, claim),
            })
    return pd.DataFrame(out)


def plot_scaling(frame: pd.DataFrame, path: str, title: str) -> None:
    """Log-log plot of memory against L, one line per backend and measure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = frame[frame["status"] == "ok"].sort_values("steps")
    fig, ax = plt.subplots(figsize=(7.5, 5))
    styles = {"peak_memory_bytes": "-", "saved_for_backward_bytes": "--", "xla_temp_bytes": ":"}
    for i, (backend, group) in enumerate(ok.groupby("backend", sort=False)):
        for column, style in styles.items():
            if column in group and group[column].notna().any() and (group[column] > 0).any():
                positive = group[group[column] > 0]
                line = {**style_line(i), "linestyle": style, "markersize": 4}
                ax.plot(positive["steps"], positive[column] / 2**20, label=f"{backend}: {column}",
                        **line)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("solver steps L (fixed-step integration)")
    ax.set_ylabel("memory above the pre-step baseline, MiB")
    ax.set_title(title)
    finish(fig, ax, Path(path))  # the house style: legend outside, grid

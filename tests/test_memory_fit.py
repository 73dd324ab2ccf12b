"""Slope fit and classification of the memory scaling study, on synthetic series."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from bench.studies.memory import DEFAULT_STEPS, classify, fit_scaling, scaling_table

L = np.array(DEFAULT_STEPS, dtype=float)


@pytest.mark.parametrize("memory, verdict, slope", [
    (5e6 + 0 * L, "O(1)", 0.0),
    (1e6 * np.log(L), "O(log L)", None),
    (3e5 * np.sqrt(L), "O(sqrt L)", 0.5),
    (2e4 * L, "O(L)", 1.0),
    (2e4 * L + 1e5, "O(L)", None),  # a small constant barely bends it
])
def test_classification_of_ideal_series(memory, verdict, slope):
    fit = fit_scaling(L, memory)
    assert fit.verdict == verdict
    if slope is not None:
        assert fit.slope == pytest.approx(slope, abs=1e-9)
        assert fit.slope_stderr == pytest.approx(0.0, abs=1e-9)
    assert fit.n == len(L)


def test_noise_gives_an_uncertainty():
    rng = np.random.default_rng(0)
    noisy = 2e4 * L * np.exp(rng.normal(0, 0.05, size=L.size))
    fit = fit_scaling(L, noisy)
    assert fit.verdict == "O(L)"
    assert 0.0 < fit.slope_stderr < 0.05
    assert abs(fit.slope - 1.0) < 4 * fit.slope_stderr + 0.02


def test_too_few_points_is_an_error():
    with pytest.raises(ValueError, match="at least 3 positive measurements"):
        fit_scaling([8, 16, 32], [1.0, 0.0, float("nan")])


@pytest.mark.parametrize("slope, name", [(0.05, "O(1)"), (0.2, "O(log L)"), (0.45, "O(sqrt L)"),
                                         (0.9, "O(L)"), (1.3, "O(L)")])
def test_classify_cuts(slope, name):
    assert classify(slope) == name


def test_scaling_table_puts_the_verdict_next_to_the_claim():
    rows = []
    for backend, method, f in (("adj", "adjoint", lambda x: 4e6 + 0 * x),
                               ("direct", "backprop", lambda x: 1e5 * x),
                               ("ckpt", "recursive-checkpoint", lambda x: 1e6 * np.sqrt(x))):
        for steps, value in zip(L, f(L), strict=False):
            rows.append({"backend": backend, "framework": "torch", "gradient_method": method,
                         "status": "ok", "steps": steps, "peak_memory_bytes": value,
                         "peak_memory_method": "cpu_rss_peak_increase",
                         "saved_for_backward_bytes": value if backend == "direct" else math.nan})
    rows.append({"backend": "adj", "status": "failed", "steps": 1024})
    table = scaling_table(pd.DataFrame(rows))
    got = {(r.backend, r.measure): (r.verdict, r.claim, r.agrees_with_claim)
           for r in table.itertuples()}
    assert got[("adj", "peak_memory_bytes")] == ("O(1)", "O(1)", True)
    assert got[("direct", "peak_memory_bytes")] == ("O(L)", "O(L)", True)
    assert got[("direct", "saved_for_backward_bytes")][0] == "O(L)"
    assert ("adj", "saved_for_backward_bytes") not in got
    assert got[("ckpt", "peak_memory_bytes")][0] == "O(sqrt L)"
    assert got[("ckpt", "peak_memory_bytes")][2] is True
    direct = table[(table.backend == "direct") & (table.measure == "peak_memory_bytes")].iloc[0]
    assert direct.L_min == 8 and direct.L_max == 512
    assert direct.memory_at_L_max_mib == pytest.approx(512e5 / 2**20)

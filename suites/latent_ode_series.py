"""Procedural time series of the latent-ODE suite (numpy only, seeded by the caller's generator).

- :func:`spirals`: the 2-D spirals of Chen et al. 2018, Sec. 5.1 ("Latent ODE for time
  series"): two base spirals over t in [0, 6 pi] on a grid of 1000 points, a clockwise
  one ``r = a + b 50 / z`` centred at (-5, 0) with ``z = 6 pi + 1 - t`` and a counter-clockwise one
  ``r = a + b z`` centred at (5, 0) with ``z = t`` (a = 0, b = 0.3); each series is a window of
  consecutive grid points starting at a random index, half of the series clockwise, with Gaussian
  noise (std 0.3) on the observations. As in the authors' ``generate_spiral2d``, no window starts
  in the grid's first ``num_points // 2`` points (their ``nsample``: "don't sample t0 very near the
  start"), where both spirals are tightest (radius under 0.8) and the noise hides their shape.
  The series' times are the grid's first points (every series starts at t = 0), equally spaced by
  6 pi / 999.
- :func:`periodic`: the toy "periodic" series of Rubanova et al. 2019: ``sin(2 pi f t + phi)`` with
  f ~ U[0.4, 0.8] and phi ~ U[0, 2 pi) per series, amplitude 1, at 100 times drawn U(0, 5) once and
  shared by all series (sorted, so irregularly spaced), Gaussian noise of std 0.01 (the paper's
  text: Gaussian noise on the observations). The authors' code (``lib/generate_timeseries.py``)
  differs: its noise is ``noise_weight * U[0, 1)`` (all positive, mean 0.005 at 0.01) on every
  point but the first, its phase starts at 0 at t = 0 (a time it includes), and each series is
  offset by 1 + N(0, 0.1); this suite claims no number of theirs.

Every generator returns a :class:`Series`: ``times`` (T,), ``clean`` (N, T, D) and ``noisy``
(N, T, D), float32, plus per-series parameters for the record.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np

SPIRAL_GRID_POINTS = 1000
SPIRAL_T_MAX = 6.0 * math.pi


@dataclasses.dataclass(frozen=True)
class Series:
    times: np.ndarray  # (T,) float32, increasing
    clean: np.ndarray  # (N, T, D) float32, without noise
    noisy: np.ndarray  # (N, T, D) float32, what the model observes
    info: dict[str, np.ndarray]  # per-series parameters (e.g. clockwise, frequency)

    @property
    def num_series(self) -> int:
        return int(self.clean.shape[0])

    @property
    def num_points(self) -> int:
        return int(self.times.shape[0])

    @property
    def dim(self) -> int:
        return int(self.clean.shape[2])


def spirals(rng: np.random.Generator, num_series: int = 1000, num_points: int = 200,
            noise_std: float = 0.3, a: float = 0.0, b: float = 0.3) -> Series:
    """``num_series`` noisy 2-D spiral windows of ``num_points`` points (see the module doc)."""
    if not 2 <= num_points <= SPIRAL_GRID_POINTS:
        raise ValueError(f"num_points must be in [2, {SPIRAL_GRID_POINTS}], not {num_points}")
    grid = np.linspace(0.0, SPIRAL_T_MAX, SPIRAL_GRID_POINTS)
    z_cw = SPIRAL_T_MAX + 1.0 - grid
    r_cw = a + b * 50.0 / z_cw
    cw = np.stack([r_cw * np.cos(z_cw) - 5.0, r_cw * np.sin(z_cw)], axis=1)
    r_cc = a + b * grid
    cc = np.stack([r_cc * np.cos(grid) + 5.0, r_cc * np.sin(grid)], axis=1)
    first = min(num_points // 2, SPIRAL_GRID_POINTS - num_points)  # the authors' t0 >= nsample
    starts = rng.integers(first, SPIRAL_GRID_POINTS - num_points + 1, size=num_series)
    clockwise = rng.random(num_series) < 0.5
    clean = np.stack([(cw if c else cc)[s:s + num_points]
                      for s, c in zip(starts, clockwise, strict=True)])
    noisy = clean + noise_std * rng.standard_normal(clean.shape)
    return Series(grid[:num_points].astype(np.float32), clean.astype(np.float32),
                  noisy.astype(np.float32), {"start": starts, "clockwise": clockwise})


def periodic(rng: np.random.Generator, num_series: int = 1000, num_points: int = 100,
             t_max: float = 5.0, noise_std: float = 0.01, min_frequency: float = 0.4,
             max_frequency: float = 0.8) -> Series:
    """``num_series`` noisy 1-D sinusoids at ``num_points`` shared irregular times in (0, t_max)."""
    if num_points < 2:
        raise ValueError(f"num_points must be at least 2, not {num_points}")
    times = np.sort(rng.uniform(0.0, t_max, size=num_points))
    frequency = rng.uniform(min_frequency, max_frequency, size=num_series)
    phase = rng.uniform(0.0, 2.0 * math.pi, size=num_series)
    clean = np.sin(2.0 * math.pi * frequency[:, None] * times[None, :] + phase[:, None])[..., None]
    noisy = clean + noise_std * rng.standard_normal(clean.shape)
    return Series(times.astype(np.float32), clean.astype(np.float32), noisy.astype(np.float32),
                  {"frequency": frequency, "phase": phase})


GENERATORS: dict[str, Callable[..., Series]] = {"spirals": spirals, "periodic": periodic}

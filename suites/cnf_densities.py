"""The eight procedural 2-D densities of FFJORD's toy experiments (Grathwohl et al. 2019,
``lib/toy_data.py``), drawn from a numpy ``Generator`` passed in (never the global random state).

Each generator ``f(rng, n)`` returns ``n`` samples as a float32 array of shape (n, 2). The shapes,
scales and noise levels are FFJORD's; where FFJORD called scikit-learn (swissroll, circles, moons)
the same construction is written out here, and where FFJORD returned fewer than ``n`` points
(pinwheel: a multiple of 5; 2spirals: an even number) the counts are spread so that exactly ``n``
come back. Two have a known density, :func:`eight_gaussians_log_density` and
:func:`circles_log_density`: the exact NLL of the generating distribution bounds every model from
below.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from bench.core.errors import UnknownNameError

Generator = Callable[[np.random.Generator, int], np.ndarray]

def _logsumexp(a: np.ndarray) -> np.ndarray:
    """log(sum(exp(a), axis=1)) of an (n, k) float64 array, without overflow."""
    top = a.max(axis=1, keepdims=True)
    return top[:, 0] + np.log(np.exp(a - top).sum(axis=1))


# -- 8gaussians: an equal-weight mixture of 8 isotropic Gaussians --------------------------------
#: FFJORD divides the samples by 1.414 (not by sqrt(2)): kept, so the density below is exact.
_EIGHT_DIVISOR = 1.414
_EIGHT_SCALE = 4.0
_EIGHT_STD = 0.5
_S = 1.0 / math.sqrt(2.0)
_EIGHT_DIRECTIONS = np.array([(1, 0), (-1, 0), (0, 1), (0, -1), (_S, _S), (_S, -_S), (-_S, _S),
                              (-_S, -_S)], dtype=np.float64)
#: Component means and standard deviation of the generating mixture, in data units.
EIGHT_GAUSSIANS_MEANS = _EIGHT_SCALE * _EIGHT_DIRECTIONS / _EIGHT_DIVISOR
EIGHT_GAUSSIANS_STD = _EIGHT_STD / _EIGHT_DIVISOR


def eight_gaussians(rng: np.random.Generator, n: int) -> np.ndarray:
    """(4 c_k + 0.5 e) / 1.414, k uniform in the 8 unit directions c_k, e ~ N(0, I)."""
    k = rng.integers(0, 8, size=n)
    points = rng.standard_normal((n, 2)) * _EIGHT_STD + _EIGHT_SCALE * _EIGHT_DIRECTIONS[k]
    return (points / _EIGHT_DIVISOR).astype(np.float32)


def eight_gaussians_log_density(x: np.ndarray) -> np.ndarray:
    """Exact log-density (nats) of the 8gaussians generator at the points ``x`` (n, 2):

    log p(x) = log( (1/8) sum_k N(x; mu_k, s^2 I) )
             = logsumexp_k( -|x - mu_k|^2 / (2 s^2) ) - log 8 - log(2 pi s^2),

    with mu_k = 4 c_k / 1.414 and s = 0.5 / 1.414. Computed in float64.
    """
    x = np.asarray(x, dtype=np.float64)
    s2 = EIGHT_GAUSSIANS_STD ** 2
    sq = ((x[:, None, :] - EIGHT_GAUSSIANS_MEANS[None, :, :]) ** 2).sum(-1)  # (n, 8)
    return _logsumexp(-sq / (2.0 * s2)) - math.log(8.0) - math.log(2.0 * math.pi * s2)


# -- the others ------------------------------------------------------------------------------------


def two_spirals(rng: np.random.Generator, n: int) -> np.ndarray:
    """Two interleaved spiral arms; FFJORD's second arm is the mirror image -d of the first."""
    m = (n + 1) // 2
    r = np.sqrt(rng.random((m, 1))) * 540.0 * (2.0 * np.pi) / 360.0
    dx = -np.cos(r) * r + rng.random((m, 1)) * 0.5
    dy = np.sin(r) * r + rng.random((m, 1)) * 0.5
    arm = np.hstack((dx, dy))
    x = np.vstack((arm, -arm))[:n] / 3.0
    x = x + rng.standard_normal(x.shape) * 0.1
    return x.astype(np.float32)


def checkerboard(rng: np.random.Generator, n: int) -> np.ndarray:
    """Uniform on the 8 black squares of a 4x4 checkerboard of side 8, centred at the origin."""
    x1 = rng.random(n) * 4.0 - 2.0
    x2 = rng.random(n) - rng.integers(0, 2, size=n) * 2.0
    x2 = x2 + np.floor(x1) % 2
    return (np.stack([x1, x2], axis=1) * 2.0).astype(np.float32)


def _shuffle_and_noise(rng: np.random.Generator, x: np.ndarray, noise: float) -> np.ndarray:
    x = x[rng.permutation(len(x))]
    return x + rng.normal(scale=noise, size=x.shape)


#: scikit-learn's make_circles arguments (inner radius factor, noise) and FFJORD's scale
_CIRCLES_FACTOR, _CIRCLES_NOISE, _CIRCLES_SCALE = 0.5, 0.08, 3.0
#: circles' radii (outer, inner) and noise std, after the scale
CIRCLES_RADII = (_CIRCLES_SCALE, _CIRCLES_FACTOR * _CIRCLES_SCALE)
CIRCLES_STD = _CIRCLES_NOISE * _CIRCLES_SCALE


def circles(rng: np.random.Generator, n: int) -> np.ndarray:
    """scikit-learn's make_circles(n, factor=0.5, noise=0.08), times 3."""
    n_out = n // 2
    n_in = n - n_out
    a_out = np.linspace(0.0, 2.0 * np.pi, n_out, endpoint=False)
    a_in = np.linspace(0.0, 2.0 * np.pi, n_in, endpoint=False)
    x = np.vstack([np.stack([np.cos(a_out), np.sin(a_out)], 1),
                   _CIRCLES_FACTOR * np.stack([np.cos(a_in), np.sin(a_in)], 1)])
    return (_shuffle_and_noise(rng, x, _CIRCLES_NOISE) * _CIRCLES_SCALE).astype(np.float32)


def _log_i0(z: np.ndarray) -> np.ndarray:
    """log I0(z) of the modified Bessel function for z >= 0, in float64 without overflow: numpy's
    ``i0`` below 500, the asymptotic series (relative error < 1e-9 there) above."""
    z = np.asarray(z, dtype=np.float64)
    small = z < 500.0
    out = np.empty_like(z)
    out[small] = np.log(np.i0(z[small]))
    big = z[~small]
    out[~small] = (big - 0.5 * np.log(2.0 * math.pi * big)
                   + np.log1p(1.0 / (8.0 * big) + 9.0 / (128.0 * big ** 2)
                              + 225.0 / (3072.0 * big ** 3)))
    return out


def circles_log_density(x: np.ndarray) -> np.ndarray:
    """Log-density (nats) of the circles generator at the points ``x`` (n, 2), in float64.

    The generator puts half the points on a circle of radius r = 3 and half on r = 1.5 (angles
    evenly spaced, so in the limit uniform) and adds N(0, s^2 I) noise, s = 0.24. A uniform angle
    on a circle of radius r plus isotropic Gaussian noise has the density (rho = |x|)

        p_r(x) = exp(-(rho^2 + r^2) / (2 s^2)) I0(rho r / s^2) / (2 pi s^2),

    and log p(x) = logsumexp_r(log p_r(x)) - log 2. Exact for the uniform-angle limit; the test
    points' angles are a grid of n / 2 per circle, which changes an NLL averaged over them by far
    less than its last printed digit.
    """
    x = np.asarray(x, dtype=np.float64)
    rho = np.sqrt((x ** 2).sum(axis=1))
    s2 = CIRCLES_STD ** 2
    terms = np.stack([-(rho ** 2 + r ** 2) / (2.0 * s2) + _log_i0(rho * r / s2)
                      for r in CIRCLES_RADII], axis=1)
    return _logsumexp(terms) - math.log(2.0) - math.log(2.0 * math.pi * s2)


def moons(rng: np.random.Generator, n: int) -> np.ndarray:
    """scikit-learn's make_moons(n, noise=0.1), times 2, shifted by (-1, -0.2)."""
    n_out = n // 2
    n_in = n - n_out
    a_out = np.linspace(0.0, np.pi, n_out)
    a_in = np.linspace(0.0, np.pi, n_in)
    x = np.vstack([np.stack([np.cos(a_out), np.sin(a_out)], 1),
                   np.stack([1.0 - np.cos(a_in), 1.0 - np.sin(a_in) - 0.5], 1)])
    x = _shuffle_and_noise(rng, x, 0.1)
    return (x * 2.0 + np.array([-1.0, -0.2])).astype(np.float32)


def pinwheel(rng: np.random.Generator, n: int) -> np.ndarray:
    """Five curved blades: radial std 0.3, tangential std 0.1, rate 0.25, times 2."""
    num_classes, rate = 5, 0.25
    rads = np.linspace(0.0, 2.0 * np.pi, num_classes, endpoint=False)
    labels = np.sort(np.arange(n) % num_classes)
    features = rng.standard_normal((n, 2)) * np.array([0.3, 0.1])
    features[:, 0] += 1.0
    angles = rads[labels] + rate * np.exp(features[:, 0])
    rotations = np.stack([np.cos(angles), -np.sin(angles), np.sin(angles), np.cos(angles)])
    rotations = np.reshape(rotations.T, (-1, 2, 2))
    x = np.einsum("ti,tij->tj", features, rotations)
    return (2.0 * rng.permutation(x)).astype(np.float32)


def rings(rng: np.random.Generator, n: int) -> np.ndarray:
    """Four concentric rings of radii 3, 2.25, 1.5, 0.75; Gaussian noise 0.08."""
    n4 = n3 = n2 = n // 4
    n1 = n - n4 - n3 - n2
    parts = []
    for count, radius in ((n4, 1.0), (n3, 0.75), (n2, 0.5), (n1, 0.25)):
        a = np.linspace(0.0, 2.0 * np.pi, count, endpoint=False)
        parts.append(radius * np.stack([np.cos(a), np.sin(a)], 1))
    x = np.vstack(parts) * 3.0
    return _shuffle_and_noise(rng, x, 0.08).astype(np.float32)


def swissroll(rng: np.random.Generator, n: int) -> np.ndarray:
    """scikit-learn's make_swiss_roll(n, noise=1.0), coordinates (x, z), divided by 5."""
    t = 1.5 * np.pi * (1.0 + 2.0 * rng.random(n))
    x = np.stack([t * np.cos(t), t * np.sin(t)], 1) + rng.standard_normal((n, 2))
    return (x / 5.0).astype(np.float32)


GENERATORS: dict[str, Generator] = {
    "8gaussians": eight_gaussians,
    "2spirals": two_spirals,
    "checkerboard": checkerboard,
    "circles": circles,
    "moons": moons,
    "pinwheel": pinwheel,
    "rings": rings,
    "swissroll": swissroll,
}

#: Datasets whose generating density is known exactly.
TRUE_LOG_DENSITIES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "8gaussians": eight_gaussians_log_density,
    "circles": circles_log_density,
}


def generator(name: str) -> Generator:
    """The generator called ``name``; unknown names raise with the valid choices."""
    if name not in GENERATORS:
        raise UnknownNameError("cnf dataset", str(name), GENERATORS)
    return GENERATORS[name]


def sample(name: str, rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` samples (float32, shape (n, 2)) of dataset ``name`` drawn from ``rng``."""
    return generator(name)(rng, int(n))

"""The latent-ODE suite's plot: a few test series with their observed points, the truth and the
model's reconstruction and extrapolation (split from :mod:`bench.suites.latent_ode_data`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from bench.store.files import atomic_write


def plot_series(path: Any, data: Any, batch: Any, clean: np.ndarray,
                prediction: np.ndarray, title: str = "") -> None:
    """One PNG (``data`` a :class:`~bench.suites.latent_ode_data.LatentOdeData`, ``batch`` its
    ``Batch``): a few test series with their observed points, the truth and the model's
    reconstruction (window) and extrapolation (future)."""
    from matplotlib.figure import Figure

    n = len(prediction)
    fig = Figure(figsize=(4.0 * n, 3.6))
    axes = np.atleast_1d(fig.subplots(1, n))
    t, w = data.times, data.window
    for i, ax in enumerate(axes):
        seen = batch.mask[i] > 0.5
        if data.series.dim == 2:
            ax.plot(clean[i, :, 0], clean[i, :, 1], color="0.7", lw=1, label="truth")
            ax.plot(prediction[i, :w, 0], prediction[i, :w, 1], color="C0", label="reconstruction")
            ax.plot(prediction[i, w - 1:, 0], prediction[i, w - 1:, 1], color="C3", ls="--",
                    label="extrapolation")
            ax.scatter(batch.values[i, seen, 0], batch.values[i, seen, 1], s=8, color="k",
                       label="observed", zorder=3)
            ax.set_aspect("equal", adjustable="datalim")
        else:
            ax.plot(t, clean[i, :, 0], color="0.7", lw=1, label="truth")
            ax.plot(t[:w], prediction[i, :w, 0], color="C0", label="reconstruction")
            ax.plot(t[w - 1:], prediction[i, w - 1:, 0], color="C3", ls="--",
                    label="extrapolation")
            ax.scatter(t[seen], batch.values[i, seen, 0], s=8, color="k", label="observed",
                       zorder=3)
            ax.axvline(float(t[w - 1]), color="0.85", lw=0.8)
            ax.set_xlabel("t")
        ax.set_title(f"test series {i}", fontsize=9)
    axes[0].legend(fontsize=7, loc="best")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    # whole, renamed into place: never written through a link in the cell's folder
    atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=100))

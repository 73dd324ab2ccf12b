"""A cell's identity: suite x backend (with its parameters) x budget x seed x device x options,
decided when the request is planned, before any cell starts."""

from __future__ import annotations

import dataclasses
from typing import Any

from bench.planning.backend_grid import BackendChoice


@dataclasses.dataclass(frozen=True)
class CellSpec:
    suite: str
    backend: str
    budget: str
    seed: int
    device: str  # as requested: cpu, cuda or auto
    options: tuple[tuple[str, Any], ...] = ()
    #: Options that say where to find things (e.g. ``data_dir``), left out of the cell id.
    unidentifying: tuple[str, ...] = ()
    #: The backend parameters the user set (:class:`bench.planning.backend_grid.BackendChoice`).
    backend_params: tuple[tuple[str, Any], ...] = ()
    #: ``train`` (a training cell) or ``gradients`` (a point of the gradient study, no
    #: training: :func:`bench.engine.gradient_cell.run_gradient_cell`) at the weights times
    #: ``scale``.
    mode: str = "train"
    scale: float = 1.0

    @property
    def choice(self) -> BackendChoice:
        return BackendChoice(self.backend, self.backend_params)

    @property
    def backend_label(self) -> str:
        """``backend`` or ``backend[key=value,...]`` with the parameters set."""
        return self.choice.label

    @property
    def cell_id(self) -> str:
        """Unique within a run: suite/backend[params]/budget/seed/device[/key=value,...]."""
        base = (f"{self.suite}/{self.backend_label}/{self.budget}/seed{self.seed}/"
                f"{self.device}")
        if self.mode != "train":
            base += f"/{self.mode}/scale={self.scale:g}"
        shown = [(k, v) for k, v in self.options if k not in self.unidentifying]
        if shown:
            base += "/" + ",".join(f"{k}={v}" for k, v in shown)
        return base

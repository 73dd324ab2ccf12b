"""A fake backend with the engine's optional hooks (a compile cache and a loop-time profile),
for the tests of where a cell's time goes (tests/test_time_to_answer.py).

``numpy-cached`` keeps a "compiled program" as a file in the cells' compile cache
(``BENCH_COMPILE_CACHE``): the first cell of a grid compiles it (a miss, and writes it), the
next ones load it (a hit). Its profile says each of the step's 20 evaluations took 1 ms of a
solve of 30 ms."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from fake_plugins import NumpyEulerBackend

import bench


class CachedEulerBackend(NumpyEulerBackend):
    def __init__(self, name: str = "numpy-cached", **kwargs):
        super().__init__(name, **kwargs)
        self.requests = self.hits = 0

    def _cache(self) -> Path | None:
        value = os.environ.get("BENCH_COMPILE_CACHE")
        return None if value in (None, "off") else Path(value)

    def integrate(self, a, y0, t1):
        folder = self._cache()
        if folder is not None and not self.requests:  # the first solve "compiles"
            self.requests += 1
            entry = folder / "numpy" / "program"
            if entry.exists():
                self.hits += 1
            else:
                entry.parent.mkdir(parents=True, exist_ok=True)
                entry.write_text("compiled")
        return super().integrate(a, y0, t1)

    def compile_cache_counts(self):
        return None if self._cache() is None else (self.requests, self.hits)

    def nan_hint(self):
        return "" if self._cache() is None else "; (a failed fake solve returns NaN)"

    @contextlib.contextmanager
    def profile_solves(self, device):
        result = {}
        yield result
        result.update(solve_time_s=0.030, dynamics_time_s=0.020, nfe=20.0, solves=1)


@bench.hookimpl
def bench_register_backends(register):
    register(CachedEulerBackend())
    register(CachedEulerBackend("numpy-cached-nan", behaviour="nan"))

"""The plugin module of the built-in claims (one of the registry's default plugins): registers
every claim of :mod:`bench.claims.memory`, :mod:`bench.claims.papers` and
:mod:`bench.claims.numerics`. Importing it imports no numerical framework."""

from __future__ import annotations

from collections.abc import Callable

from bench.claims import memory, numerics, papers

import bench
from bench.core.claims import AbstractClaim


@bench.hookimpl
def bench_register_claims(register: Callable[[AbstractClaim], None]) -> None:
    for module in (memory, papers, numerics):
        for claim in module.claims():
            register(claim)

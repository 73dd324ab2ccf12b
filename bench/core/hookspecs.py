"""Hook specifications: the whole contract between the core and a plugin.

A plugin is a module (or object) with functions marked ``@bench.hookimpl``. Built-in backends
(``plugins/``) and suites (``suites/``) use exactly these hooks; a third-party package exposes its
plugin module through the entry-point group ``bench``::

    [project.entry-points.bench]
    my_plugin = "my_package.bench_plugin"

Hooks are always called with keyword arguments; an implementation may accept a subset of them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from bench.core.claims import AbstractClaim
    from bench.core.interfaces import AbstractBackend, AbstractSuite

PROJECT_NAME = "bench"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


# -------------------------------------------------------------------------------------------------
# Discovery hooks
# -------------------------------------------------------------------------------------------------


@hookspec
def bench_register_backends(register: Callable[[AbstractBackend], None]) -> None:
    """Register the backends this plugin provides.

    Call ``register(backend)`` once per backend, with an instance of
    :class:`bench.core.interfaces.AbstractBackend`. Backend names must be unique across all plugins;
    a clash is reported by ``bench list`` and the later registration is ignored.

    :param register: callback taking one backend instance.
    """


@hookspec
def bench_register_suites(register: Callable[[AbstractSuite], None]) -> None:
    """Register the suites this plugin provides.

    Call ``register(suite)`` once per suite, with an instance of
    :class:`bench.core.interfaces.AbstractSuite`. Suite names must be unique across all plugins.

    :param register: callback taking one suite instance.
    """


@hookspec
def bench_register_claims(register: Callable[[AbstractClaim], None]) -> None:
    """Register the claims this plugin checks.

    Call ``register(claim)`` once per claim, with an instance of
    :class:`bench.core.claims.AbstractClaim` (or :class:`bench.core.claims.Claim`, built from a
    judge function). Claim names must be unique across all plugins; ``bench claims`` judges
    every registered claim on the rows of the folders it is given.

    :param register: callback taking one claim instance.
    """

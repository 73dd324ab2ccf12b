"""The contract between the harness and its plugins: the abstract backend, suite and task
(:mod:`~bench.core.interfaces`), the hook specifications (:mod:`~bench.core.hookspecs`), the
plugin registry, the plain values (:mod:`~bench.core.values`), declared options, tolerances, the
result row, seeding, the memory trackers and the gradient probe, and the errors a user sees.
Imports nothing else of ``bench`` and no numerical framework.
"""

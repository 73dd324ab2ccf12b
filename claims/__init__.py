"""The built-in claims (installed as ``bench.claims``): published claims about Neural ODE solvers
and gradient methods, each a :class:`bench.core.claims.AbstractClaim` with its source, the cells
that measure it and a judge over result rows. :mod:`bench.claims.builtin` is the plugin module
that registers them (one of the registry's default plugins); :mod:`~bench.claims.memory` holds the
memory-scaling claims, :mod:`~bench.claims.papers` the papers' tables and figures,
:mod:`~bench.claims.numerics` the counting, gradient and timing claims."""

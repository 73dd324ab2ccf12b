"""Everything decided before a cell starts: the request a command line or run file makes
(:mod:`~bench.planning.request`, :mod:`~bench.planning.run_config`) and the checks of its values
(:mod:`~bench.planning.checks`), backend parameter grids (:mod:`~bench.planning.backend_grid`),
the cells' identities (:mod:`~bench.planning.cells`) and how cores, threads and GPUs are shared
among cells (:mod:`~bench.planning.concurrency`).
"""

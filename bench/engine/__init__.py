"""Running cells: each in its own fresh process (:mod:`~bench.engine.cell_process`), started
and watched by :mod:`~bench.engine.cell_watch` (limits, clean-up, monitor), through one pool
(:mod:`~bench.engine.parallel`: local slots, one of them for a serial run, or Dask workers from
:mod:`~bench.engine.dask_engine`), with the measured training loop (:mod:`~bench.engine.cell`) and
the gradient-study point (:mod:`~bench.engine.gradient_cell`) inside the cell.
"""

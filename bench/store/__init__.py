"""The run folder: the one place that reads and writes a run's files (``rows.jsonl``,
``config.json``, ``environment.json``, ``results.csv``, the cells' folders, the lock) and the index
of run folders.

Every file goes through :mod:`bench.store.files` (written whole and renamed into place, appended
and read without following a link; a folder holding links or special files is refused), text is
made safe for its format by :mod:`bench.store.formats` (CSV formulas, markdown, LaTeX, link
targets), and :mod:`bench.store.lock` keeps two runs from writing one folder.
"""

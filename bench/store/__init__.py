"""The run folder: the one place that reads and writes a run's files (``rows.jsonl``,
``config.json``, ``environment.json``, ``results.csv``, the cells' folders, the lock) and the index
of run folders.
"""

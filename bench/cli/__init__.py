"""The command line: argument parsing (:mod:`~bench.cli.arguments`) and printing outcomes
(:mod:`~bench.cli.main`). The work itself is done by :mod:`bench.commands`.
"""

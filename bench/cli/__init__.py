"""The command line: argument parsing (:mod:`~bench.cli.arguments`), the run and memory requests
made of the arguments (:mod:`~bench.cli.requests`), ``bench list``'s lines
(:mod:`~bench.cli.listing`) and printing outcomes (:mod:`~bench.cli.main`). The work itself is
done by :mod:`bench.commands`.
"""

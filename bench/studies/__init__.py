"""Studies built from many cells: training memory against solver steps
(``bench memory``), gradient accuracy (``bench gradients``) and work-precision diagrams.
"""

"""Turning rows into pages: tables (markdown, CSV, LaTeX), the HTML page, plots, the
comparison of two runs (``bench compare``) and published folders.
"""

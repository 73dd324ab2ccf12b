"""The framework layer (installed as ``bench.frameworks``): what backends and suites of one
numerical framework share, above the framework-neutral core (``bench``)."""

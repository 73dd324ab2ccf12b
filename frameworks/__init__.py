"""The framework layer (installed as ``bench.frameworks``): what backends and suites of one
numerical framework share, above the framework-neutral core (``bench``): everything a suite may
ask of a backend, as typed protocols and base classes. ``bench.frameworks.torch`` and
``bench.frameworks.jax`` never import each other; ``bench.frameworks.fixed_grid`` is the
framework-neutral step grid both fixed-step RK4 nets use."""

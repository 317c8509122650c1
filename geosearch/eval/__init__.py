"""Evaluation: the benchmark folder format, metrics, the ``geosearch eval`` harness, plots and the
builders of the project's own benchmarks (AID mosaic, SpaceNet relations)."""

"""Benchmark scripts for the library, run from the repository root as ``python -m benchmarks.NAME``."""

"""Benchmarks and the seed's import paths (``benchmarking.misc.init_benchmarking.get_dataset``)."""

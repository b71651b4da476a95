"""Benchmarks of pegp-stream's hot path and basis refresh. Run `python -m benchmarks.bench_core --help`."""

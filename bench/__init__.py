"""Benchmarks: each measured against a floor run in the same invocation; results in BENCHMARKS.md."""

"""Benchmarks: retryd against the fastest possible client loop (see bench/README.md)."""

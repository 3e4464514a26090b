"""Benchmarks: the runs that measure margincall, and the markdown they write."""

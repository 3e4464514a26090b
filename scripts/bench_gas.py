"""Gas of every engine operation into docs/benchmarks.md (`ape run bench_gas`, `make
bench-gas`): a shell over `margincall.bench.gas`."""

from margincall.bench.gas import main

__all__ = ["main"]

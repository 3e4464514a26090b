"""Keeper scan throughput through `check_margins` (part of `make bench`): a shell over
`margincall.bench.scan`."""

import sys

from margincall.bench.scan import run

if __name__ == "__main__":
    sys.exit(run())

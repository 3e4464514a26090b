"""Every benchmark into docs/benchmarks.md and docs/img/ (`make bench`): a shell over
`margincall.bench.suite`; `python scripts/bench.py --help` lists the steps."""

import sys

from margincall.bench.suite import run

if __name__ == "__main__":
    sys.exit(run())

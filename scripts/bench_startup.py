"""Bot start-up time (keeper and notifier, spawn to /health 200): a shell over
`margincall.bench.startup`; `--write` updates the `startup` block of docs/benchmarks.md."""

import sys

from margincall.bench.startup import main

if __name__ == "__main__":
    sys.exit(main())

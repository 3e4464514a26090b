"""How fast the keeper bot liquidates a crowd after a crash, by block gas limit (part of
`make bench`): a shell over `margincall.bench.reaction`."""

import sys

from margincall.bench.reaction import main

if __name__ == "__main__":
    sys.exit(main())

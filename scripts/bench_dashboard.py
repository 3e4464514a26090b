"""The dashboard with 500 accounts: first paint of the system page and how fast updates land
(`python scripts/bench_dashboard.py [--traders 500] [--loads 5] [--updates 10] [--write]`): a
shell over `margincall.web.bench`, which documents the measurement."""

from margincall.web.bench import main

if __name__ == "__main__":
    main()

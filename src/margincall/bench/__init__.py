"""The benchmarks: gas (`gas`), keeper scan throughput (`scan`), reaction time (`reaction`)
and the suite that runs them all into docs/benchmarks.md (`suite`)."""

"""The benchmarks: gas (`gas`), keeper scan throughput (`scan`), reaction time (`reaction`),
the peer benchmark against Morpho Blue (`peers`, `solidity`, `peers_doc`, `trace`) and the suite
that runs them all into docs/benchmarks.md (`suite`)."""

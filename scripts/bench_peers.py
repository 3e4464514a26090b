"""margincall and Morpho Blue 1.0.0 side by side on one Anvil.

Run with `make bench-peers` (that is, `ape run bench_peers`: Ape starts its own Anvil, per
ape-config.yaml). Compiles Morpho Blue and the helpers in bench/peers/ with solcjs, deploys
both protocols with the same feed and the same OpenZeppelin token, prints the table and
rewrites the block between `<!-- peers:begin -->` and `<!-- peers:end -->` in
docs/benchmarks.md. The work is in `margincall.bench.peers`.
"""

import click
from ape import project
from ape.logging import logger

from margincall.bench.peers import DOC, run, sanity
from margincall.bench.peers_doc import console_table, render_block, write_doc


def main() -> None:
    logger.set_level("WARNING")
    rows, info, conditions, breakdowns = run(project)
    click.echo(console_table(rows))
    for line in sanity(rows):
        click.echo(line)
    write_doc(DOC, render_block(rows, info, conditions, breakdowns))
    click.echo(f"wrote {DOC}")

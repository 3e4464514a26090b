"""Keeper reaction: N accounts made liquidatable by one price update, the real keeper bot.

    python scripts/bench_reaction.py [--accounts 1000] [--gas-limit 30000000 ...] [--json out.json]

Starts an Anvil of its own (`margincall.sim.chain.Anvil`), opens N long traders at 8x-9x on
ETH and BTC with the simulator's batched setup, starts `silverback run keeper` as a real
process (`margincall.keeper.procs.BotProcess`, account TEST::3), switches Anvil to interval mining
at one block a second, and posts one price update that drops both markets 12%: every
account becomes CRITICAL or BANKRUPT at once. It then watches the chain: for every account,
the block of its `Liquidation` event and the wall time when that block was first seen,
counted from the block of the price update.

The block gas limit bounds how many liquidations fit in one block (about 44k gas each in a
100-account batch, so about 680 per 30M block): `--gas-limit` sets Anvil's and may be given
more than once (default: 30M, Anvil's default; 60M, Ethereum mainnet's limit since November
2025; 100M). Prints a table; `--json` writes the figures. Exits 1 when a run did not see every
account liquidated before its timeout (the figures are still printed and written).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[3]  # the project (an editable install)
DROP = 0.12
TARGET = "all in the first block after the update"


def measure(n: int, gas_limit: int, seed: int = 1, timeout: float = 180.0) -> dict[str, Any]:
    warnings.filterwarnings("ignore", message="Field 'import_remapping'")
    from ape import accounts, chain, networks
    from ape.logging import logger

    from margincall.deploy.record import record_of, write_record
    from margincall.sim.chain import Anvil, Rpc, hexint
    from margincall.sim.simulate import load_project

    logger.set_level("ERROR")
    work = Path(tempfile.mkdtemp(prefix="bench-reaction-"))
    with Anvil(gas_limit=gas_limit) as anvil:
        choice = networks.parse_network_choice(
            "ethereum:local:foundry",
            provider_settings={"host": anvil.uri},
            disconnect_after=False,
            disconnect_on_exit=False,
        )
        with choice:
            rpc = Rpc(anvil.uri)
            project = load_project()
            owner = accounts.test_accounts[0]
            sim = _simulation(rpc, project, owner, n, seed)
            t0 = time.monotonic()
            sim.setup()
            setup_s = time.monotonic() - t0
            record = record_of(sim.system, "ethereum:local:foundry", chain, owner)
            record_path = write_record(record, work / "record.json")
            metrics = work / "keeper.json"
            keeper = _keeper(work, anvil.uri, record_path, metrics)
            try:
                keeper.start().wait_ready(180)
                rpc.call("evm_setIntervalMining", 1)
                _wait_scanning(keeper, metrics, rpc, hexint)
                sent_at = time.monotonic()
                hashes = [h for h, tx in _send(sim, _drop_txs(sim))]
                update_block, seen_update = _wait_receipts(rpc, hashes, hexint, timeout=30)
                first_seen: dict[int, float] = {update_block: seen_update}
                acted = _follow(sim, rpc, update_block, n, timeout, first_seen)
                blocks = [b - update_block for b in acted.values()]
                per_block = Counter(blocks)
                gas = {
                    b: hexint(
                        rpc.call("eth_getBlockByNumber", hex(update_block + b), False)["gasUsed"]
                    )
                    for b in sorted(per_block)
                }
                _settle(metrics, len(acted))
                scan_ms = [
                    int(x) for x in re.findall(r"(\d+) ms into the block's scan", keeper.log())
                ]
                m = json.loads(metrics.read_text())
            finally:
                keeper.stop(timeout=10)
                rpc.close()
    last = max(acted.values(), default=update_block)
    return {
        "accounts": n,
        "gas_limit": gas_limit,
        "setup_seconds": round(setup_s, 1),
        "liquidated": len(acted),
        "update_block": update_block,
        "blocks_after_update": dict(sorted(per_block.items())),
        "gas_used_per_block": {str(k): v for k, v in gas.items()},
        "max_blocks": max(blocks, default=None),
        "all_in_first_block": len(acted) == n and set(blocks) == {1},
        "wall_seconds_to_last": round(first_seen.get(last, sent_at) - seen_update, 2)
        if acted
        else None,
        "keeper_send_ms_into_scan_max": max(scan_ms, default=None),
        "keeper_tranches_made": m.get("tranches_made"),
        "keeper_gas_spent": m.get("gas_spent"),
        "log": str(work / "keeper.log"),
    }


def _keeper(work: Path, node_url: str, record_path: Path, metrics: Path) -> Any:
    """The keeper bot as a process of its own (TEST::3), on the benchmark's deployment."""
    from margincall.keeper.procs import BotProcess

    env = {"MARGINCALL_DEPLOYMENT": str(record_path), "MARGINCALL_KEEPER_METRICS": str(metrics)}
    return BotProcess("keeper", work / "keeper.log", node_url=node_url, account="TEST::3", env=env)


def _simulation(rpc: Any, project: Any, owner: Any, n: int, seed: int) -> Any:
    """A flash crash's simulator with `n` traders at 8-9x, all long, no reserves."""
    from margincall.sim.paths import flash_crash
    from margincall.sim.population import PopulationConfig
    from margincall.sim.setup import SimConfig
    from margincall.sim.simulate import Simulation

    population = PopulationConfig(
        traders=n,
        leverage=(8.0, 9.0),
        long_share=1.0,
        cross_share=0.0,
        reserve=(0.0, 0.0),
        lps=2,
        fund_seed=0.2,
    )
    config = SimConfig(scenario="flash_crash", seed=seed, population=population)
    return Simulation(rpc, project, owner, flash_crash(seed), config)


def _drop_txs(sim: Any) -> list:
    """One update that drops every market: each price transaction goes in the same block."""
    from margincall.sim.setup import Tx

    return [
        Tx(
            sim.population.oracle,
            sim.feeds[i],
            sim.feed_abi.encode("set_answer", sim.feed_answer(i, sim.path.start(m) * (1 - DROP))),
            "price",
            200_000,
        )
        for i, m in enumerate(sim.markets)
    ]


def _follow(
    sim: Any, rpc: Any, update_block: int, n: int, timeout: float, first_seen: dict[int, float]
) -> dict[str, int]:
    """account -> the block of its first `Liquidation` after the update, until all `n` are
    liquidated or `timeout` seconds pass; `first_seen`: when each block was first seen."""
    from margincall.sim.chain import hexint

    acted: dict[str, int] = {}
    deadline = time.monotonic() + timeout
    topic = _liquidation_topic(sim)
    while len(acted) < n and time.monotonic() < deadline:
        head = hexint(rpc.call("eth_blockNumber"))
        now = time.monotonic()
        for b in range(update_block + 1, head + 1):
            first_seen.setdefault(b, now)
        query = {"address": sim.engine, "fromBlock": hex(update_block), "toBlock": hex(head)}
        for log in rpc.call("eth_getLogs", {**query, "topics": [topic]}):
            account = "0x" + log["topics"][1][-40:]
            acted.setdefault(account.lower(), hexint(log["blockNumber"]))
        time.sleep(0.05)
    return acted


def _settle(metrics: Path, acted: int, seconds: float = 10.0) -> None:
    """Lets the keeper count its receipts: until its metrics show `acted` tranches."""
    settle = time.monotonic() + seconds
    while time.monotonic() < settle:
        try:
            if json.loads(metrics.read_text()).get("tranches_made", 0) >= acted:
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.2)


def _send(sim: Any, txs: list) -> list[tuple[str, Any]]:
    sim.send(txs)
    return [(h, tx) for h, tx in sim.pending.items() if tx in txs]


def _wait_receipts(rpc: Any, hashes: list[str], hexint: Any, timeout: float) -> tuple[int, float]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        receipts = rpc.batch([("eth_getTransactionReceipt", [h]) for h in hashes])
        if all(r is not None for r in receipts):
            blocks = {hexint(r["blockNumber"]) for r in receipts}
            if len(blocks) != 1:
                raise RuntimeError(f"the price updates landed in different blocks: {blocks}")
            return blocks.pop(), time.monotonic()
        time.sleep(0.02)
    raise RuntimeError("price update not mined")


def _wait_scanning(keeper: Any, metrics: Path, rpc: Any, hexint: Any, timeout: float = 60) -> None:
    target = hexint(rpc.call("eth_blockNumber")) + 1
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if json.loads(metrics.read_text())["block"] >= target:
                return
        except (OSError, ValueError, KeyError):
            pass
        if not keeper.running:
            raise RuntimeError(f"keeper died:\n{keeper.tail()}")
        time.sleep(0.1)
    raise RuntimeError("keeper not scanning")


def _liquidation_topic(sim: Any) -> str:
    return "0x" + sim.engine_abi.event_names["Liquidation"].topic.hex()


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| accounts | block gas limit | liquidated | blocks after the update (accounts) "
        "| wall time to the last | target |",
        "|---:|---:|---:|---|---:|---|",
    ]
    for r in results:
        spread = ", ".join(f"+{b}: {c}" for b, c in r["blocks_after_update"].items())
        met = "met" if r["all_in_first_block"] else f"missed: last in block +{r['max_blocks']}"
        lines.append(
            f"| {r['accounts']:,} | {r['gas_limit']:,} | {r['liquidated']:,} | {spread} "
            f"| {r['wall_seconds_to_last']} s | {met} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=1_000)
    parser.add_argument("--gas-limit", type=int, action="append")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    os.chdir(ROOT)
    limits = args.gas_limit or [30_000_000, 60_000_000, 100_000_000]
    results = [measure(args.accounts, g) for g in limits]
    print(table(results))
    for r in results:
        print(json.dumps({k: v for k, v in r.items() if k != "log"}))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    short = [r for r in results if r["liquidated"] < r["accounts"]]
    for r in short:
        print(
            f"incomplete: {r['liquidated']:,} of {r['accounts']:,} accounts liquidated within"
            f" the timeout at {r['gas_limit']:,} gas per block (keeper log: {r['log']})",
            file=sys.stderr,
        )
    return 1 if short else 0


if __name__ == "__main__":
    sys.exit(main())

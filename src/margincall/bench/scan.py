"""Keeper scan throughput: accounts per second through `check_margins` on a local Anvil.

    python scripts/bench_scan.py [--repeat 5] [--json out.json]

Starts an Anvil of its own (no step tracing), deploys the system, opens 10,000
accounts with one position each (the simulator's population, cross margin off)
and scans the first 1,000 and all 10,000 the way a keeper must: `check_margins`
in chunks of 500 (the engine's MAX_SCAN), every status decoded into the SDK's
`MarginStatus`. Ways measured:

- `sequential`: one eth_call per chunk, one after the other, fast decoder
  (`margincall.codec.decode_statuses`);
- `batched`: every chunk in one JSON-RPC batch (one HTTP request), fast decoder;
- `parallel`: the chunks spread over 2 threads, each with its own HTTP session;
- `batched, eth_abi`: the batched requests decoded by eth_abi's generic decoder;
- `Ape contract call`: `engine.check_margins(chunk)` through Ape (1,000 accounts only);
- `sdk`: `MarginEngineClient.statuses`, the keeper bot's scan: one `eth_call` per
  chunk through Ape's web3 and the same decoder (Ape's generic contract call and ABI
  decoding if the status layout were unknown).

Each figure is the median of `--repeat` full scans, wall clock, from the first
request to the last decoded status. `node only` is the same batched scan without
decoding (what Anvil itself takes). Prints a table; `bench.py` writes it into
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[3]  # the project (an editable install)
SIZES = (1_000, 10_000)
TARGET = 20_000  # accounts/s, PROTOCOL.md section 7
CHUNK = 500


def _timed(fn: Any, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _ways(
    sim: Any, rpc: Any, sessions: list, accts: list[str], with_sdk: bool, with_ape: bool
) -> list[tuple[str, Any]]:
    """Each way to scan `accts` (a name and a function), checked once: every way decodes
    the same `check_margins` calls."""
    from margincall.sdk import MarginEngineClient, chunks
    from margincall.sim.chain import decode_statuses

    n = len(accts)
    enc = sim.engine_abi.encode
    calls = [sim.eth_call(sim.engine, enc("check_margins", p)) for p in chunks(accts, CHUNK)]

    def sequential(calls: list = calls) -> list:
        res = []
        for c in calls:
            res.extend(decode_statuses(rpc.batch([c])[0], sim.names))
        return res

    def batched(calls: list = calls) -> list:
        res = []
        for data in rpc.batch(calls):
            res.extend(decode_statuses(data, sim.names))
        return res

    def generic(calls: list = calls) -> list:
        res = []
        for data in rpc.batch(calls):
            res.extend(sim.engine_abi.decode("check_margins", data)[0])
        return res

    def node_only(calls: list = calls) -> list:
        return rpc.batch(calls)

    def parallel(calls: list = calls) -> list:
        halves = [calls[0::2], calls[1::2]]

        def work(i: int) -> list:
            res = []
            for data in sessions[i].batch(halves[i]):
                res.extend(decode_statuses(data, sim.names))
            return res

        with ThreadPoolExecutor(2) as pool:
            return [s for part in pool.map(work, (0, 1)) for s in part]

    got = batched()
    assert len(got) == n and all(s.positions == 1 for s in got)
    ways = [
        ("sequential", sequential),
        ("batched", batched),
        ("parallel", parallel),
        ("batched, eth_abi's generic decoder", generic),
        ("node only (batched, no decoding)", node_only),
    ]
    if with_sdk:
        client = MarginEngineClient.from_system(sim.system)
        ways.append(
            (
                "sdk (MarginEngineClient.statuses)",
                lambda a=accts, c=client: c.statuses(a),
            )
        )
    if with_ape:
        engine = sim.system.engine
        ways.append(
            (
                "Ape contract call (engine.check_margins)",
                lambda a=accts, e=engine: [
                    st for p in chunks(a, CHUNK) for st in e.check_margins(p)
                ],
            )
        )
    return ways


def measure(
    repeat: int = 5, sizes: tuple[int, ...] = SIZES, sdk_limit: int = 10_000, ape_limit: int = 1_000
) -> dict:
    warnings.filterwarnings("ignore", message="Field 'import_remapping'")
    from ape import accounts, networks
    from ape.logging import logger

    from margincall.sim.chain import Anvil, Rpc
    from margincall.sim.paths import black_thursday
    from margincall.sim.population import PopulationConfig
    from margincall.sim.setup import SimConfig
    from margincall.sim.simulate import Simulation, load_project, machine

    logger.set_level("ERROR")
    n_max = max(sizes)
    config = SimConfig(population=PopulationConfig(traders=n_max, cross_share=0.0))
    out: dict[str, Any] = {"repeat": repeat, "chunk": CHUNK, "rows": [], **machine()}
    with Anvil(gas_limit=30_000_000) as anvil:
        choice = networks.parse_network_choice(
            "ethereum:local:foundry",
            provider_settings={"host": anvil.uri},
            disconnect_after=False,
            disconnect_on_exit=False,
        )
        with choice:
            rpc = Rpc(anvil.uri)
            owner = accounts.test_accounts[0]
            sim = Simulation(rpc, load_project(), owner, black_thursday(1), config)
            t = time.perf_counter()
            sim.setup()
            sim.restore()
            out["setup_seconds"] = round(time.perf_counter() - t, 1)
            everyone = [tr.address for tr in sim.population.traders]
            sessions = [Rpc(anvil.uri), Rpc(anvil.uri)]

            for n in sizes:
                accts = everyone[:n]
                ways = _ways(sim, rpc, sessions, accts, n <= sdk_limit, n <= ape_limit)
                for name, fn in ways:
                    fn()  # warm
                    seconds = _timed(fn, repeat)
                    out["rows"].append(
                        {
                            "accounts": n,
                            "way": name,
                            "seconds": round(seconds, 4),
                            "accounts_per_s": round(n / seconds),
                        }
                    )
            for s in sessions + [rpc]:
                s.close()
    return out


def markdown(result: dict) -> str:
    lines = [
        "| accounts | way | seconds (median of {r}) | accounts/s | target | status |".format(
            r=result["repeat"]
        ),
        "|---:|---|---:|---:|---:|---|",
    ]
    for row in result["rows"]:
        # reference rows: what the node alone takes, and the generic decoders
        node = row["way"].startswith(("node", "batched, eth_abi", "Ape"))
        rate = row["accounts_per_s"]
        status = "-" if node else ("ok" if rate >= TARGET else f"MISS by {TARGET - rate:,}")
        target = "-" if node else f"{TARGET:,}"
        lines.append(
            f"| {row['accounts']:,} | {row['way']} | {row['seconds']:.4f} | {rate:,} |"
            f" {target} | {status} |"
        )
    return "\n".join(lines)


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    result = measure(args.repeat)
    print(markdown(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(run())

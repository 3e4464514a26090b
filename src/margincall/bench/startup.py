"""Bot start-up time: from `silverback run <bot>` to "Startup complete" and to `/health` 200.

    python scripts/bench_startup.py [--runs 3] [--write]

Starts an Anvil of its own (`margincall.sim.chain.Anvil`), deploys the one-market local
system (`deploy_from_config`) and writes its record, then starts each bot `--runs` times
as a real process (`margincall.keeper.procs.BotProcess`, exactly as the tests and the demo
do; `MARGINCALL_METRICS_PORT=0`) and times, from the spawn: the ops endpoint's log line
(the runner is up), Silverback's "Startup complete" (the bot's own startup ran: the keeper
has rebuilt its book, the notifier opened its outbox and caught up), and the first 200
from `/health`. Prints a table (medians, and the range) and, with `--write`, puts it in
the `startup` block of docs/benchmarks.md. Other processes on the machine inflate these
times: the 1-minute load average is printed with them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[3]  # the project (an editable install)
DOC = ROOT / "docs" / "benchmarks.md"
BLOCK = "startup"
CONFIG: dict[str, Any] = {
    "collateral": {"mock": True, "decimals": 6},
    "markets": [
        {"name": "ETH-USD", "feed": "mock", "feed_decimals": 8, "price": "2000", "heartbeat": 3600,
         "imr": "0.10", "mmr": "0.05", "fee": "0.0005"},
    ],
}  # fmt: skip


def _health_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as reply:
            return reply.status == 200
    except (urllib.error.URLError, OSError):
        return False


def time_bot(bot: str, node_url: str, record: Path, work: Path, run: int) -> dict[str, float]:
    """One start of `bot`: seconds from the spawn to each milestone."""
    from margincall.keeper.procs import BotProcess

    env = {"MARGINCALL_DEPLOYMENT": str(record), "MARGINCALL_METRICS_PORT": "0"}
    if bot == "notifier":
        env["MARGINCALL_OUTBOX"] = str(work / f"outbox-{run}.sqlite")
    proc = BotProcess(
        bot,
        work / f"{bot}-{run}.log",
        node_url=node_url,
        account="TEST::3" if bot == "keeper" else None,
        env=env,
    )
    t0 = time.monotonic()
    proc.start()
    try:
        url = proc.wait_for(r"ops: /metrics and /health on (http://\S+)", 180).group(1)
        runner = time.monotonic() - t0
        proc.wait_ready(180)
        ready = time.monotonic() - t0
        deadline = time.monotonic() + 30
        while not _health_ok(url):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{bot}: /health not 200 within 30 s:\n{proc.tail()}")
            time.sleep(0.02)
        healthy = time.monotonic() - t0
    finally:
        proc.stop(timeout=5)
    return {"runner": runner, "ready": ready, "healthy": healthy}


def measure(runs: int) -> dict[str, list[dict[str, float]]]:
    warnings.filterwarnings("ignore", message="Field 'import_remapping'")
    from ape import accounts, chain, networks
    from ape.logging import logger

    from margincall.deploy.record import DeployConfig, deploy_from_config, write_record
    from margincall.sim.chain import Anvil
    from margincall.sim.simulate import load_project

    logger.set_level("ERROR")
    work = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    with Anvil() as anvil:
        choice = networks.parse_network_choice(
            "ethereum:local:foundry",
            provider_settings={"host": anvil.uri},
            disconnect_after=False,
            disconnect_on_exit=False,
        )
        with choice:
            config = DeployConfig.parse(CONFIG, source="bench/startup")
            owner = accounts.test_accounts[0]
            deployed = deploy_from_config(
                load_project(), owner, config, "ethereum:local:foundry", chain
            )
            record = write_record(deployed.record, work / "record.json")
            return {
                bot: [time_bot(bot, anvil.uri, record, work, i) for i in range(runs)]
                for bot in ("keeper", "notifier")
            }


def table(results: dict[str, list[dict[str, float]]], load: float) -> str:
    def cell(rows: list[dict[str, float]], key: str) -> str:
        values = [r[key] for r in rows]
        return f"{statistics.median(values):.1f} s ({min(values):.1f}-{max(values):.1f})"

    runs = len(next(iter(results.values())))
    lines = [
        f"Median of {runs} starts (range), from the spawn of `silverback run <bot>`; 1-minute"
        f" load average before the runs: {load:.2f} on {os.cpu_count()} cores.",
        "",
        "| bot | runner up (ops endpoint) | Startup complete | `/health` 200 |",
        "|---|---:|---:|---:|",
    ]
    for bot, rows in results.items():
        lines.append(
            f"| {bot} | {cell(rows, 'runner')} | {cell(rows, 'ready')} | {cell(rows, 'healthy')} |"
        )
    return "\n".join(lines)


def write_block(body: str, doc: Path = DOC) -> None:
    text = doc.read_text()
    begin, end = f"<!-- {BLOCK}:begin -->", f"<!-- {BLOCK}:end -->"
    new = (
        f"{begin}\n<!-- generated by scripts/bench_startup.py --write; edits inside this block"
        f" are overwritten -->\n\n{body.strip()}\n\n{end}"
    )
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + new + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + f"\n\n## Bot start-up\n\n{new}\n"
    doc.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args(argv)
    os.chdir(ROOT)
    load = os.getloadavg()[0]
    body = table(measure(args.runs), load)
    print(body)
    if args.write:
        write_block(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["main", "measure", "table", "time_bot"]

"""The dashboard with 500 accounts: first paint of the system page and how fast updates land.

    python scripts/bench_dashboard.py [--traders 500] [--loads 5] [--updates 10] [--write]

Starts an Anvil of its own, deploys the system and opens `--traders` accounts with one
position each (the simulator's population, `margincall.sim`), writes the deployment record,
starts `margincall dashboard` on it as a real process, and drives Debian's Chromium with
Playwright:

- first paint: `--loads` fresh page loads of the system page; the browser's own
  `first-contentful-paint` (Paint Timing API, from navigation start; the first load, which
  also pays for the browser's own start, is reported apart), the page's `domContentLoaded`,
  and the server's time to first byte;
- updates: `--updates` price updates, each a transaction mined in its own block; the time
  from the moment the node returned the receipt to the moment the page's DOM shows that
  block (a MutationObserver in the page, same machine clock), and how many blocks behind the
  chain the page was when it showed it (0: the update reached the page within its block).

Prints a markdown table; `--write` puts it into docs/benchmarks.md between the
`dashboard:begin` and `dashboard:end` markers. Figures are medians and maxima of this run.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path.cwd()  # run from the project root (docs/benchmarks.md)
DOCS = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- dashboard:begin -->", "<!-- dashboard:end -->"
FLAGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
OBSERVER = """
window.__updates = [];
new MutationObserver(() => {
  const el = document.querySelector('[data-testid=block]');
  const m = el && el.textContent.match(/block (\\d+)/);
  if (m) window.__updates.push([Number(m[1]), Date.now()]);
}).observe(document.getElementById('live'), { childList: true, subtree: true });
"""


def measure(traders: int, loads: int, updates: int) -> dict:
    warnings.filterwarnings("ignore", message="Field 'import_remapping'")
    from ape import accounts, chain, networks
    from ape.logging import logger
    from playwright.sync_api import sync_playwright

    from margincall.deploy.record import record_of, write_record
    from margincall.sim import SimConfig, Simulation
    from margincall.sim.chain import Anvil, Rpc
    from margincall.sim.paths import black_thursday
    from margincall.sim.population import PopulationConfig
    from margincall.sim.simulate import load_project
    from margincall.web.process import DashboardProcess

    logger.set_level("ERROR")
    out: dict = {"traders": traders, "load_before": os.getloadavg()[0]}
    config = SimConfig(population=PopulationConfig(traders=traders, cross_share=0.0))
    with Anvil(gas_limit=30_000_000) as anvil:
        choice = networks.parse_network_choice(
            "ethereum:local:foundry",
            provider_settings={"host": anvil.uri},
            disconnect_after=False,
            disconnect_on_exit=False,
        )
        with choice:
            owner = accounts.test_accounts[0]
            sim = Simulation(Rpc(anvil.uri), load_project(), owner, black_thursday(1), config)
            sim.setup()
            sim.restore()  # back to automine: one block per transaction
            record = record_of(sim.system, "ethereum:local:foundry", chain, owner)
            tmp = Path(tempfile.mkdtemp(prefix="bench-dashboard-"))
            path = write_record(record, tmp / "record.json")
            dashboard = DashboardProcess(path, anvil.uri, tmp / "dashboard.log").start()
            try:
                dashboard.wait_ready()
                out.update(_browse(sync_playwright, dashboard.url, sim, loads, updates, traders))
            finally:
                dashboard.stop()
    out["load_after"] = os.getloadavg()[0]
    return out


def _browse(sync_playwright, url: str, sim, loads: int, updates: int, traders: int) -> dict:
    from ape import chain

    out: dict = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=FLAGS)
        try:
            fcp, dcl, ttfb = [], [], []
            for _ in range(loads):
                page = browser.new_page()
                page.goto(url + "/", wait_until="load")
                page.wait_for_function(
                    "performance.getEntriesByName('first-contentful-paint').length > 0"
                )
                fcp.append(
                    page.evaluate(
                        "performance.getEntriesByName('first-contentful-paint')[0].startTime"
                    )
                )
                nav = "performance.getEntriesByType('navigation')[0].domContentLoadedEventEnd"
                dcl.append(page.evaluate(nav))
                ttfb.append(
                    page.evaluate(
                        "(e => e.responseStart - e.requestStart)"
                        "(performance.getEntriesByType('navigation')[0])"
                    )
                )
                accounts_shown = int(page.get_by_test_id("accounts").inner_text())
                page.close()
            if accounts_shown != traders:
                raise RuntimeError(f"the page shows {accounts_shown} accounts, not {traders}")
            page = browser.new_page()
            page.goto(url + "/", wait_until="load")
            page.evaluate(OBSERVER)
            latency, behind = [], []
            for i in range(updates):
                price = 2_000 - 10 * (i + 1)
                sim.system.set_price(0, price)
                mined = time.time() * 1000
                number = int(chain.blocks.head.number)
                page.wait_for_function(
                    f"window.__updates.some(u => u[0] >= {number})", timeout=30_000
                )
                shown = page.evaluate(f"window.__updates.find(u => u[0] >= {number})")
                latency.append(shown[1] - mined)
                behind.append(int(chain.blocks.head.number) - number)
                time.sleep(0.5)
            page.close()
        finally:
            browser.close()
    out.update(
        fcp_first=fcp[0],
        fcp_median=statistics.median(fcp[1:] or fcp),
        fcp_max=max(fcp[1:] or fcp),
        ttfb_median=statistics.median(ttfb),
        dcl_median=statistics.median(dcl),
        update_median=statistics.median(latency),
        update_max=max(latency),
        blocks_behind_max=max(behind),
        loads=loads,
        updates=updates,
    )
    return out


def table(r: dict) -> str:
    return "\n".join(
        [
            f"Dashboard with {r['traders']} accounts (`python scripts/bench_dashboard.py "
            f"--traders {r['traders']} --write`; {platform.machine()}, "
            f"{os.cpu_count()} cores, Debian Chromium headless; 1-minute load average "
            f"{r['load_before']:.1f} before, {r['load_after']:.1f} after: the machine is "
            "shared, and browser-side figures grow with its load):",
            "",
            "| what | median | max | target |",
            "|---|---|---|---|",
            f"| system page, first contentful paint, first load after the browser starts | "
            f"{r['fcp_first']:.0f} ms | | < 1,000 ms |",
            f"| system page, first contentful paint, next {r['loads'] - 1} loads | "
            f"{r['fcp_median']:.0f} ms | {r['fcp_max']:.0f} ms | < 1,000 ms |",
            f"| server: request to first byte of the system page | {r['ttfb_median']:.0f} ms | | |",
            f"| system page, DOM content loaded | {r['dcl_median']:.0f} ms | | |",
            f"| price update: receipt to the page showing its block ({r['updates']} updates) | "
            f"{r['update_median']:.0f} ms | {r['update_max']:.0f} ms | within one block |",
            f"| blocks the page was behind when it showed the update | | "
            f"{r['blocks_behind_max']} | 0 |",
        ]
    )


def write(text: str) -> None:
    doc = DOCS.read_text()
    block = f"{BEGIN}\n{text}\n{END}"
    if BEGIN in doc:
        doc = doc[: doc.index(BEGIN)] + block + doc[doc.index(END) + len(END) :]
    else:
        doc = doc.rstrip() + "\n\n## Dashboard\n\n" + block + "\n"
    DOCS.write_text(doc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--traders", type=int, default=500)
    ap.add_argument("--loads", type=int, default=5)
    ap.add_argument("--updates", type=int, default=10)
    ap.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = ap.parse_args()
    text = table(measure(args.traders, args.loads, args.updates))
    print(text)
    if args.write:
        write(text)


if __name__ == "__main__":
    main()

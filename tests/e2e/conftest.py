"""Shared end-to-end fixtures: a deployed system with its record, a webhook receiver, and
bots run as real processes against the test session's Anvil.

- `deployed` (module): a config-driven deployment (`deploy_from_config`, one mock ETH-USD
  market, 6-decimal collateral, funded pool) with its record written to a file, as
  `ape run deploy` would; bots find the system from `deployed.record_path`.
- `webhook` (function): a local HTTP receiver (`margincall.notify.webhook_sink.WebhookServer`) that
  records every POST;
  `stop()`/`start()` simulate an outage on the same port.
- `bot_factory` (function): `bot_factory("notifier", MARGINCALL_X=...)` starts
  `silverback run <bot>` attached to this session's Anvil and returns the `BotProcess`;
  every process it started is stopped at teardown (bounded SIGINT, SIGTERM, then SIGKILL),
  whatever the test's outcome.

The bots share the session chain with the other tests: nothing here snapshots or reverts
around a running bot (Ape's own per-test isolation reverts only after the bots are stopped,
since `bot_factory` is torn down first), and Anvil stays in automine mode.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from margincall.deploy.record import (
    DeployConfig,
    DeploymentRecord,
    deploy_from_config,
    write_record,
)
from margincall.keeper.procs import BotProcess, stop_all
from margincall.notify.webhook_sink import WebhookServer
from tests.utils.helpers import fund_lp, mint_and_approve, open_position


def pytest_configure(config):
    config.addinivalue_line("markers", "e2e: runs bots as real processes against Anvil")


# --- deployment ---------------------------------------------------------------------------

E2E_CONFIG: dict[str, Any] = {
    "collateral": {"mock": True, "decimals": 6},
    "markets": [
        {
            "name": "ETH-USD",
            "feed": "mock",
            "feed_decimals": 8,
            "price": "2000",
            # Anvil's clock survives the other tests' reverts: keep prices fresh
            "heartbeat": 30 * 86_400,
            "imr": "0.10",
            "mmr": "0.05",
            "fee": "0.0005",
        }
    ],
}


@dataclass
class Deployed:
    """A deployed system, its record and the record's file."""

    record: DeploymentRecord
    record_path: Path
    system: Any  # margincall.deploy.System (feeds, oracles, set_price, unit)
    client: Any  # margincall.sdk.MarginEngineClient

    @property
    def engine(self) -> Any:
        return self.system.engine

    def set_price(self, price: float, market_id: int = 0) -> Any:
        """Posts a new round on the market's mock feed (whole collateral units)."""
        return self.system.set_price(market_id, price)

    def deposit(self, who: Any, whole_tokens: float, account: Any = None) -> Any:
        """Mints, approves and deposits `whole_tokens` for `account` (default: `who`)."""
        amount = mint_and_approve(self.system, who, whole_tokens)
        return self.engine.deposit(amount, (account or who).address, sender=who)

    def open(self, who: Any, size: float, market_id: int = 0) -> Any:
        """Trades `size` base units (negative: short) at the oracle price, 5% slippage."""
        return open_position(self.system, who, market_id, size)


@pytest.fixture(scope="module")
def deployed(project, chain, owner, lp, tmp_path_factory) -> Deployed:
    config = DeployConfig.parse(E2E_CONFIG, source="tests/e2e")
    result = deploy_from_config(project, owner, config, chain.provider.network_choice, chain)
    fund_lp(result.system, lp, 1_000_000)
    path = write_record(result.record, tmp_path_factory.mktemp("deployment") / "record.json")
    return Deployed(result.record, path, result.system, result.record.client(project))


# --- webhook receiver ---------------------------------------------------------------------


@pytest.fixture
def webhook() -> Iterator[WebhookServer]:
    server = WebhookServer().start()
    try:
        yield server
    finally:
        server.stop()


# --- bot processes ------------------------------------------------------------------------


@pytest.fixture
def bot_factory(chain, tmp_path) -> Iterator[Callable[..., BotProcess]]:
    """`bot_factory(bot, name=None, **env)`: a started `BotProcess` on this session's Anvil.

    `env` values are stringified; `name` is Silverback's bot name (default: a fresh
    `margincall-<bot>-<random>` from `BotProcess`). Each process logs to
    `tmp_path/<name or bot>-<n>.log`. All processes are stopped at teardown, even when
    the test failed.
    """
    started: list[BotProcess] = []

    def start(bot: str, name: str | None = None, **env: Any) -> BotProcess:
        proc = BotProcess(
            bot,
            tmp_path / f"{name or bot}-{len(started)}.log",
            node_url=chain.provider.uri,
            env={k: str(v) for k, v in env.items()},
            name=name,
        )
        started.append(proc)
        return proc.start()

    try:
        yield start
    finally:
        stop_all(started, timeout=5.0)

"""margincall notifier: margin calls, cures, liquidations, bad debt and early warnings.

    silverback run notifier --network ethereum:local:foundry \
        --runner margincall.keeper.runtime:ResilientRunner

Settings come from `MARGINCALL_*` environment variables (docs/bots.md,
`margincall.notify.ENV_VARS`), checked at startup. The bot reads the engine's
`MarginCall`, `MarginCallCleared`, `Liquidation`, `BadDebt` and
`PositionChanged` logs by block range (one `eth_getLogs` per chunk, from the
outbox's cursor, so a restart resumes exactly), checks the open accounts'
ratios with the batched `check_margins` for early warnings, and enqueues every
message in an on-disk outbox (and logs it); a courier thread delivers the
outbox to the webhook on its own retry schedule, independent of new blocks.
All decisions live in `margincall.notify`; this file only wires them to
Silverback.
"""

from __future__ import annotations

import asyncio
import os

from ape import chain, project
from ape.logging import logger
from silverback import SilverbackBot

from margincall.deploy.record import read_record, record_path
from margincall.notify import (
    ApeSource,
    Context,
    Courier,
    Notifier,
    NotifierConfig,
    Outbox,
    Webhook,
    export_prometheus,
)
from margincall.sdk import Clients
from margincall.sdk.settlement import SettlementClient

bot = SilverbackBot()
_notifier: list[Notifier] = []  # set at startup
_courier: list[Courier] = []  # the delivery thread, started at startup
_errors = [0]  # blocks whose reading failed


def _setup() -> Notifier:
    """Checks the settings and the deployment against the chain; opens the outbox."""
    network = f"{bot.identifier.ecosystem}:{bot.identifier.network}"
    config = NotifierConfig.from_env(os.environ, default_deployment=record_path(network))
    record = read_record(config.deployment)
    chain_id = int(chain.chain_id)
    if record.chain_id != chain_id:
        raise RuntimeError(
            f"{config.deployment} is a deployment on chain {record.chain_id}, "
            f"but the node is chain {chain_id}"
        )
    creation = chain.provider.get_block(record.block)
    outbox_path = config.outbox_path(record)
    outbox = Outbox(outbox_path, config.retry_base, config.retry_max)
    outbox.bind(
        {
            "chain_id": str(chain_id),
            "engine": record.engine,
            # a new local chain can repeat the addresses, never this hash
            "engine_block_hash": creation.hash.hex() if creation.hash else "",
        }
    )
    # fixed when the outbox is made: a restart after downtime must not skip what it missed
    wanted = config.first_notified_block(record.block, int(chain.blocks.head.number))
    notify_from = int(outbox.meta_default("notify_from", str(wanted)))
    if config.notify_from.isdigit() and notify_from != wanted:
        logger.warning(
            f"notifier: MARGINCALL_NOTIFY_FROM={wanted} ignored: this outbox notifies from "
            f"block {notify_from} (delete it to start over)"
        )
    ctx = Context.from_record(record)
    policy = config.policy
    sender = Webhook(config.webhook_url, config.webhook_timeout) if config.webhook_url else None
    logger.info(
        f"notifier: engine {record.engine} on chain {chain_id} from block {record.block}; "
        f"outbox {outbox_path} (cursor {outbox.cursor}, {outbox.counts()['pending']} pending); "
        f"webhook {config.webhook_url or 'none (log only)'}; early warning "
        + (f"under {policy.warn_ratio / 1e18:g}" if policy else "off")
        + f"; {config.confirmations} confirmations; events notified from block {notify_from}"
    )
    engine = Clients.from_record(record, project).engine
    return Notifier(
        ApeSource(engine, SettlementClient(engine.orders.book)),  # engine and order events
        outbox,
        ctx,
        start_block=record.block,
        sender=sender,
        policy=policy,
        confirmations=config.confirmations,
        chunk=config.log_chunk,
        budget=config.delivery_budget,
        log=logger,
        notify_from=notify_from,
    )


def _tick(head: int, timestamp: int | None) -> None:
    """Reads and enqueues (never raises); the courier thread delivers."""
    try:
        report = _notifier[0].tick(head, timestamp, deliver=False)
        _errors[0] += len(report.errors)
        if report.enqueued:
            _courier[0].wake()
            counts = _notifier[0].outbox.counts()
            logger.info(
                f"notifier: block {head}: read to {report.read_to}, "
                f"{len(report.enqueued)} new, {counts['pending']} pending"
            )
    except Exception as err:  # noqa: BLE001 - three raises and Silverback halts the bot
        _errors[0] += 1
        logger.error(f"notifier: block {head}: {type(err).__name__}: {err}")


@bot.on_startup()
async def startup(startup_state):
    """Bad settings stop the bot here, with the reason; then catches up from the cursor."""
    notifier = await asyncio.to_thread(_setup)
    _notifier.append(notifier)
    _courier.append(Courier(notifier).start())  # delivers the backlog at once
    export_prometheus(notifier, _courier[0], lambda: _errors[0])  # /metrics, /health
    head = await asyncio.to_thread(lambda: chain.blocks.head)
    await asyncio.to_thread(_tick, int(head.number), int(head.timestamp))
    logger.success(f"notifier: caught up to block {notifier.cursor}")


@bot.on_(chain.blocks)
async def on_block(block):
    """Reads the new logs and scans for early warnings; never raises (errors are logged and
    retried on the next block, so Silverback never halts the bot)."""
    if _notifier:
        await asyncio.to_thread(_tick, int(block.number), int(block.timestamp))


@bot.on_shutdown()
async def shutdown():
    if _courier:
        await asyncio.to_thread(_courier[0].stop, 10.0)
    if _notifier:
        counts = _notifier[0].outbox.counts()
        logger.info(f"notifier: stopping with {counts['pending']} messages pending")
        _notifier[0].outbox.close()

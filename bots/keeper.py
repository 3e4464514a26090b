"""margincall keeper bot (Silverback).

Run from the project root, against any Ape network (docs/bots.md):

    silverback run keeper --network ethereum:local:foundry \
        --runner margincall.keeper.runtime:ResilientRunner --account TEST::3

or `margincall keeper --deployment deployments/ethereum-local.json --account TEST::3`,
which sets the same options. Settings come from `MARGINCALL_*` environment variables
(`margincall.keeper.config.KeeperConfig.from_env`): the deployment record is required, the rest
(shard, profit margin, batch sizes, metrics file) have defaults.

The bot is a thin shell: `margincall.keeper.bot.Keeper` does the work, and its decisions are
the pure functions of `margincall.keeper.logic`.
"""

from ape import chain, project
from ape.logging import logger
from silverback import SilverbackBot

from margincall.deploy.record import read_record
from margincall.keeper.bot import Keeper
from margincall.keeper.config import KeeperConfig
from margincall.keeper.metrics import export_prometheus
from margincall.keeper.tx import TxSender
from margincall.sdk import Clients
from margincall.sdk.settlement import SettlementClient

bot = SilverbackBot()


@bot.on_startup()
def start(startup_state):
    config = KeeperConfig.from_env()
    record = read_record(config.deployment)
    if int(record.chain_id) != int(chain.chain_id):
        raise RuntimeError(
            f"{config.deployment} is for chain {record.chain_id}, but the node is chain"
            f" {chain.chain_id}"
        )
    if bot.signer is None:
        raise RuntimeError("the keeper needs an account to send from: pass --account")
    clients = Clients.from_record(record, project)
    sender = TxSender(
        bot.signer,
        chain.provider,
        stale_blocks=config.stale_blocks,
        replace_after=config.replace_after,
    )
    book = SettlementClient(clients.engine.orders.book)  # the keeper settles orders too
    keeper = Keeper(clients.engine, record, sender, config, chain.provider, book)
    keeper.start()
    bot.state.keeper = keeper
    export_prometheus(keeper.snapshot, record.collateral_decimals)  # /metrics, /health


@bot.on_(chain.blocks)
def scan(block):
    keeper: Keeper = bot.state.keeper
    try:
        keeper.on_block(
            int(block.number),
            int(block.timestamp),
            base_fee=int(getattr(block, "base_fee", 0) or 0),
            gas_limit=int(block.gas_limit) if getattr(block, "gas_limit", None) else None,
        )
    except Exception as err:  # noqa: BLE001 - node and RPC errors: the next block starts over
        keeper.state.rpc_errors += 1
        logger.warning(
            f"block {block.number}: scan failed ({type(err).__name__}: {err});"
            " the next block starts over"
        )
        raise_if_fatal(err)


# Errors that no node response can cause: a bug in this code. Anything else (a refused
# connection, a JSON-RPC error, a malformed or truncated response, which can surface as a
# KeyError, TypeError, AttributeError or ValueError while it is decoded) must never stop a
# keeper. A fatal error reaches Silverback, which halts the bot after more than 3 failed
# tasks in a row (its `max_exceptions`); one fatal error alone is only logged there.
FATAL_ERRORS: tuple[type[BaseException], ...] = (NameError, ImportError, SyntaxError)


def raise_if_fatal(err: Exception) -> None:
    """Re-raises programming errors (`FATAL_ERRORS`); node and RPC errors are swallowed."""
    if isinstance(err, FATAL_ERRORS):
        raise err


@bot.on_shutdown()
def stop():
    keeper = bot.state.get("keeper") if hasattr(bot.state, "get") else None
    if keeper is not None:
        keeper.write_metrics()
        logger.info(f"keeper stopped: {keeper.snapshot()}")

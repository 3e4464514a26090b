"""A Silverback runner that survives the node going away, and reacts fast to a new head.

Silverback's `WebsocketRunner` exits when its websocket drops, and its
`PollingRunner` relies on Ape's block iterator, which raises on the first
RPC error. A keeper must outlive a node restart or a network blip, so the
margincall bots run under `ResilientRunner` (`silverback run keeper --runner
margincall.keeper.runtime:ResilientRunner`, which `margincall keeper` and
`margincall notifier` pass for you):

- it polls the head over HTTP every `MARGINCALL_POLL_INTERVAL` seconds
  (default 0.05 s), so it needs no `block_time` in the network config; right
  after a block handler returns it polls again at once (a slow handler may
  have let the next block arrive);
- a failed head poll (the node unreachable, an RPC error) is logged and
  retried with exponential backoff (0.25 s, doubling, capped at
  `MARGINCALL_MAX_BACKOFF`, default 2 s); the bot never exits because the
  node is unreachable;
- block handlers run one at a time, always on the newest head: when a
  handler takes longer than a block, the blocks it missed are not queued up
  (the handler reads the latest state anyway), and the number of blocks
  skipped is logged at debug level;
- it waits for a handler's result by polling taskiq's in-memory result
  backend every `RESULT_POLL` (5 ms) instead of taskiq's default 0.2 s, which
  otherwise adds up to 0.2 s between the end of one block's work and the
  next head poll;
- `head_seen(number)` tells a handler when the runner first saw its head
  (`time.monotonic()`), for latency logs.

Errors raised by a handler: Silverback 0.7.38's `run_task` does not raise
them; it logs them, counts them, and halts the bot once more than
`max_exceptions` (3) tasks in a row have failed. The margincall handlers
therefore catch node and RPC errors themselves (they log and count them, and
the next block is handled from scratch) and let only programming errors
through (`bots/keeper.py`, `raise_if_fatal`). A failed block is not retried
as such: the next head is. The `except` around `run_task` below only sees
failures of the dispatch itself (the broker), and retries after a backoff.

Operations (`margincall.ops`, docs/bots.md): before the bot's own startup the runner
sets `MARGINCALL_RPC_TIMEOUT` on every web3 call (a frozen node fails a call instead of
hanging it) and checks the deployment record against the node (a stale record stops the
bot with exit code 3 and one line, no traceback); then a watchdog thread probes the node
and serves `/metrics` and `/health`. A fatal fault (a reset chain, a changed chain id, a
missing engine) shuts the bot down and exits with code 3 (`BotStopped`).

Event-log handlers are not used by the margincall bots (they read logs by
block range, which survives restarts); the inherited polling ones are kept.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import OrderedDict
from typing import Any

import click
from ape.logging import logger
from silverback.exceptions import Halt
from silverback.runner import PollingRunner

from margincall import ops as _ops
from margincall.deploy.record import RecordError, read_record, record_path
from margincall.ops.quiet import quiet_log, quiet_warnings
from margincall.ops.rpc import apply_rpc_timeout

quiet_warnings()  # start-up noise we know to be harmless (margincall.ops.quiet)
quiet_log(logger._logger)

RESULT_POLL = 0.005  # seconds between checks of a task's result (taskiq's default: 0.2)
_SEEN: OrderedDict[int, float] = OrderedDict()  # head number -> monotonic time first seen
_SEEN_KEEP = 64


def head_seen(number: int) -> float | None:
    """When this process's runner first saw head `number` (`time.monotonic()`), if it did."""
    return _SEEN.get(number)


def _mark_seen(number: int) -> None:
    if number not in _SEEN:
        _SEEN[number] = time.monotonic()
        while len(_SEEN) > _SEEN_KEEP:
            _SEEN.popitem(last=False)


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    try:
        value = float(raw) if raw else default
    except ValueError as err:
        raise ValueError(f"{name} must be a number of seconds, not {raw!r}") from err
    if value <= 0:
        raise ValueError(f"{name} must be positive, not {raw!r}")
    return value


class Backoff:
    """Exponential backoff: `next()` gives the delay before the next retry."""

    def __init__(self, first: float = 0.25, cap: float = 4.0):
        if not 0 < first <= cap:
            raise ValueError("backoff needs 0 < first <= cap")
        self.first = first
        self.cap = cap
        self.delay = first
        self.failures = 0

    def next(self) -> float:
        delay = self.delay
        self.failures += 1
        self.delay = min(self.delay * 2, self.cap)
        return delay

    def reset(self) -> None:
        self.delay = self.first
        self.failures = 0


class _QuickResult:
    """A kicked taskiq task whose `wait_result` checks every `interval` seconds."""

    def __init__(self, task: Any, interval: float):
        self._task = task
        self._interval = interval

    async def wait_result(
        self, check_interval: float | None = None, timeout: float = -1.0, with_logs: bool = False
    ) -> Any:
        return await self._task.wait_result(
            check_interval=self._interval, timeout=timeout, with_logs=with_logs
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self._task, name)


class _QuickKicker:
    """A taskiq decorated task whose `kiq()` returns a `_QuickResult`."""

    def __init__(self, task: Any, interval: float):
        self._task = task
        self._interval = interval

    async def kiq(self, *args: Any, **kwargs: Any) -> _QuickResult:
        return _QuickResult(await self._task.kiq(*args, **kwargs), self._interval)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._task, name)


class BotStopped(click.ClickException):
    """The bot stopped on a fault of its chain (or a bad operations setting): Silverback's
    command prints `Error: <message>` and exits with `exit_code`, without a traceback."""

    def __init__(self, message: str, exit_code: int = _ops.FATAL_EXIT):
        super().__init__(message)
        self.exit_code = exit_code


class ResilientRunner(PollingRunner):
    """HTTP polling runner: newest head only, handlers serialised, head-poll errors retried."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.poll_interval = _env_float("MARGINCALL_POLL_INTERVAL", 0.05)
        self.max_backoff = _env_float("MARGINCALL_MAX_BACKOFF", 2.0)
        logger.info(
            f"polling the head over HTTP every {self.poll_interval:g} s"
            " (MARGINCALL_POLL_INTERVAL), newest head only"
        )
        try:
            self.ops = _ops.install(_ops.Ops.from_env(self.provider.http_uri, logger))
        except _ops.OpsConfigError as err:
            raise BotStopped(str(err), exit_code=2) from None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _expected(self) -> tuple[_ops.Expect, str] | None:
        """The chain the deployment record describes (None: no readable record; the bot's
        own startup reports that)."""
        network = self.provider.network
        path = os.environ.get("MARGINCALL_DEPLOYMENT") or str(
            record_path(f"{network.ecosystem.name}:{network.name}")
        )
        try:
            record = read_record(path)
        except (RecordError, ValueError, KeyError, TypeError):
            return None
        return _ops.Expect(int(record.chain_id), str(record.engine), int(record.block)), path

    async def startup(self):
        apply_rpc_timeout(self.provider.web3, self.ops.settings.rpc_timeout)
        expected = self._expected()
        if expected is not None:
            try:
                await asyncio.to_thread(self.ops.preflight, *expected)
            except _ops.ChainFault as err:
                raise BotStopped(str(err)) from None
        try:
            self.ops.start(on_fatal=self._on_fatal)
        except _ops.OpsConfigError as err:
            raise BotStopped(str(err), exit_code=2) from None
        return await super().startup()

    def _on_fatal(self, event: _ops.Event) -> None:  # the watchdog's thread
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.shutdown_event.set)

    async def run(self):
        self._loop = asyncio.get_running_loop()
        try:
            await super().run()
        finally:
            self.ops.stop()
        if self.ops.fatal is not None:
            raise BotStopped(f"stopped: {self.ops.fatal.message}")

    def get_task(self, task_name: str) -> Any:
        # Silverback's run_task and run_system_task await `kiq(...).wait_result()`
        return _QuickKicker(super().get_task(task_name), RESULT_POLL)

    def _head(self):
        return self.provider.get_block("latest")

    async def _block_task(self, task_data) -> None:
        backoff = Backoff(cap=self.max_backoff)
        last: int | None = None
        down_since: float | None = None
        while True:
            try:
                block = await asyncio.to_thread(self._head)
            except Exception as err:  # noqa: BLE001 - any RPC failure: retry
                if down_since is None:
                    down_since = time.monotonic()
                    logger.warning(f"node unreachable ({type(err).__name__}: {err}); retrying")
                await asyncio.sleep(backoff.next())
                continue
            if down_since is not None:
                logger.success(
                    f"node reachable again after {time.monotonic() - down_since:.1f} s"
                    f" ({backoff.failures} failed polls)"
                )
                down_since = None
            backoff.reset()
            if self.ops.fatal is not None:  # stopping: nothing more on this chain
                await asyncio.sleep(self.poll_interval)
                continue
            if last is None or block.number > last:
                _mark_seen(int(block.number))
                if last is not None and block.number > last + 1:
                    logger.debug(f"skipped {block.number - last - 1} blocks while busy")
                try:
                    # handler errors do not come out here: Silverback counts them (above)
                    await self.run_task(task_data, block)
                except Halt:
                    raise
                except Exception as err:  # noqa: BLE001 - the dispatch itself failed: retry
                    logger.warning(f"block {block.number}: {type(err).__name__}: {err}; retrying")
                    await asyncio.sleep(backoff.next())
                    continue
                last = block.number
                continue  # the handler took time: look for the next head at once
            await asyncio.sleep(self.poll_interval)


__all__ = ["Backoff", "BotStopped", "ResilientRunner", "head_seen"]

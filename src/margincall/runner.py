"""A Silverback runner that survives the node going away.

Silverback's `WebsocketRunner` exits when its websocket drops, and its
`PollingRunner` relies on Ape's block iterator, which raises on the first
RPC error. A keeper must outlive a node restart or a network blip, so the
margincall bots run under `ResilientRunner` (`silverback run keeper --runner
margincall.runner:ResilientRunner`, which `margincall keeper` and
`margincall notifier` pass for you):

- it polls the head over HTTP every `MARGINCALL_POLL_INTERVAL` seconds
  (default 0.2 s), so it needs no `block_time` in the network config;
- every RPC error is logged and retried with exponential backoff (0.25 s,
  doubling, capped at `MARGINCALL_MAX_BACKOFF`, default 2 s); the bot never
  exits because the node is unreachable;
- block handlers run one at a time, always on the newest head: when a
  handler takes longer than a block, the blocks it missed are not queued up
  (the handler reads the latest state anyway), and the number of blocks
  skipped is logged at debug level.

Event-log handlers are not used by the margincall bots (they read logs by
block range, which survives restarts); the inherited polling ones are kept.
"""

from __future__ import annotations

import asyncio
import os
import time

from ape.logging import logger
from silverback.exceptions import Halt
from silverback.runner import PollingRunner


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


class ResilientRunner(PollingRunner):
    """HTTP polling runner: newest head only, handlers serialised, RPC errors retried."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.poll_interval = _env_float("MARGINCALL_POLL_INTERVAL", 0.2)
        self.max_backoff = _env_float("MARGINCALL_MAX_BACKOFF", 2.0)

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
            if last is None or block.number > last:
                if last is not None and block.number > last + 1:
                    logger.debug(f"skipped {block.number - last - 1} blocks while busy")
                try:
                    await self.run_task(task_data, block)
                except Halt:
                    raise
                except Exception as err:  # noqa: BLE001 - the node went away mid-task: retry
                    logger.warning(f"block {block.number}: {type(err).__name__}: {err}; retrying")
                    await asyncio.sleep(backoff.next())
                    continue
                last = block.number
            await asyncio.sleep(self.poll_interval)


__all__ = ["Backoff", "ResilientRunner"]

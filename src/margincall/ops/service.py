"""`Ops`: the watchdog thread, the `/metrics` + `/health` server, and the bot's registration.

The bots' runner (`margincall.keeper.runtime.ResilientRunner`) makes one `Ops` per process
(`Ops.from_env`), installs it (`install`), checks the deployment record against the node
before the bot starts (`preflight`), then `start`s it. The bot registers its snapshot at
startup with `register_bot` (a no-op when no `Ops` runs, e.g. under another runner).

The watchdog thread probes the node every `MARGINCALL_WATCH_INTERVAL` seconds
(`margincall.ops.probe`), feeds `Watch`, logs every fault raised and cleared, and calls
`on_fatal` once on a fatal fault (a reset chain, a changed chain id, a missing engine).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from prometheus_client.registry import CollectorRegistry

from margincall.ops.exporter import BotCollector, BotView, Series
from margincall.ops.health import Event, Expect, Fault, Watch
from margincall.ops.probe import probe
from margincall.ops.server import OpsServer
from margincall.ops.settings import OpsConfigError, OpsSettings

FATAL_EXIT = 3  # the exit code of a bot stopped by a fatal fault
FATAL_HOLD = 1.0  # seconds /health keeps answering 503 with the reason before the stop


class ChainFault(RuntimeError):
    """The chain is not the one the deployment record describes."""


class Ops:
    def __init__(self, settings: OpsSettings, url: str, log: Any, bot: str = "bot"):
        self.settings = settings
        self.url = url
        self.log = log
        self.bot = bot
        self.watch = Watch(timeout=settings.rpc_timeout, reset_depth=settings.reset_depth)
        self.view: BotView | None = None
        self.server: OpsServer | None = None
        self.fatal: Event | None = None
        self._on_fatal: Callable[[Event], None] | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(BotCollector(bot, self.watch, lambda: self.view))

    @classmethod
    def from_env(cls, url: str, log: Any, bot: str = "bot") -> Ops:
        return cls(OpsSettings.from_env(), url, log, bot)

    # --- before the bot starts ---

    def preflight(self, expect: Expect, source: str) -> None:
        """Raises `ChainFault` when the node is not the chain of `expect` (the record at
        `source`): another chain id, no engine code, the creation block missing. A node
        that does not answer is left to the watchdog (and logged by it)."""
        self.watch.expect = expect
        found = probe(self.url, self.settings.rpc_timeout, expect)
        if not found.ok:
            return
        reasons = []
        if found.chain_id != expect.chain_id:
            reasons.append(f"the node is chain {found.chain_id}, the record is for chain")
            reasons[-1] += f" {expect.chain_id}"
        if found.has_code is False:
            reasons.append(f"no code at the engine {expect.engine}")
        if found.anchor_hash == "":
            reasons.append(
                f"the engine's creation block {expect.anchor_block} is past the head {found.head}"
            )
        if reasons:
            raise ChainFault(
                f"stale deployment record {source}: {'; '.join(reasons)}. The chain was reset"
                " or the record is for another chain: deploy again (`ape run deploy`) or pass"
                " the right record (MARGINCALL_DEPLOYMENT)"
            )

    def register(self, view: BotView) -> None:
        self.view = view
        self.bot = view.bot

    # --- running ---

    def start(self, on_fatal: Callable[[Event], None]) -> Ops:
        self._on_fatal = on_fatal
        if self.settings.port is not None:
            host, port = self.settings.host, self.settings.port
            try:
                self.server = OpsServer(host, port, self.registry, self.health).start()
            except OSError as err:
                raise OpsConfigError(
                    f"cannot serve /metrics and /health on {host}:{port} ({err.strerror or err});"
                    " choose another MARGINCALL_METRICS_PORT (--metrics-port), 0 for any"
                ) from None
            self.log.info(f"ops: /metrics and /health on {self.server.url}")
        self._thread = threading.Thread(target=self._run, name="margincall-watchdog", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.settings.rpc_timeout + 1)
        if self.server is not None:
            self.server.stop()
            self.server = None

    def health(self) -> tuple[bool, dict]:
        with self._lock:
            ok, body = self.watch.health(time.monotonic(), ready=self.view is not None)
        body["bot"] = self.bot
        return ok, body

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self.tick()
            if self.fatal is not None:
                return
            self._stop.wait(max(self.settings.interval - (time.monotonic() - started), 0.05))

    def tick(self) -> list[Event]:
        """One probe, its events logged; the fatal one handed to `on_fatal`."""
        found = probe(self.url, self.settings.rpc_timeout, self.watch.expect)
        with self._lock:
            if found.ok and self.watch.chain_id is None:
                limit, measure = self.settings.stall_limit(found.chain_id)
                self.watch.stall_after, self.watch.measure = limit, measure
                self.watch.stall_blocks = self.settings.stall_blocks
            events = self.watch.observe(found)
        fatal = next((e for e in events if e.fatal), None)
        for event in events:
            if event is not fatal:
                self._log(event)
        if fatal is not None and self.fatal is None:
            self.fatal = fatal
            self.log.error(f"watchdog: {fatal.message}; stopping (exit code {FATAL_EXIT})")
            time.sleep(FATAL_HOLD)  # /health says why meanwhile
            if self._on_fatal is not None:
                self._on_fatal(fatal)
        return events

    def _log(self, event: Event) -> None:
        if event.cleared:
            getattr(self.log, "success", self.log.info)(f"watchdog: {event.message}")
        elif event.fault.fatal:
            self.log.error(f"watchdog: {event.message}")
        else:
            self.log.warning(f"watchdog: {event.message}")


# --- the process's one Ops ---------------------------------------------------------------

_CURRENT: list[Ops] = []


def install(ops: Ops) -> Ops:
    _CURRENT[:] = [ops]
    return ops


def current() -> Ops | None:
    return _CURRENT[0] if _CURRENT else None


def register_bot(
    bot: str,
    snapshot: Callable[[], dict[str, Any]],
    series: tuple[Series, ...],
    decimals: int = 0,
    block_key: str | None = "block",
) -> None:
    """Exports `snapshot()` through `series` on this process's `/metrics`; marks the bot
    ready for `/health`. A no-op without a running `Ops`."""
    ops = current()
    if ops is not None:
        ops.register(BotView(bot, snapshot, series, decimals, block_key))


__all__ = [
    "FATAL_EXIT",
    "ChainFault",
    "Fault",
    "Ops",
    "current",
    "install",
    "register_bot",
]

"""`Notifier` (one tick: read the engine's logs and the accounts' statuses, enqueue their
messages, deliver what is due) and `Courier` (delivery in a thread of its own); the bot
(bots/notifier.py) is a thin shell around them, and everything here runs without a chain
(tests/unit/test_notify.py)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from margincall.notify.messages import (
    Context,
    EngineEvent,
    Message,
    WarningPolicy,
    _get,
    event_message,
    warning_message,
)
from margincall.notify.outbox import Outbox
from margincall.notify.webhook import (
    DeliveryReport,
    Sender,
    deliver,
)
from margincall.sdk.book import PositionBook

# --- the notifier -------------------------------------------------------------------------


class ChainSource(Protocol):
    """What the notifier reads from the chain (`ApeSource` in a bot, fakes in tests)."""

    def logs(self, start: int, stop: int) -> Sequence[EngineEvent]:
        """The engine's watched events in blocks `start..stop` (inclusive), in log order."""
        ...

    def statuses(self, accounts: Sequence[str]) -> Sequence[Any]:
        """`check_margins` of the accounts (`MarginStatus`-like)."""
        ...


@dataclass
class TickReport:
    """What one `Notifier.tick` did."""

    head: int
    read_to: int | None = None  # cursor after the tick
    enqueued: list[Message] = field(default_factory=list)
    delivery: DeliveryReport | None = None
    errors: list[str] = field(default_factory=list)


class Notifier:
    """Reads the engine's logs by block range into the outbox, scans for early warnings, and
    delivers; one `tick(head)` per new block. Never raises from `tick` (errors are logged
    and reported; the next tick retries)."""

    def __init__(
        self,
        source: ChainSource,
        outbox: Outbox,
        ctx: Context,
        start_block: int,
        sender: Sender | None = None,
        policy: WarningPolicy | None = None,
        confirmations: int = 0,
        chunk: int = 2_000,
        budget: float = 2.0,
        log: logging.Logger | None = None,
        notify_from: int = 0,
    ):
        if confirmations < 0 or chunk <= 0 or budget <= 0:
            raise ValueError("need confirmations >= 0, chunk > 0 and budget > 0")
        self.source = source
        self.outbox = outbox
        self.ctx = ctx
        self.start_block = start_block
        self.sender = sender
        self.policy = policy
        self.confirmations = confirmations
        self.chunk = chunk
        self.budget = budget
        self.log = log or logging.getLogger(__name__)
        self.notify_from = notify_from  # events of earlier blocks only feed the book
        self.book = outbox.load_book()
        self.warned = outbox.load_warnings()

    # --- steps ---

    @property
    def cursor(self) -> int:
        c = self.outbox.cursor
        return self.start_block - 1 if c is None else c

    def sync(self, head: int) -> list[Message]:
        """Reads logs from the cursor up to `head - confirmations`, a chunk per transaction."""
        target = head - self.confirmations
        added: list[Message] = []
        start = self.cursor + 1
        while start <= target:
            stop = min(start + self.chunk - 1, target)
            events = sorted(self.source.logs(start, stop), key=lambda e: e.position)
            added += self._commit_events(events, stop)
            start = stop + 1
        return added

    def _commit_events(self, events: Sequence[EngineEvent], stop: int) -> list[Message]:
        messages = [
            m
            for e in events
            if e.block >= self.notify_from and (m := event_message(e, self.ctx)) is not None
        ]
        touched = {e.account for e in events if e.name == "PositionChanged"}
        book = PositionBook({a: set(ms) for a, ms in self.book.markets.items()})
        book.apply_all(e.as_log() for e in events if e.name == "PositionChanged")
        positions = {a: sorted(book.markets.get(a, ())) for a in touched}
        # an account whose last position closed leaves its warning episode
        rearmed = {a: None for a in touched if a not in book and a in self.warned}
        added = self.outbox.commit(messages, cursor=stop, positions=positions, warnings=rearmed)
        self.book = book
        for a in rearmed:
            self.warned.pop(a, None)
        self._announce(added)
        return added

    def scan(self, head: int, timestamp: int | None = None) -> list[Message]:
        """Checks the open accounts' ratios at `head` and enqueues new early warnings."""
        if self.policy is None or not len(self.book):
            return []
        statuses = self.source.statuses(self.book.accounts)
        messages: list[Message] = []
        changes: dict[str, int | None] = {}
        for s in statuses:
            account = str(_get(s, "account"))
            warned = account in self.warned
            after, fire = self.policy.step(warned, s)
            if fire:
                messages.append(
                    warning_message(s, head, self.policy.warn_ratio, self.ctx, timestamp)
                )
                changes[account] = head
            elif warned and not after:
                changes[account] = None
        if not changes:
            return []
        added = self.outbox.commit(messages, warnings=changes)
        for account, since in changes.items():
            if since is None:
                self.warned.pop(account, None)
            else:
                self.warned[account] = since
        self._announce(added)
        return added

    def deliver(self) -> DeliveryReport:
        if self.sender is None:
            # log only: the message was logged when enqueued
            report = DeliveryReport()
            while batch := self.outbox.due(limit=1_000):
                for p in batch:
                    self.outbox.mark_delivered(p.key)
                    report.delivered.append(p.key)
            return report
        return deliver(self.outbox, self.sender, self.budget, log=self.log)

    def tick(self, head: int, timestamp: int | None = None, deliver: bool = True) -> TickReport:
        """sync, scan, then deliver (unless `deliver` is False: a `Courier` thread does it);
        an error in one step is logged and the next step still runs (a dead node must not
        stop deliveries, a dead webhook must not stop reading)."""
        report = TickReport(head)
        if head < self.cursor:
            report.errors.append(f"head {head} is behind the cursor {self.cursor}")
            self.log.warning(
                f"notify: head {head} is behind the outbox cursor {self.cursor} "
                "(a node still syncing, or a chain reset); waiting"
            )
        else:
            for step in (self.sync, lambda h: self.scan(h, timestamp)):
                try:
                    report.enqueued += step(head)
                except Exception as err:  # noqa: BLE001 - RPC errors: retried next block
                    report.errors.append(f"{type(err).__name__}: {err}")
                    self.log.warning(f"notify: block {head}: {type(err).__name__}: {err}")
        report.read_to = self.cursor
        if not deliver:
            return report
        try:
            report.delivery = self.deliver()
        except Exception as err:  # noqa: BLE001 - e.g. a full disk: retried next block
            report.errors.append(f"{type(err).__name__}: {err}")
            self.log.error(f"notify: delivery failed: {type(err).__name__}: {err}")
        return report

    def _announce(self, added: Iterable[Message]) -> None:
        for m in added:
            self.log.info(f"notify [{m.kind}] {m.account}: {m.text} (key {m.key})")


class Courier:
    """Delivers in a thread of its own, on the outbox's schedule, not the chain's.

    Retries must not wait for a new block (a quiet chain has none for a long
    time) and reading blocks must not wait for a slow webhook: the bot's block
    handler only enqueues and `wake()`s the courier; the courier runs
    `notifier.deliver()` whenever it is woken, a retry falls due, or `poll`
    seconds have passed. One courier per outbox: it is the only sender, so a
    message is never in flight twice.
    """

    def __init__(self, notifier: Notifier, poll: float = 1.0, min_wait: float = 0.02):
        self.notifier = notifier
        self.poll = poll
        self.min_wait = min_wait
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.rounds = 0

    def start(self) -> Courier:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="notify-courier", daemon=True)
            self._thread.start()
        return self

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> bool:
        """Stops after the current round; returns whether the thread ended in `timeout`."""
        self._stop.set()
        self._wake.set()
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _wait_time(self) -> float:
        due = self.notifier.outbox.next_due_at()
        if due is None:
            return self.poll
        return min(max(due - self.notifier.outbox.clock(), self.min_wait), self.poll)

    def _run(self) -> None:
        log = self.notifier.log
        while not self._stop.is_set():
            self._wake.clear()
            try:
                self.notifier.deliver()
                wait = self._wait_time()
            except Exception as err:  # noqa: BLE001 - e.g. a locked or full disk: retry
                log.error(f"notify: courier: {type(err).__name__}: {err}")
                wait = self.poll
            self.rounds += 1
            self._wake.wait(wait)

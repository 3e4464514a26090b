"""The chain watchdog's logic, without I/O: probes in, faults and a health verdict out.

A `Probe` is what one round of questions to the node gave (head, chain id, the engine's
code, the hash of the deployment's creation block), or how it failed (a timeout: the node
is frozen or overloaded; a refused connection: the node is down). `Watch.observe` turns a
probe into `Event`s (a fault raised or cleared, each with the one-line message the logs
and docs/bots.md name) and keeps the state `Watch.health` reports.

Faults:

- `node_frozen`: a probe got no reply within the RPC timeout;
- `node_down`: a probe failed otherwise (refused connection, HTTP or JSON-RPC error);
- `head_stalled`: the head has not advanced for `stall_after` seconds (N block times);
- `chain_reset` (fatal): the head went back by more than `reset_depth` blocks, or the
  deployment's creation block is gone or has another hash;
- `chain_id_changed` (fatal): the node reports another chain id;
- `engine_missing` (fatal): the engine's address has no code.

The first three clear when the node is back to normal; the fatal ones stop the bot
(`margincall.keeper.runtime`), since its state (positions, outbox, nonce) describes
another chain.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Fault(StrEnum):
    FROZEN = "node_frozen"
    DOWN = "node_down"
    STALLED = "head_stalled"
    RESET = "chain_reset"
    CHAIN_ID = "chain_id_changed"
    NO_CODE = "engine_missing"

    @property
    def fatal(self) -> bool:
        return self in (Fault.RESET, Fault.CHAIN_ID, Fault.NO_CODE)


@dataclass(frozen=True)
class Probe:
    """One round of questions to the node, at monotonic time `at`."""

    at: float
    error: str | None = None  # None: the node answered
    timed_out: bool = False  # no reply within the RPC timeout
    head: int | None = None
    chain_id: int | None = None
    has_code: bool | None = None  # the engine's address has code (None: not asked)
    anchor_hash: str | None = None  # hash of the deployment's creation block ("" if gone)
    latency: float = 0.0  # seconds the round took

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class Event:
    """A fault raised (`cleared` False) or cleared, with its log message."""

    fault: Fault
    message: str
    cleared: bool = False

    @property
    def fatal(self) -> bool:
        return self.fault.fatal and not self.cleared


@dataclass(frozen=True)
class Expect:
    """What the bot's deployment says about the chain."""

    chain_id: int
    engine: str
    anchor_block: int  # the engine's creation block


@dataclass
class Watch:
    """The watchdog's state over successive probes (one `observe` per probe)."""

    timeout: float  # the RPC timeout, for messages
    stall_after: float | None = None  # seconds; None: `stall_blocks` measured block times
    stall_blocks: int = 10  # block times without a new head before `head_stalled`
    measure: bool = False  # without `stall_after`, measure the block time from the heads
    reset_depth: int = 16  # blocks the head may go back before it counts as a reset
    expect: Expect | None = None
    faults: dict[Fault, str] = field(default_factory=dict)  # active fault -> message
    head: int | None = None  # newest head seen
    head_since: float | None = None  # monotonic time the head last advanced
    last_ok: float | None = None  # monotonic time of the last good probe
    anchor_hash: str | None = None  # first hash seen for the creation block
    chain_id: int | None = None
    failing_since: float | None = None
    probes: int = 0
    errors: int = 0
    fault_counts: dict[Fault, int] = field(default_factory=dict)
    intervals: list[float] = field(default_factory=list)  # seconds between new heads (last 16)

    MEASURED = 8  # intervals seen before a measured block time is trusted

    @property
    def stall_limit(self) -> float | None:
        """Seconds without a new head before `head_stalled` (None: not checked)."""
        if self.stall_after is not None:
            return self.stall_after
        if not self.measure or len(self.intervals) < self.MEASURED:
            return None
        median = sorted(self.intervals)[len(self.intervals) // 2]
        return self.stall_blocks * max(median, 1.0)

    def observe(self, probe: Probe) -> list[Event]:
        self.probes += 1
        if not probe.ok:
            self.errors += 1
            if self.failing_since is None:
                self.failing_since = probe.at - probe.latency
            if probe.timed_out:
                return self._raise(
                    Fault.FROZEN,
                    f"node not answering: no reply within {self.timeout:g} s"
                    " (frozen or overloaded node); retrying",
                    clear=(Fault.DOWN,),
                )
            return self._raise(
                Fault.DOWN, f"node unreachable ({probe.error}); retrying", clear=(Fault.FROZEN,)
            )
        events: list[Event] = []
        if self.failing_since is not None:
            down = probe.at - self.failing_since
            for fault in (Fault.FROZEN, Fault.DOWN):
                events += self._clear(fault, f"node answering again after {down:.1f} s")
            self.failing_since = None
        self.last_ok = probe.at
        events += self._check_chain(probe)
        events += self._check_head(probe)
        return events

    # --- checks ---

    def _check_chain(self, probe: Probe) -> list[Event]:
        events: list[Event] = []
        expected = self.expect.chain_id if self.expect else self.chain_id
        if probe.chain_id is not None:
            if expected is not None and probe.chain_id != expected:
                events += self._raise(
                    Fault.CHAIN_ID,
                    f"chain id changed: the node is now chain {probe.chain_id}, not {expected}",
                )
            self.chain_id = self.chain_id if self.chain_id is not None else probe.chain_id
        if self.expect is not None and probe.has_code is False:
            events += self._raise(
                Fault.NO_CODE,
                f"engine missing: no code at {self.expect.engine} on chain"
                f" {probe.chain_id or expected} (chain reset, or a record of another chain)",
            )
        if self.expect is not None and probe.anchor_hash is not None:
            block = self.expect.anchor_block
            if probe.anchor_hash == "":
                events += self._raise(
                    Fault.RESET,
                    f"chain reset: block {block} (the engine's creation block) is gone;"
                    f" the head is {probe.head}",
                )
            elif self.anchor_hash is None:
                self.anchor_hash = probe.anchor_hash
            elif probe.anchor_hash != self.anchor_hash:
                events += self._raise(
                    Fault.RESET,
                    f"chain reset: block {block} (the engine's creation block) is now"
                    f" {probe.anchor_hash}, not {self.anchor_hash}",
                )
        return events

    def _check_head(self, probe: Probe) -> list[Event]:
        head = probe.head
        if head is None:
            return []
        events: list[Event] = []
        if self.head is not None and head < self.head - self.reset_depth:
            events += self._raise(
                Fault.RESET, f"chain reset: the head went back from block {self.head} to {head}"
            )
            return events
        if self.head is None or head > self.head:
            if self.head is not None:
                events += self._clear(Fault.STALLED, f"head advancing again: block {head}")
                if self.head_since is not None:
                    per_block = (probe.at - self.head_since) / (head - self.head)
                    self.intervals = [*self.intervals[-15:], per_block]
            self.head = head
            self.head_since = probe.at
            return events
        age = probe.at - (self.head_since if self.head_since is not None else probe.at)
        limit = self.stall_limit
        if limit is not None and age > limit:
            events += self._raise(
                Fault.STALLED,
                f"head stalled: block {self.head} for {age:.0f} s (limit {limit:g} s)",
            )
        return events

    # --- state ---

    def _raise(self, fault: Fault, message: str, clear: tuple[Fault, ...] = ()) -> list[Event]:
        events = [e for other in clear for e in self._clear(other, None)]
        if fault in self.faults:
            self.faults[fault] = message
            return events
        self.faults[fault] = message
        self.fault_counts[fault] = self.fault_counts.get(fault, 0) + 1
        return [*events, Event(fault, message)]

    def _clear(self, fault: Fault, message: str | None) -> list[Event]:
        if self.faults.pop(fault, None) is None or message is None:
            return []
        return [Event(fault, message, cleared=True)]

    @property
    def fatal(self) -> Fault | None:
        return next((f for f in self.faults if f.fatal), None)

    def head_age(self, now: float) -> float | None:
        return None if self.head_since is None else now - self.head_since

    def health(self, now: float, ready: bool = True) -> tuple[bool, dict]:
        """(healthy, the JSON body of `/health`)."""
        if self.fatal is not None:
            status = "stopping"
        elif self.faults:
            status = "failing"
        elif not ready or self.last_ok is None:
            status = "starting"
        else:
            status = "ok"
        age = self.head_age(now)
        body = {
            "status": status,
            "faults": [{"fault": f.value, "message": m} for f, m in self.faults.items()],
            "head": self.head,
            "head_age_s": None if age is None else round(age, 3),
            "chain_id": self.chain_id,
            "engine": self.expect.engine if self.expect else None,
            "last_ok_s": None if self.last_ok is None else round(now - self.last_ok, 3),
            "stall_after_s": self.stall_limit,
        }
        return status == "ok", body


__all__ = ["Event", "Expect", "Fault", "Probe", "Watch"]

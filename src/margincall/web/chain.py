"""What the dashboard's pages show, read from the chain through the SDK.

`ChainView` holds one deployed system (a `DeploymentRecord`) and keeps, block after block,
what the pages need: the accounts that hold positions (from the engine's `PositionChanged`
logs, full state per position), the recent margin calls, cures, liquidations and bad debts,
prices sampled per block, and the last system snapshot. Contracts are read only through the
SDK's clients (`margincall.sdk.Clients`), event logs only through `read_events` (the
notifier's reader, `margincall.notify.ApeSource`), cure amounts come from the reference math
(`margincall.math.cure_deposit`, `cure_reduction`). Nothing here signs: the browser's wallet
does.

Every failure a user can cause or meet (a malformed or unknown account, a node that is down
or was reset, a record for another chain) raises `DashboardError` with a sentence for the
page; the poller in `margincall.web.app` shows it and tries again at the next poll.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from margincall import math as ref
from margincall.constants import WAD, PlanCode, State
from margincall.deploy.record import DeploymentRecord
from margincall.notify import ApeSource, EngineEvent, default_outbox
from margincall.sdk import Clients, MarginStatus, OracleError

HISTORY_KINDS = ("MarginCall", "MarginCallCleared", "Liquidation", "BadDebt")
RECENT = 200  # events of each kind kept for the system page
LOG_CHUNK = 2_000  # blocks per eth_getLogs
PRICE_POINTS = 20_000  # price samples kept per market
STALE_BLOCKS = 5  # a keeper further behind the head is flagged on the operator page
STALE_SECONDS = 60.0  # a metrics file older than this is flagged


class DashboardError(Exception):
    """A condition the page explains in one sentence (no traceback ever reaches a page)."""


def to_account(text: str) -> str:
    """A checksummed address, or `DashboardError` for anything else."""
    from eth_utils import is_address, to_checksum_address

    text = (text or "").strip()
    if not is_address(text):
        raise DashboardError(
            f"{text[:60]!r} is not an account address (0x followed by 40 hex digits)"
        )
    return to_checksum_address(text)


def read_events(source: ApeSource, start: int, stop: int) -> list[EngineEvent]:
    """The engine's watched events (calls, cures, liquidations, bad debt, position changes)
    of blocks `start..stop`, in log order: the one door to logs for the dashboard."""
    out: list[EngineEvent] = []
    for lo in range(start, stop + 1, LOG_CHUNK):
        out.extend(source.logs(lo, min(stop, lo + LOG_CHUNK - 1)))
    return out


@dataclass(frozen=True)
class MarketRow:
    market_id: int
    name: str
    price: int  # wad, 0 when invalid
    valid: bool
    reason: str
    using_fallback: bool
    feed_age: int | None  # seconds since the primary feed's last round
    heartbeat: int
    long_oi: int  # wad notional at the price (or the entry when no price)
    short_oi: int
    mmr: int
    imr: int


@dataclass(frozen=True)
class SystemSnapshot:
    block: int
    timestamp: int
    markets: tuple[MarketRow, ...]
    pool: Any  # sdk.PoolState
    fund_balance: int
    accounts: int  # with open positions
    at_risk: tuple[MarginStatus, ...]  # below the warning ratio, lowest ratio first
    states: dict[str, int]
    recent: dict[str, tuple[EngineEvent, ...]]  # newest first, per kind
    totals: dict[str, int]
    prices: dict[int, tuple[tuple[int, int], ...]]  # market -> (timestamp, price)
    liquidation_times: tuple[tuple[int, int], ...]  # (timestamp, market id), per market closed
    read_ms: float
    params: ref.RiskParams


@dataclass(frozen=True)
class PositionRow:
    market_id: int
    name: str
    size: int
    entry: int
    price: int | None
    notional: int | None
    pnl: int | None
    cure_reduce: int | None  # base units to close to cure; None: this market cannot


@dataclass(frozen=True)
class TraderSnapshot:
    account: str
    block: int
    timestamp: int
    status: MarginStatus
    params: ref.RiskParams
    positions: tuple[PositionRow, ...]
    cure_deposit: int  # token units
    tranche: Any  # ref.Tranche or sdk.LiquidationPreview or None
    tranche_at: int  # when that tranche becomes possible (0: now)
    history: tuple[EngineEvent, ...]  # newest first
    price_error: str = ""

    @property
    def call_cleared(self) -> bool:
        """The account's last call event is a `MarginCallCleared`."""
        for ev in self.history:
            if ev.name in ("MarginCall", "MarginCallCleared"):
                return ev.name == "MarginCallCleared"
        return False


@dataclass
class Book:
    """Positions and events read so far (the engine's logs are full state per position)."""

    cursor: int
    positions: dict[tuple[str, int], tuple[int, int]] = field(default_factory=dict)
    events: dict[str, deque] = field(default_factory=dict)
    by_account: dict[str, list[EngineEvent]] = field(default_factory=dict)
    totals: dict[str, int] = field(default_factory=dict)
    markets_of_tx: dict[tuple[str, str], set[int]] = field(default_factory=dict)
    cursor_hash: bytes = b""  # the hash of block `cursor` when it was read

    def apply(self, events: Sequence[EngineEvent]) -> None:
        for ev in events:
            if ev.name == "PositionChanged":
                key = (ev.account, int(ev.args["market_id"]))
                self.markets_of_tx.setdefault((ev.tx_hash, ev.account), set()).add(key[1])
                size = int(ev.args["size"])
                if size:
                    self.positions[key] = (size, int(ev.args["open_notional"]))
                else:
                    self.positions.pop(key, None)
                continue
            self.events.setdefault(ev.name, deque(maxlen=RECENT)).append(ev)
            self.by_account.setdefault(ev.account, []).append(ev)
            self.totals[ev.name] = self.totals.get(ev.name, 0) + 1
            if ev.name == "BadDebt":
                self.totals["bad_debt"] = self.totals.get("bad_debt", 0) + int(ev.args["amount"])

    def accounts(self) -> list[str]:
        return sorted({a for a, _ in self.positions})


def _friendly(err: Exception, node: str) -> str:
    """One sentence for an exception from the node or Ape."""
    if isinstance(err, DashboardError):
        return str(err)
    text = f"{type(err).__name__}: {err}"
    low = text.lower()
    if any(w in low for w in ("connection", "refused", "timed out", "timeout", "not connected")):
        return f"the node at {node} is unreachable ({type(err).__name__}); retrying"
    return f"reading the chain failed ({text[:200]}); retrying"


class ChainView:
    """One deployed system as the pages see it; every method may raise `DashboardError`."""

    def __init__(
        self,
        record: DeploymentRecord,
        project: Any,
        provider: Any,
        keeper_metrics: Sequence[Path] = (),
        notifier_outbox: Path | None = None,
        warn_ratio: int = 15 * 10**17,
    ):
        self.record = record
        self.project = project
        self.provider = provider
        self.keeper_metrics = list(keeper_metrics)
        self.notifier_outbox = notifier_outbox or default_outbox(record)
        self.warn_ratio = warn_ratio
        self.lock = threading.RLock()
        self.clients: Clients | None = None
        self.source: ApeSource | None = None
        self.book = Book(record.block - 1)
        self.samples: dict[int, deque] = {}
        self.stamps: dict[int, int] = {}
        self.system: SystemSnapshot | None = None
        self.head: tuple[int, int] = (0, 0)
        self.symbol = "tokens"  # the collateral's symbol, read at the first connection

    @property
    def node(self) -> str:
        return str(getattr(self.provider, "uri", "") or getattr(self.provider, "name", "node"))

    def friendly(self, err: Exception) -> str:
        return _friendly(err, self.node)

    # --- connection ---

    def latest(self) -> tuple[int, int]:
        """(number, timestamp) of the head block."""
        block = self.provider.web3.eth.get_block("latest")
        return int(block["number"]), int(block["timestamp"])

    def check(self) -> None:
        """The node is the record's chain and the engine is there; (re)builds the clients."""
        chain_id = int(self.provider.web3.eth.chain_id)
        if chain_id != self.record.chain_id:
            raise DashboardError(
                f"the deployment record is for chain {self.record.chain_id}, but the node at "
                f"{self.node} is chain {chain_id}: start the dashboard with that chain's record"
            )
        from eth_utils import to_checksum_address

        code = self.provider.web3.eth.get_code(to_checksum_address(self.record.engine))
        if not code or bytes(code) in (b"", b"\x00"):
            self.clients = None
            raise DashboardError(
                f"no engine at {self.record.engine} on chain {chain_id}: the node was reset "
                "or the record is for another deployment (redeploy, then restart with its record)"
            )
        if self.clients is None:
            self.clients = Clients.from_record(self.record, self.project)
            self.source = ApeSource(self.clients.engine)
            with contextlib.suppress(Exception):  # a token without symbol()
                self.symbol = self.clients.engine.symbol()
            self.book = Book(self.record.block - 1)

    # --- per block ---

    def refresh(self) -> SystemSnapshot:
        """Reads the blocks since the last refresh and the system's state at the head."""
        with self.lock:
            t0 = time.perf_counter()
            self.check()
            number, stamp = self.latest()
            if number < self.book.cursor or not self._same_chain():
                # the chain went back, was reset or reorganised: read it again from the start
                self.clients = None
                self.samples.clear()
                self.stamps.clear()
                self.check()
            assert self.clients is not None and self.source is not None
            if number > self.book.cursor:
                events = read_events(self.source, self.book.cursor + 1, number)
                self.book.apply(events)
                self.book.cursor = number
                self.book.cursor_hash = self._hash(number)
                self._stamp_events(events)
            self.head = (number, stamp)
            self.stamps[number] = stamp
            self.system = self._system(number, stamp, t0)
            return self.system

    def _hash(self, number: int) -> bytes:
        return bytes(self.provider.web3.eth.get_block(number)["hash"])

    def _same_chain(self) -> bool:
        """The block the book was read up to is still on the chain (no reset, no reorg)."""
        if not self.book.cursor_hash:
            return True
        return self._hash(self.book.cursor) == self.book.cursor_hash

    def _stamp_events(self, events: Sequence[EngineEvent]) -> None:
        """Block timestamps of liquidations and price points (for the plot), newest 300."""
        blocks = sorted({ev.block for ev in events if ev.name != "MarginCallCleared"})[-300:]
        for b in blocks:
            if b not in self.stamps:
                self.stamps[b] = int(self.provider.web3.eth.get_block(b)["timestamp"])
        for ev in events:
            if ev.name == "PositionChanged" and ev.block in self.stamps:
                m = int(ev.args["market_id"])
                self._sample(m, self.stamps[ev.block], int(ev.args["price"]))

    def _sample(self, market_id: int, stamp: int, price: int) -> None:
        points = self.samples.setdefault(market_id, deque(maxlen=PRICE_POINTS))
        if points and points[-1][0] > stamp:
            return
        if points and points[-1][0] == stamp:
            points.pop()
        points.append((stamp, price))

    def _markets(self, now: int) -> list[MarketRow]:
        assert self.clients is not None
        oi: dict[int, list[int]] = {}
        for (_, m), (size, cost) in self.book.positions.items():
            oi.setdefault(m, [0, 0, 0, 0])
            side = 0 if size > 0 else 1
            oi[m][side] += abs(size)
            oi[m][side + 2] += abs(cost)
        rows = []
        for mr in self.record.markets:
            m = mr.market_id
            oracle = self.clients.oracle(m)
            st = oracle.status()
            updated = oracle.feed_updated_at()
            market = self.clients.engine.market(m)
            long_size, short_size, long_cost, short_cost = oi.get(m, [0, 0, 0, 0])
            if st.valid:
                self._sample(m, now, st.price)
                long_n, short_n = long_size * st.price // WAD, short_size * st.price // WAD
            else:
                long_n, short_n = long_cost, short_cost
            rows.append(
                MarketRow(
                    m,
                    mr.name,
                    st.price,
                    st.valid,
                    st.reason,
                    st.using_fallback,
                    None if updated is None else max(now - updated, 0),
                    mr.heartbeat,
                    long_n,
                    short_n,
                    market.mmr,
                    market.imr,
                )
            )
        return rows

    def _system(self, number: int, stamp: int, t0: float) -> SystemSnapshot:
        assert self.clients is not None
        clients = self.clients
        markets = self._markets(stamp)
        accounts = self.book.accounts()
        statuses = clients.engine.statuses(accounts) if accounts else []
        states: dict[str, int] = {s.name: 0 for s in State}
        for s in statuses:
            states[s.state.name] += 1
        at_risk = sorted(
            (s for s in statuses if s.state != State.HEALTHY or s.ratio < self.warn_ratio),
            key=lambda s: (s.ratio, s.account),
        )
        recent = {k: tuple(reversed(self.book.events.get(k, ()))) for k in HISTORY_KINDS}
        liq_times = tuple(
            (self.stamps[ev.block], m)
            for ev in self.book.events.get("Liquidation", ())
            if ev.block in self.stamps
            for m in self.book.markets_of_tx.get((ev.tx_hash, ev.account), ())
        )
        return SystemSnapshot(
            block=number,
            timestamp=stamp,
            markets=tuple(markets),
            pool=clients.pool.state(),
            fund_balance=clients.fund.balance(),
            accounts=len(accounts),
            at_risk=tuple(at_risk),
            states=states,
            recent=recent,
            totals=dict(self.book.totals),
            prices={m: tuple(p) for m, p in self.samples.items()},
            liquidation_times=liq_times,
            read_ms=(time.perf_counter() - t0) * 1_000,
            params=clients.engine.risk_params(),
        )

    # --- one account ---

    def trader(self, text: str) -> TraderSnapshot:
        """One account's page; `DashboardError` for a malformed or unknown account."""
        account = to_account(text)
        with self.lock:
            if self.clients is None or self.system is None:
                self.refresh()
            assert self.clients is not None
            client = self.clients.engine
            number, stamp = self.head
            rec = client.record(account)
            history = tuple(reversed(self.book.by_account.get(account, [])))
            if rec.collateral == 0 and rec.markets == 0 and not history:
                raise DashboardError(
                    f"{account} has no margin account on this engine ({self.record.engine}): "
                    "no collateral, no position, no margin call"
                )
            status = client.statuses([account])[0]
            params = client.risk_params()
            return self._trader(account, status, params, rec, history, number, stamp)

    def _trader(self, account, status, params, rec, history, number, stamp) -> TraderSnapshot:
        client = self.clients.engine  # type: ignore[union-attr]
        names = {m.market_id: m.name for m in self.record.markets}
        rows: list[PositionRow] = []
        cure_deposit, tranche, tranche_at, price_error = 0, None, 0, ""
        try:
            model = client.model(account)
        except OracleError as err:
            model, price_error = None, str(err)
        if model is not None:
            cure_deposit = ref.cure_deposit(model, params, client.scale)
            for p in model.positions:
                fee = client.market(p.market_id).fee
                cure = ref.cure_reduction(model, p.market_id, params, client.scale, fee)
                rows.append(
                    PositionRow(
                        p.market_id,
                        names.get(p.market_id, f"market {p.market_id}"),
                        p.size,
                        abs(p.cost) * WAD // abs(p.size),
                        p.price,
                        p.notional,
                        p.pnl,
                        cure,
                    )
                )
            tranche, tranche_at = self._next_tranche(account, status, model, params, stamp)
        return TraderSnapshot(
            account,
            number,
            stamp,
            status,
            params,
            tuple(rows),
            cure_deposit,
            tranche,
            tranche_at,
            history,
            price_error,
        )

    def _next_tranche(self, account, status, model, params, now) -> tuple[Any, int]:
        """The engine's preview when a tranche is possible now; otherwise the reference
        plan at the time it would become possible (the call's deadline, or a call made now
        plus the grace period), prices unchanged."""
        client = self.clients.engine  # type: ignore[union-attr]
        if status.state >= State.LIQUIDATABLE:
            p = client.preview_liquidation(account)
            if p.reason == PlanCode.TOO_SOON:
                return None, status.next_tranche_time
            return (p if p.liquidatable else None), 0
        if status.state == State.CALLED:
            at = status.call_deadline
        elif status.state == State.CALLABLE:
            at = now + params.grace_period
        else:
            return None, 0
        return ref.plan_tranche(model, params, client.scale, at), at

    # --- operators ---

    def operator(self) -> dict[str, Any]:
        """The keepers' metrics files and the notifier's outbox, as their bots wrote them."""
        head = self.head[0]
        keepers = []
        for path in self.keeper_metrics:
            keepers.append(read_keeper_metrics(path, head))
        return {
            "head": head,
            "keepers": keepers,
            "notifier": read_outbox(Path(self.notifier_outbox), head),
        }


def read_keeper_metrics(path: Path, head: int) -> dict[str, Any]:
    """A keeper's metrics file (docs/bots.md, Metrics), its age and its lag behind `head`."""
    out: dict[str, Any] = {"path": str(path)}
    try:
        out["age_s"] = round(time.time() - path.stat().st_mtime, 1)
        out["metrics"] = json.loads(path.read_text())
    except FileNotFoundError:
        out["error"] = "no metrics file yet (is the keeper running with --metrics this path?)"
        return out
    except (OSError, ValueError) as err:
        out["error"] = f"unreadable metrics file ({type(err).__name__})"
        return out
    block = out["metrics"].get("block")
    out["lag"] = None if block is None or not head else head - int(block)
    out["stale"] = ""
    if out["lag"] is not None and out["lag"] > STALE_BLOCKS:
        out["stale"] = f"{out['lag']} blocks behind the head"
    elif out["age_s"] > STALE_SECONDS:
        out["stale"] = f"metrics not written for {out['age_s']:.0f} s (is the keeper running?)"
    return out


def read_outbox(path: Path, head: int) -> dict[str, Any]:
    """The notifier's SQLite outbox, opened read-only: messages, pending, cursor, last error."""
    out: dict[str, Any] = {"path": str(path)}
    if not path.exists():
        out["error"] = "no outbox here (is the notifier running for this deployment?)"
        return out
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1)
        try:
            total, delivered = db.execute(
                "SELECT COUNT(*), COUNT(delivered_at) FROM messages"
            ).fetchone()
            cursor = db.execute("SELECT value FROM meta WHERE name = 'cursor'").fetchone()
            oldest = db.execute(
                "SELECT MIN(created_at) FROM messages WHERE delivered_at IS NULL"
            ).fetchone()[0]
            error = db.execute(
                "SELECT last_error FROM messages WHERE delivered_at IS NULL "
                "AND last_error IS NOT NULL ORDER BY seq DESC LIMIT 1"
            ).fetchone()
            kinds = db.execute("SELECT kind, COUNT(*) FROM messages GROUP BY kind").fetchall()
        finally:
            db.close()
    except sqlite3.Error as err:
        out["error"] = f"unreadable outbox ({err})"
        return out
    out.update(
        total=int(total),
        delivered=int(delivered),
        pending=int(total) - int(delivered),
        cursor=None if cursor is None else int(cursor[0]),
        lag=None if cursor is None or not head else head - int(cursor[0]),
        oldest_pending_s=None if oldest is None else round(time.time() - float(oldest), 1),
        last_error=error[0] if error else "",
        kinds=dict(kinds),
    )
    return out


__all__ = [
    "ChainView",
    "DashboardError",
    "SystemSnapshot",
    "TraderSnapshot",
    "read_events",
    "read_keeper_metrics",
    "read_outbox",
    "to_account",
]

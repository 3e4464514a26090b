"""The notifier: engine events and early warnings as messages, delivered exactly once.

`bots/notifier.py` (Silverback) is a thin shell around `Notifier`; everything
that decides what to send, and when, lives here and runs without a chain
(tests/unit/test_notify.py):

- **messages** (`event_message`, `warning_message`): one per `MarginCall`,
  `MarginCallCleared`, `Liquidation` and `BadDebt` event, addressed to the
  account the event concerns, and one per early-warning *episode*: a warning
  when an account's ratio falls under `warn_ratio`, re-armed only once the
  ratio is back at or above `warn_ratio * (1 + hysteresis)` (or the account
  has no position left). Each message is a JSON object with the raw event
  fields (integers as decimal strings), their units, human values and a text
  line (schema in docs/bots.md);
- **idempotency keys**: `<chain id>:<tx hash>:<log index>` for an event,
  `<chain id>:<engine>:warning:<account>:<block the episode began>` for a
  warning. Re-reading the same logs, or re-observing the same episode,
  yields the same key;
- **`Outbox`** (SQLite): `enqueue` is an `INSERT OR IGNORE` on the key, so a
  restart that re-reads logs never duplicates a message; a cursor (the last
  block whose logs are fully enqueued), the open positions and the warning
  episodes are committed in the same transaction as the messages, so a crash
  at any point resumes exactly where the last commit left off;
- **delivery** (`Webhook`, `deliver`): an HTTP POST of the JSON body with an
  `Idempotency-Key` header; a 2xx marks the message delivered (committed at
  once), anything else is retried with exponential backoff per message.
  Messages of one account are delivered in order (the next one waits for the
  previous one); accounts do not hold each other up.

Delivery guarantee: every enqueued message is POSTed until a 2xx comes back,
and is never POSTed again after its 2xx is committed. One window cannot be
closed from the sender's side: if the process dies (or the response is lost,
e.g. a timeout after the receiver has processed the request) between the
receiver's 2xx and the commit, the message is sent again after the restart,
with the same `Idempotency-Key`; a receiver that drops keys it has already
seen gets every message exactly once.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

from margincall.constants import WAD, State
from margincall.keeper.logic import PositionBook
from margincall.report import fmt_fixed, fmt_ratio

MAX_UINT = 2**256 - 1
SCHEMA_VERSION = 1
USER_AGENT = "margincall-notifier/1"

# --- events and their units ---------------------------------------------------------------

#: Engine events that become messages, and the message `kind` of each.
KINDS: dict[str, str] = {
    "MarginCall": "margin_call",
    "MarginCallCleared": "margin_call_cleared",
    "Liquidation": "liquidation",
    "BadDebt": "bad_debt",
}
EARLY_WARNING = "early_warning"
#: Every event the notifier reads: the message events and the position book's.
WATCHED_EVENTS: tuple[str, ...] = (*KINDS, "PositionChanged")

# Units of the message fields (docs/design.md "Events"):
#   token        token units of the collateral (divide by 10**collateral_decimals)
#   wad          18-decimal fixed point (divide by 10**18); may be negative (equity)
#   ratio        wad; 2**256 - 1 means "no position" (infinite)
#   unix_time    seconds since the epoch
#   state        the engine's account state (0 HEALTHY ... 5 BANKRUPT)
#   integer, bool, address: as they are
UNITS: dict[str, dict[str, str]] = {
    "MarginCall": {
        "account": "address",
        "caller": "address",
        "deadline": "unix_time",
        "equity": "wad",
        "maintenance": "wad",
        "ratio": "ratio",
        "reward": "token",
        "collateral": "token",
    },
    "MarginCallCleared": {
        "account": "address",
        "caller": "address",
        "equity": "wad",
        "maintenance": "wad",
        "ratio": "ratio",
    },
    "Liquidation": {
        "account": "address",
        "keeper": "address",
        "tranche": "integer",
        "state": "state",
        "fraction": "wad",
        "closed_notional": "wad",
        "penalty": "token",
        "keeper_reward": "token",
        "fund_fee": "token",
        "collateral": "token",
        "equity_after": "wad",
        "ratio_after": "ratio",
        "full_close": "bool",
    },
    "BadDebt": {
        "account": "address",
        "amount": "token",
        "paid_by_fund": "token",
        "socialised": "token",
    },
    EARLY_WARNING: {
        "account": "address",
        "ratio": "ratio",
        "warn_ratio": "ratio",
        "call_ratio": "ratio",
        "equity": "wad",
        "maintenance": "wad",
        "collateral": "wad",  # check_margins reports collateral in wad
        "state": "state",
    },
}


def _decimal_text(value: int, decimals: int) -> str:
    """An exact decimal string of a fixed-point integer (`1500000, 6` -> `"1.5"`)."""
    d = Decimal(int(value)).scaleb(-decimals)
    text = format(d, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"


def human_value(value: Any, unit: str, decimals: int) -> Any:
    """A field's value for people: exact decimal strings, ISO times, state names."""
    if unit == "token":
        return _decimal_text(value, decimals)
    if unit == "wad":
        return _decimal_text(value, 18)
    if unit == "ratio":
        return None if int(value) >= MAX_UINT else _decimal_text(value, 18)
    if unit == "unix_time":
        return datetime.fromtimestamp(int(value), UTC).isoformat().replace("+00:00", "Z")
    if unit == "state":
        return State(int(value)).name
    if unit == "integer":
        return int(value)
    if unit == "bool":
        return bool(value)
    return str(value)


def raw_value(value: Any, unit: str) -> Any:
    """A field's raw value for JSON: integers as decimal strings (exact in any language)."""
    if unit in ("token", "wad", "ratio", "unix_time"):
        return str(int(value))
    if unit in ("state", "integer"):
        return int(value)
    if unit == "bool":
        return bool(value)
    return str(value)


# --- inputs -------------------------------------------------------------------------------


def _hex(value: Any) -> str:
    if isinstance(value, bytes | bytearray):
        return "0x" + bytes(value).hex()
    text = str(value)
    if hasattr(value, "hex") and not text.startswith("0x"):
        text = value.hex()
    return (text if text.startswith("0x") else "0x" + text).lower()


@dataclass(frozen=True)
class EngineEvent:
    """One decoded engine log: name, arguments, and where it is on the chain."""

    name: str
    args: Mapping[str, Any]
    block: int
    tx_hash: str  # 0x-prefixed, lower case
    log_index: int

    @classmethod
    def from_log(cls, log: Any) -> EngineEvent:
        """From an Ape `ContractLog` or a mapping with the same fields."""

        def get(name: str) -> Any:
            return log[name] if isinstance(log, Mapping) else getattr(log, name)

        return cls(
            name=str(get("event_name")),
            args=dict(get("event_arguments")),
            block=int(get("block_number")),
            tx_hash=_hex(get("transaction_hash")),
            log_index=int(get("log_index")),
        )

    @property
    def account(self) -> str:
        return str(self.args["account"])

    @property
    def position(self) -> tuple[int, int]:
        """Sort key: log order."""
        return self.block, self.log_index

    def as_log(self) -> dict[str, Any]:
        """As `PositionBook.apply` takes it."""
        return {"event_name": self.name, "event_arguments": dict(self.args)}


@dataclass(frozen=True)
class Context:
    """What a message needs to know about the deployment it comes from."""

    chain_id: int
    engine: str
    collateral_decimals: int
    call_ratio: int = 125 * WAD // 100  # wad

    @classmethod
    def from_record(cls, record: Any) -> Context:
        """From a `margincall.deploy.record.DeploymentRecord`."""
        return cls(
            chain_id=int(record.chain_id),
            engine=str(record.engine),
            collateral_decimals=int(record.collateral_decimals),
            call_ratio=int(record.risk_params["call_ratio"]),
        )


# --- messages -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    """One notification to one account; `payload` is the JSON body."""

    key: str
    kind: str
    account: str
    block: int
    payload: Mapping[str, Any]

    @property
    def text(self) -> str:
        return str(self.payload["text"])

    def body(self) -> bytes:
        return json.dumps(self.payload, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_body(cls, body: bytes | str) -> Message:
        payload = json.loads(body)
        return cls(payload["key"], payload["kind"], payload["account"], payload["block"], payload)


def event_key(chain_id: int, tx_hash: str, log_index: int) -> str:
    return f"{chain_id}:{_hex(tx_hash)}:{int(log_index)}"


def warning_key(chain_id: int, engine: str, account: str, since_block: int) -> str:
    return f"{chain_id}:{engine}:warning:{account}:{int(since_block)}"


def _fields(name: str, args: Mapping[str, Any], decimals: int) -> tuple[dict, dict, dict]:
    units = UNITS[name]
    raw = {k: raw_value(args[k], u) for k, u in units.items()}
    human = {k: human_value(args[k], u, decimals) for k, u in units.items()}
    return raw, dict(units), human


def _tok(value: int, decimals: int) -> str:
    return fmt_fixed(int(value), decimals, 2)


def _wad(value: int) -> str:
    return fmt_fixed(int(value), 18, 2)


def _ratio(value: int) -> str:
    return fmt_ratio(int(value), 4)


def _when(timestamp: int) -> str:
    return datetime.fromtimestamp(int(timestamp), UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def event_text(name: str, a: Mapping[str, Any], decimals: int) -> str:
    """The human line of an engine event (amounts rounded down to 2 places)."""
    who = a["account"]
    if name == "MarginCall":
        return (
            f"Margin call on {who}: ratio {_ratio(a['ratio'])} (equity {_wad(a['equity'])}, "
            f"maintenance {_wad(a['maintenance'])}). Deposit or reduce before "
            f"{_when(a['deadline'])}, or the account is liquidated in tranches. "
            f"Call reward paid from the account: {_tok(a['reward'], decimals)}."
        )
    if name == "MarginCallCleared":
        return (
            f"Margin call on {who} cleared: ratio {_ratio(a['ratio'])} "
            f"(equity {_wad(a['equity'])}, maintenance {_wad(a['maintenance'])})."
        )
    if name == "Liquidation":
        closed = (
            "the whole exposure closed"
            if a["full_close"]
            else f"{fmt_fixed(int(a['fraction']) * 100, 18, 2)}% of the exposure closed"
        )
        return (
            f"Liquidation of {who}, tranche {int(a['tranche'])} ({State(int(a['state'])).name}): "
            f"{closed} ({_wad(a['closed_notional'])} notional), penalty "
            f"{_tok(a['penalty'], decimals)}; collateral left {_tok(a['collateral'], decimals)}, "
            f"ratio after {_ratio(a['ratio_after'])}."
        )
    if name == "BadDebt":
        return (
            f"Bad debt on {who}: deficit {_tok(a['amount'], decimals)}, "
            f"{_tok(a['paid_by_fund'], decimals)} paid by the insurance fund, "
            f"{_tok(a['socialised'], decimals)} socialised to the pool."
        )
    raise ValueError(f"no message for event {name!r}")


def event_message(event: EngineEvent, ctx: Context) -> Message | None:
    """The message of a `MarginCall`, `MarginCallCleared`, `Liquidation` or `BadDebt` event;
    `None` for any other event."""
    kind = KINDS.get(event.name)
    if kind is None:
        return None
    raw, units, human = _fields(event.name, event.args, ctx.collateral_decimals)
    key = event_key(ctx.chain_id, event.tx_hash, event.log_index)
    payload = {
        "version": SCHEMA_VERSION,
        "key": key,
        "kind": kind,
        "account": event.account,
        "chain_id": ctx.chain_id,
        "engine": ctx.engine,
        "collateral_decimals": ctx.collateral_decimals,
        "block": event.block,
        "tx_hash": event.tx_hash,
        "log_index": event.log_index,
        "event": event.name,
        "args": raw,
        "units": units,
        "values": human,
        "text": event_text(event.name, event.args, ctx.collateral_decimals),
    }
    return Message(key, kind, event.account, event.block, payload)


def warning_message(
    status: Any, since_block: int, warn_ratio: int, ctx: Context, timestamp: int | None = None
) -> Message:
    """The early warning of an episode that began at `since_block` (`status`: a MarginStatus)."""
    args = {
        "account": _get(status, "account"),
        "ratio": _get(status, "ratio"),
        "warn_ratio": warn_ratio,
        "call_ratio": ctx.call_ratio,
        "equity": _get(status, "equity"),
        "maintenance": _get(status, "maintenance"),
        "collateral": _get(status, "collateral"),
        "state": _get(status, "state"),
    }
    raw, units, human = _fields(EARLY_WARNING, args, ctx.collateral_decimals)
    account = str(args["account"])
    key = warning_key(ctx.chain_id, ctx.engine, account, since_block)
    text = (
        f"Early warning for {account}: margin ratio {_ratio(args['ratio'])} is below the "
        f"warning level {_ratio(warn_ratio)} (margin call at {_ratio(ctx.call_ratio)}); "
        f"equity {_wad(args['equity'])}, maintenance {_wad(args['maintenance'])}. "
        "Deposit or reduce to stay clear of a margin call."
    )
    payload = {
        "version": SCHEMA_VERSION,
        "key": key,
        "kind": EARLY_WARNING,
        "account": account,
        "chain_id": ctx.chain_id,
        "engine": ctx.engine,
        "collateral_decimals": ctx.collateral_decimals,
        "block": int(since_block),
        "timestamp": timestamp,
        "tx_hash": None,
        "log_index": None,
        "event": None,
        "args": raw,
        "units": units,
        "values": human,
        "text": text,
    }
    return Message(key, EARLY_WARNING, account, int(since_block), payload)


def _get(obj: Any, name: str) -> Any:
    return obj[name] if isinstance(obj, Mapping) else getattr(obj, name)


# --- early-warning episodes ---------------------------------------------------------------


@dataclass(frozen=True)
class WarningPolicy:
    """Warn under `warn_ratio`; re-arm at or above `warn_ratio * (1 + hysteresis)` (wad)."""

    warn_ratio: int
    hysteresis: int = 5 * WAD // 100

    def __post_init__(self) -> None:
        if self.warn_ratio <= 0:
            raise ValueError("warn_ratio must be positive")
        if self.hysteresis < 0:
            raise ValueError("hysteresis must not be negative")

    @property
    def rearm_ratio(self) -> int:
        """The ratio at which a finished episode re-arms (rounded up)."""
        return -(-self.warn_ratio * (WAD + self.hysteresis) // WAD)

    def step(self, warned: bool, status: Any) -> tuple[bool, bool]:
        """(warned after, fire now) for an account in its episode state `warned`.

        An unpriced status changes nothing (its ratio is unknown); an account
        without positions (ratio "infinite") re-arms.
        """
        if not bool(_get(status, "priced")):
            return warned, False
        ratio = int(_get(status, "ratio"))
        if ratio < self.warn_ratio:
            return True, not warned
        if ratio >= self.rearm_ratio:
            return False, False
        return warned, False


# --- outbox -------------------------------------------------------------------------------


class OutboxError(RuntimeError):
    """The outbox cannot be used (belongs to another chain or deployment, or is corrupt)."""


@dataclass(frozen=True)
class Pending:
    """An undelivered message as the outbox holds it."""

    seq: int
    key: str
    account: str
    body: bytes
    attempts: int

    @property
    def message(self) -> Message:
        return Message.from_body(self.body)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    account TEXT NOT NULL,
    block INTEGER NOT NULL,
    body BLOB NOT NULL,
    created_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_error TEXT,
    delivered_at REAL
);
CREATE INDEX IF NOT EXISTS messages_pending ON messages (account, seq)
    WHERE delivered_at IS NULL;
CREATE INDEX IF NOT EXISTS messages_due ON messages (next_attempt_at)
    WHERE delivered_at IS NULL;
CREATE TABLE IF NOT EXISTS positions (
    account TEXT NOT NULL, market_id INTEGER NOT NULL, PRIMARY KEY (account, market_id)
);
CREATE TABLE IF NOT EXISTS warnings (account TEXT PRIMARY KEY, since_block INTEGER NOT NULL);
"""


class Outbox:
    """Messages, the log cursor, open positions and warning episodes, in one SQLite file.

    Every write is one transaction. Safe to share between threads (one lock);
    not meant for two processes at once (a second notifier needs its own file).
    """

    def __init__(
        self,
        path: str | Path,
        retry_base: float = 1.0,
        retry_max: float = 60.0,
        clock: Callable[[], float] = time.time,
    ):
        if not 0 < retry_base <= retry_max:
            raise ValueError("retry delays need 0 < retry_base <= retry_max")
        self.path = Path(path)
        self.retry_base = retry_base
        self.retry_max = retry_max
        self.clock = clock
        self._lock = threading.RLock()
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as err:
            raise OutboxError(f"{path}: not a usable outbox ({err})") from None

    # --- transactions ---

    def _tx(self):
        outbox = self

        class _Tx:
            def __enter__(self) -> sqlite3.Connection:
                outbox._lock.acquire()
                outbox._db.execute("BEGIN IMMEDIATE")
                return outbox._db

            def __exit__(self, exc_type, *_: object) -> None:
                try:
                    outbox._db.execute("ROLLBACK" if exc_type else "COMMIT")
                finally:
                    outbox._lock.release()

        return _Tx()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- identity ---

    def meta(self, name: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return row[0] if row else None

    def meta_default(self, name: str, value: str) -> str:
        """The stored value of `name`, storing `value` first if there is none."""
        with self._tx() as db:
            db.execute("INSERT OR IGNORE INTO meta (name, value) VALUES (?, ?)", (name, value))
            return db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()[0]

    def bind(self, identity: Mapping[str, str]) -> None:
        """Stamps a new outbox with `identity` (chain id, engine, its creation block's hash);
        raises `OutboxError` if the outbox was made for something else."""
        with self._tx() as db:
            for name, value in identity.items():
                row = db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
                if row is None:
                    db.execute("INSERT INTO meta (name, value) VALUES (?, ?)", (name, str(value)))
                elif row[0] != str(value):
                    raise OutboxError(
                        f"{self.path} belongs to another deployment or chain ({name} is "
                        f"{row[0]}, not {value}); point MARGINCALL_OUTBOX elsewhere or "
                        "delete the file to start over"
                    )

    # --- cursor ---

    @property
    def cursor(self) -> int | None:
        """The last block whose logs are fully enqueued (None: nothing read yet)."""
        value = self.meta("cursor")
        return None if value is None else int(value)

    # --- writes ---

    def commit(
        self,
        messages: Iterable[Message] = (),
        cursor: int | None = None,
        positions: Mapping[str, Iterable[int]] | None = None,
        warnings: Mapping[str, int | None] | None = None,
    ) -> list[Message]:
        """Enqueues `messages` (ignoring keys already known), moves the cursor, replaces the
        markets of the accounts in `positions` and sets (block) or clears (None) the warning
        episodes in `warnings`, all in one transaction. Returns the newly enqueued messages."""
        now = self.clock()
        added: list[Message] = []
        with self._tx() as db:
            for m in messages:
                cur = db.execute(
                    "INSERT OR IGNORE INTO messages "
                    "(key, kind, account, block, body, created_at, next_attempt_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (m.key, m.kind, m.account, m.block, m.body(), now, now),
                )
                if cur.rowcount:
                    added.append(m)
            if cursor is not None:
                old = db.execute("SELECT value FROM meta WHERE name = 'cursor'").fetchone()
                if old is not None and int(old[0]) > cursor:
                    raise OutboxError(f"cursor would move back from {old[0]} to {cursor}")
                db.execute(
                    "INSERT INTO meta (name, value) VALUES ('cursor', ?) "
                    "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                    (str(cursor),),
                )
            for account, markets in (positions or {}).items():
                db.execute("DELETE FROM positions WHERE account = ?", (account,))
                db.executemany(
                    "INSERT INTO positions (account, market_id) VALUES (?, ?)",
                    [(account, int(m)) for m in markets],
                )
            for account, since in (warnings or {}).items():
                if since is None:
                    db.execute("DELETE FROM warnings WHERE account = ?", (account,))
                else:
                    db.execute(
                        "INSERT INTO warnings (account, since_block) VALUES (?, ?) "
                        "ON CONFLICT (account) DO UPDATE SET since_block = excluded.since_block",
                        (account, int(since)),
                    )
        return added

    def enqueue(self, messages: Iterable[Message]) -> list[Message]:
        """Enqueues messages whose key is new; returns those."""
        return self.commit(messages)

    def delay(self, attempts: int) -> float:
        """Seconds before retry number `attempts + 1` (after `attempts` failures)."""
        return min(self.retry_base * 2 ** max(attempts - 1, 0), self.retry_max)

    def mark_delivered(self, key: str) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE messages SET delivered_at = ?, attempts = attempts + 1, last_error = NULL "
                "WHERE key = ? AND delivered_at IS NULL",
                (self.clock(), key),
            )

    def mark_failed(self, key: str, error: str) -> float:
        """Counts a failed attempt and schedules the next; returns the delay in seconds."""
        with self._tx() as db:
            row = db.execute("SELECT attempts FROM messages WHERE key = ?", (key,)).fetchone()
            if row is None:
                raise KeyError(key)
            attempts = int(row[0]) + 1
            delay = self.delay(attempts)
            db.execute(
                "UPDATE messages SET attempts = ?, next_attempt_at = ?, last_error = ? "
                "WHERE key = ?",
                (attempts, self.clock() + delay, error[:500], key),
            )
        return delay

    # --- reads ---

    def due(self, limit: int = 100, now: float | None = None) -> list[Pending]:
        """Messages to send now: for each account its oldest undelivered message, if its
        retry time has come; oldest first."""
        now = self.clock() if now is None else now
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, key, account, body, attempts FROM messages AS m "
                "WHERE delivered_at IS NULL AND next_attempt_at <= ? AND seq = ("
                "  SELECT MIN(seq) FROM messages AS p "
                "  WHERE p.account = m.account AND p.delivered_at IS NULL) "
                "ORDER BY seq LIMIT ?",
                (now, limit),
            ).fetchall()
        return [Pending(int(s), k, a, bytes(b), int(n)) for s, k, a, b, n in rows]

    def next_due_at(self) -> float | None:
        """When the earliest undelivered message may be tried (None: all delivered)."""
        with self._lock:
            row = self._db.execute(
                "SELECT MIN(next_attempt_at) FROM messages WHERE delivered_at IS NULL"
            ).fetchone()
        return None if row[0] is None else float(row[0])

    def counts(self) -> dict[str, int]:
        with self._lock:
            total, delivered = self._db.execute(
                "SELECT COUNT(*), COUNT(delivered_at) FROM messages"
            ).fetchone()
        return {"total": total, "delivered": delivered, "pending": total - delivered}

    def messages(self, delivered: bool | None = None) -> list[Message]:
        """All messages in enqueue order (filtered by delivery state unless None)."""
        sql = "SELECT body FROM messages"
        if delivered is True:
            sql += " WHERE delivered_at IS NOT NULL"
        elif delivered is False:
            sql += " WHERE delivered_at IS NULL"
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY seq").fetchall()
        return [Message.from_body(bytes(r[0])) for r in rows]

    def attempts(self, key: str) -> int:
        with self._lock:
            row = self._db.execute("SELECT attempts FROM messages WHERE key = ?", (key,)).fetchone()
        if row is None:
            raise KeyError(key)
        return int(row[0])

    def load_book(self) -> PositionBook:
        with self._lock:
            rows = self._db.execute("SELECT account, market_id FROM positions").fetchall()
        book = PositionBook()
        for account, market_id in rows:
            book.markets.setdefault(account, set()).add(int(market_id))
        return book

    def load_warnings(self) -> dict[str, int]:
        """Accounts inside a warning episode -> the block it began."""
        with self._lock:
            rows = self._db.execute("SELECT account, since_block FROM warnings").fetchall()
        return {a: int(b) for a, b in rows}


# --- webhook ------------------------------------------------------------------------------


class DeliveryError(Exception):
    """A delivery attempt failed; the message stays pending."""


class WebhookUnreachable(DeliveryError):
    """No HTTP answer (refused, DNS, timeout): the next messages would fail the same way."""


class WebhookRejected(DeliveryError):
    """The receiver answered with a non-2xx status."""

    def __init__(self, status: int, reason: str = ""):
        self.status = status
        super().__init__(f"HTTP {status} {reason}".strip())


def check_url(url: str) -> str:
    """An absolute http(s) URL, or `ValueError`."""
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError(f"webhook URL must be an absolute http(s) URL, not {url!r}")
    return url


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects are refused: urllib would follow a 301/302/303 as a GET without the body,
    and its 2xx would count as a delivery that never happened."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


class Webhook:
    """POSTs a message's JSON body to `url` with an `Idempotency-Key` header.

    Only a 2xx answer delivers; a redirect (3xx) is a rejection like any other status:
    configure the final URL."""

    def __init__(self, url: str, timeout: float = 5.0, headers: Mapping[str, str] | None = None):
        self.url = check_url(url)
        if timeout <= 0:
            raise ValueError("webhook timeout must be positive")
        self.timeout = timeout
        self.headers = dict(headers or {})

    def send(self, key: str, body: bytes) -> int:
        """Returns the 2xx status; raises `WebhookRejected` or `WebhookUnreachable`."""
        request = urllib.request.Request(
            self.url,
            data=body,
            method="POST",
            headers={
                "Content-Type": "application/json",
                "Idempotency-Key": key,
                "User-Agent": USER_AGENT,
                **self.headers,
            },
        )
        try:
            with _OPENER.open(request, timeout=self.timeout) as response:
                response.read(65_536)
                status = int(response.status)
        except urllib.error.HTTPError as err:
            raise WebhookRejected(err.code, str(err.reason)) from None
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise WebhookUnreachable(f"{type(err).__name__}: {reason}") from None
        if not 200 <= status < 300:
            raise WebhookRejected(status)
        return status


class Sender(Protocol):
    def send(self, key: str, body: bytes) -> int: ...


@dataclass
class DeliveryReport:
    delivered: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    unreachable: bool = False


def deliver(
    outbox: Outbox,
    sender: Sender,
    budget: float = 2.0,
    clock: Callable[[], float] = time.monotonic,
    log: logging.Logger | None = None,
) -> DeliveryReport:
    """Sends due messages until none is due or `budget` seconds have passed.

    A 2xx is committed at once (`mark_delivered`); a non-2xx reschedules that
    message and delivery goes on with other accounts; an unreachable webhook
    ends the round (every other message would wait for the same timeout).
    """
    log = log or logging.getLogger(__name__)
    report = DeliveryReport()
    deadline = clock() + budget
    tried: set[str] = set()
    while clock() < deadline:
        batch = [p for p in outbox.due() if p.key not in tried]
        if not batch:
            break
        for p in batch:
            if clock() >= deadline:
                break
            tried.add(p.key)
            try:
                sender.send(p.key, p.body)
            except DeliveryError as err:
                delay = outbox.mark_failed(p.key, str(err))
                report.failed[p.key] = str(err)
                log.warning(
                    f"notify: delivery of {p.key} failed (attempt {p.attempts + 1}: {err}); "
                    f"retry in {delay:.1f} s"
                )
                if isinstance(err, WebhookUnreachable):
                    report.unreachable = True
                    return report
                continue
            outbox.mark_delivered(p.key)
            report.delivered.append(p.key)
            log.info(f"notify: delivered {p.key}")
    return report


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


# --- configuration ------------------------------------------------------------------------


class NotifierConfigError(ValueError):
    """A notifier setting is missing or malformed."""


ENV_PREFIX = "MARGINCALL_"
DEFAULT_OUTBOX_DIR = Path(".margincall")

#: The notifier's settings: env var -> (default, meaning). docs/bots.md lists the same.
ENV_VARS: dict[str, tuple[str | None, str]] = {
    "MARGINCALL_DEPLOYMENT": (
        None,
        "deployment record JSON (default: deployments/<ecosystem>-<network>.json of the network)",
    ),
    "MARGINCALL_WEBHOOK_URL": (
        None,
        "http(s) URL to POST every message to; unset: log only (messages are marked "
        "delivered once logged)",
    ),
    "MARGINCALL_OUTBOX": (
        None,
        "SQLite outbox (default: .margincall/notifier-<chain id>-<engine>.sqlite)",
    ),
    "MARGINCALL_WARN_RATIO": ("1.5", "early warning under this ratio; 'off' disables"),
    "MARGINCALL_WARN_HYSTERESIS": ("0.05", "an episode ends at warn_ratio * (1 + this)"),
    "MARGINCALL_CONFIRMATIONS": ("0", "read logs up to head minus this many blocks"),
    "MARGINCALL_NOTIFY_FROM": ("deployment", "first block notified: deployment, head or N"),
    "MARGINCALL_LOG_CHUNK": ("2000", "blocks per eth_getLogs request"),
    "MARGINCALL_WEBHOOK_TIMEOUT": ("5", "seconds per POST"),
    "MARGINCALL_RETRY_BASE": ("1", "seconds before a failed message's first retry (doubles)"),
    "MARGINCALL_RETRY_MAX": ("60", "longest delay between two retries of one message, seconds"),
    "MARGINCALL_DELIVERY_BUDGET": (
        "2",
        "seconds one delivery round may take before the courier looks at the outbox again",
    ),
}


def _dec(env: Mapping[str, str], name: str) -> Decimal:
    raw = env.get(name) or ENV_VARS[name][0] or ""
    try:
        value = Decimal(raw.strip())
    except InvalidOperation:
        raise NotifierConfigError(f"{name} must be a number, not {raw!r}") from None
    if not value.is_finite():
        raise NotifierConfigError(f"{name} must be a finite number, not {raw!r}")
    return value


def _positive(env: Mapping[str, str], name: str) -> float:
    value = _dec(env, name)
    if value <= 0:
        raise NotifierConfigError(f"{name} must be positive, not {env.get(name)!r}")
    return float(value)


def _count(env: Mapping[str, str], name: str, minimum: int) -> int:
    raw = (env.get(name) or ENV_VARS[name][0] or "").strip()
    if not raw.isdigit() or int(raw) < minimum:
        raise NotifierConfigError(f"{name} must be an integer >= {minimum}, not {raw!r}")
    return int(raw)


def _wad_of(value: Decimal, name: str) -> int:
    scaled = value * WAD
    if scaled != scaled.to_integral_value():
        raise NotifierConfigError(f"{name} has more than 18 decimals")
    return int(scaled)


@dataclass(frozen=True)
class NotifierConfig:
    """The notifier's settings (from `MARGINCALL_*` env vars; see `ENV_VARS`)."""

    deployment: Path
    webhook_url: str | None = None
    outbox: Path | None = None  # None: default_outbox(record)
    warn_ratio: int | None = 3 * WAD // 2  # wad; None: no early warnings
    hysteresis: int = 5 * WAD // 100  # wad fraction
    confirmations: int = 0
    notify_from: str = "deployment"  # "deployment", "head" or a block number
    log_chunk: int = 2_000
    webhook_timeout: float = 5.0
    retry_base: float = 1.0
    retry_max: float = 60.0
    delivery_budget: float = 2.0

    @classmethod
    def from_env(
        cls, env: Mapping[str, str], default_deployment: str | Path | None = None
    ) -> NotifierConfig:
        """Reads and checks every setting; `NotifierConfigError` names the bad one."""
        deployment = env.get("MARGINCALL_DEPLOYMENT") or default_deployment
        if not deployment:
            raise NotifierConfigError("MARGINCALL_DEPLOYMENT: the deployment record is required")
        url = (env.get("MARGINCALL_WEBHOOK_URL") or "").strip() or None
        if url is not None:
            try:
                check_url(url)
            except ValueError as err:
                raise NotifierConfigError(f"MARGINCALL_WEBHOOK_URL: {err}") from None
        outbox = (env.get("MARGINCALL_OUTBOX") or "").strip() or None

        warn_raw = (env.get("MARGINCALL_WARN_RATIO") or "").strip().lower()
        warn: int | None
        if warn_raw in ("off", "none", "0", "false", "no"):
            warn = None
        else:
            value = _dec(env, "MARGINCALL_WARN_RATIO")
            if value <= 0:
                raise NotifierConfigError(
                    f"MARGINCALL_WARN_RATIO must be positive or 'off', not {warn_raw!r}"
                )
            warn = _wad_of(value, "MARGINCALL_WARN_RATIO")
        hysteresis = _dec(env, "MARGINCALL_WARN_HYSTERESIS")
        if not 0 <= hysteresis <= 10:
            raise NotifierConfigError(
                f"MARGINCALL_WARN_HYSTERESIS must be in 0..10, not {str(hysteresis)!r}"
            )
        notify_from = (env.get("MARGINCALL_NOTIFY_FROM") or "deployment").strip().lower()
        if notify_from not in ("deployment", "head") and not notify_from.isdigit():
            raise NotifierConfigError(
                "MARGINCALL_NOTIFY_FROM must be 'deployment', 'head' or a block number, "
                f"not {notify_from!r}"
            )
        retry_base = _positive(env, "MARGINCALL_RETRY_BASE")
        retry_max = _positive(env, "MARGINCALL_RETRY_MAX")
        if retry_max < retry_base:
            raise NotifierConfigError("MARGINCALL_RETRY_MAX must be >= MARGINCALL_RETRY_BASE")
        return cls(
            deployment=Path(deployment),
            webhook_url=url,
            outbox=Path(outbox) if outbox else None,
            warn_ratio=warn,
            hysteresis=_wad_of(hysteresis, "MARGINCALL_WARN_HYSTERESIS"),
            confirmations=_count(env, "MARGINCALL_CONFIRMATIONS", 0),
            notify_from=notify_from,
            log_chunk=_count(env, "MARGINCALL_LOG_CHUNK", 1),
            webhook_timeout=_positive(env, "MARGINCALL_WEBHOOK_TIMEOUT"),
            retry_base=retry_base,
            retry_max=retry_max,
            delivery_budget=_positive(env, "MARGINCALL_DELIVERY_BUDGET"),
        )

    @property
    def policy(self) -> WarningPolicy | None:
        return None if self.warn_ratio is None else WarningPolicy(self.warn_ratio, self.hysteresis)

    def outbox_path(self, record: Any) -> Path:
        return self.outbox or default_outbox(record)

    def first_notified_block(self, record_block: int, head: int) -> int:
        """The block `notify_from` stands for now ("head": the block after `head`)."""
        if self.notify_from == "deployment":
            return record_block
        if self.notify_from == "head":
            return head + 1
        return int(self.notify_from)


def default_outbox(record: Any, directory: str | Path = DEFAULT_OUTBOX_DIR) -> Path:
    """`.margincall/notifier-<chain id>-<engine>.sqlite`: one outbox per deployment."""
    return Path(directory) / f"notifier-{record.chain_id}-{str(record.engine).lower()}.sqlite"


def notifier_env(
    deployment: str | Path | None = None,
    webhook_url: str | None = None,
    outbox: str | Path | None = None,
    warn_ratio: str | float | None = None,
    warn_hysteresis: str | float | None = None,
    confirmations: int | None = None,
    notify_from: str | int | None = None,
    log_chunk: int | None = None,
    webhook_timeout: float | None = None,
    retry_base: float | None = None,
    retry_max: float | None = None,
    delivery_budget: float | None = None,
) -> dict[str, str]:
    """CLI-style options as the `MARGINCALL_*` env dict the bot reads (None: left out),
    checked with the bot's own rules (`NotifierConfigError`)."""
    values = {
        "MARGINCALL_DEPLOYMENT": deployment,
        "MARGINCALL_WEBHOOK_URL": webhook_url,
        "MARGINCALL_OUTBOX": outbox,
        "MARGINCALL_WARN_RATIO": warn_ratio,
        "MARGINCALL_WARN_HYSTERESIS": warn_hysteresis,
        "MARGINCALL_CONFIRMATIONS": confirmations,
        "MARGINCALL_NOTIFY_FROM": notify_from,
        "MARGINCALL_LOG_CHUNK": log_chunk,
        "MARGINCALL_WEBHOOK_TIMEOUT": webhook_timeout,
        "MARGINCALL_RETRY_BASE": retry_base,
        "MARGINCALL_RETRY_MAX": retry_max,
        "MARGINCALL_DELIVERY_BUDGET": delivery_budget,
    }
    env = {k: str(v) for k, v in values.items() if v is not None}
    NotifierConfig.from_env(env, default_deployment="-")  # raises on a bad value
    return env


# --- Ape adapter (used by bots/notifier.py) -----------------------------------------------


class ApeSource:
    """`ChainSource` over a connected Ape provider: one `eth_getLogs` per block range for the
    watched events of the engine, and the SDK's batched `check_margins`."""

    def __init__(self, provider: Any, engine_contract: Any, client: Any):
        from eth_utils import keccak

        self.provider = provider
        self.address = str(engine_contract.address)
        self.client = client
        self.abis = [getattr(engine_contract, name).abi for name in WATCHED_EVENTS]
        self.topics = ["0x" + keccak(text=abi.selector).hex() for abi in self.abis]

    def logs(self, start: int, stop: int) -> list[EngineEvent]:
        raw = self.provider.make_request(
            "eth_getLogs",
            [
                {
                    "address": self.address,
                    "fromBlock": hex(start),
                    "toBlock": hex(stop),
                    "topics": [self.topics],
                }
            ],
        )
        decoded = self.provider.network.ecosystem.decode_logs(list(raw), *self.abis)
        return [EngineEvent.from_log(log) for log in decoded]

    def statuses(self, accounts: Sequence[str]) -> list[Any]:
        return list(self.client.statuses(accounts))


__all__ = [
    "EARLY_WARNING",
    "ENV_VARS",
    "KINDS",
    "UNITS",
    "WATCHED_EVENTS",
    "ApeSource",
    "ChainSource",
    "Context",
    "Courier",
    "DeliveryError",
    "DeliveryReport",
    "EngineEvent",
    "Message",
    "Notifier",
    "NotifierConfig",
    "NotifierConfigError",
    "Outbox",
    "OutboxError",
    "Pending",
    "TickReport",
    "WarningPolicy",
    "Webhook",
    "WebhookRejected",
    "WebhookUnreachable",
    "check_url",
    "default_outbox",
    "deliver",
    "event_key",
    "event_message",
    "human_value",
    "notifier_env",
    "raw_value",
    "warning_key",
    "warning_message",
]

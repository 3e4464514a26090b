"""`Outbox` (SQLite): `enqueue` is an `INSERT OR IGNORE` on the key, so a restart that
re-reads logs never duplicates a message; a cursor (the last block whose logs are fully
enqueued), the open positions and the warning episodes are committed in the same transaction
as the messages, so a crash at any point resumes exactly where the last commit left off.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from margincall.notify.messages import Message
from margincall.sdk.book import PositionBook

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

    def failed_attempts(self) -> int:
        """Delivery attempts that failed, over all messages (each delivered one counts one
        successful attempt)."""
        with self._lock:
            attempts, delivered = self._db.execute(
                "SELECT COALESCE(SUM(attempts), 0), COUNT(delivered_at) FROM messages"
            ).fetchone()
        return int(attempts) - int(delivered)

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


def outbox_progress(path: Path) -> tuple[int, int] | None:
    """(cursor, undelivered messages) of the notifier's outbox, read-only; None when it
    cannot be read yet."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1)
        try:
            row = db.execute("SELECT value FROM meta WHERE name = 'cursor'").fetchone()
            (pending,) = db.execute(
                "SELECT COUNT(*) FROM messages WHERE delivered_at IS NULL"
            ).fetchone()
        finally:
            db.close()
    except sqlite3.Error:
        return None
    return (int(row[0]) if row else -1), int(pending)

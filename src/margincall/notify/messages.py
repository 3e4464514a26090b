"""Messages: one per `MarginCall`, `MarginCallCleared`, `Liquidation` and `BadDebt` event,
addressed to the account the event concerns, and one per early-warning episode (a warning
when an account's ratio falls under `warn_ratio`, re-armed only once the ratio is back at or
above `warn_ratio * (1 + hysteresis)`). Each message is a JSON object with the raw event
fields (integers as decimal strings), their units, human values and a text line (schema in
docs/bots.md), under an idempotency key: `<chain id>:<tx hash>:<log index>` for an event,
`<chain id>:<engine>:warning:<account>:<block the episode began>` for a warning.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from margincall.constants import WAD, State
from margincall.report import fmt_fixed, fmt_ratio

MAX_UINT = 2**256 - 1
SCHEMA_VERSION = 1

# --- events and their units ---------------------------------------------------------------

#: Engine events that become messages, and the message `kind` of each.
KINDS: dict[str, str] = {
    "MarginCall": "margin_call",
    "MarginCallCleared": "margin_call_cleared",
    "Liquidation": "liquidation",
    "BadDebt": "bad_debt",
}
#: The order book's events that become messages (PROTOCOL.md section 5b): an order filled at
#: its settlement price, or cancelled (refused at settlement with the engine's reason, or
#: expired); the kind of a cancel says which.
ORDER_KINDS: dict[str, str] = {
    "OrderSettled": "order_settled",
    "OrderCancelled": "order_refused",
}
ORDER_EXPIRED = "order_expired"  # an OrderCancelled whose reason is the expiry
EARLY_WARNING = "early_warning"
#: Every engine event the notifier reads: the message events and the position book's.
WATCHED_EVENTS: tuple[str, ...] = (*KINDS, "PositionChanged")
#: Every order book event the notifier reads.
WATCHED_ORDER_EVENTS: tuple[str, ...] = tuple(ORDER_KINDS)

# Units of the message fields (docs/design.md "Events"):
#   token        token units of the collateral (divide by 10**collateral_decimals)
#   wad          18-decimal fixed point (divide by 10**18); may be negative (equity)
#   ratio        wad; 2**256 - 1 means "no position" (infinite)
#   unix_time    seconds since the epoch
#   state        the engine's account state (0 HEALTHY ... 5 BANKRUPT)
#   id           an order id (account << 96 | commit time << 8 | slot): decimal string raw,
#                hex for people
#   integer, bool, address, text: as they are
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
    "OrderSettled": {
        "order_id": "id",
        "account": "address",
        "settler": "address",
        "market_id": "integer",
        "size_delta": "wad",
        "price": "wad",
        "round_id": "integer",
        "fee": "token",
    },
    "OrderCancelled": {
        "order_id": "id",
        "account": "address",
        "caller": "address",
        "reason": "text",
        "refund": "token",
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
    if unit == "id":
        return f"{int(value):#x}"
    if unit == "bool":
        return bool(value)
    return str(value)


def raw_value(value: Any, unit: str) -> Any:
    """A field's raw value for JSON: integers as decimal strings (exact in any language)."""
    if unit in ("token", "wad", "ratio", "unix_time"):
        return str(int(value))
    if unit == "id":  # an order id passes 2**53: a decimal string, exact in any language
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
            f"{_when(a['deadline'])}, or the account is liquidated in tranches (unless the "
            f"price brings it back to the call ratio before then: the call then clears "
            f"itself and a new call is needed). "
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
    if name == "OrderSettled":
        side = "bought" if int(a["size_delta"]) > 0 else "sold"
        return (
            f"Order {int(a['order_id']):#x} of {who} settled: {side}"
            f" {fmt_fixed(abs(int(a['size_delta'])), 18, 4)} (market {int(a['market_id'])}) at"
            f" {_wad(a['price'])}, the first price published after the commit (round"
            f" {int(a['round_id'])}); settlement fee {_tok(a['fee'], decimals)}."
        )
    if name == "OrderCancelled":
        what = "expired and was cancelled" if _expired(a) else "was refused at settlement"
        return (
            f"Order {int(a['order_id']):#x} of {who} {what}: {a['reason']}."
            f" Fee refunded to the collateral: {_tok(a['refund'], decimals)}."
        )
    if name == "BadDebt":
        return (
            f"Bad debt on {who}: deficit {_tok(a['amount'], decimals)}, "
            f"{_tok(a['paid_by_fund'], decimals)} paid by the insurance fund, "
            f"{_tok(a['socialised'], decimals)} socialised to the pool."
        )
    raise ValueError(f"no message for event {name!r}")


def _expired(args: Mapping[str, Any]) -> bool:
    return str(args["reason"]) == "book: expired"


def event_message(event: EngineEvent, ctx: Context) -> Message | None:
    """The message of a `MarginCall`, `MarginCallCleared`, `Liquidation` or `BadDebt` event,
    or of the book's `OrderSettled` / `OrderCancelled`; `None` for any other event."""
    kind = KINDS.get(event.name) or ORDER_KINDS.get(event.name)
    if kind is None:
        return None
    if event.name == "OrderCancelled" and _expired(event.args):
        kind = ORDER_EXPIRED
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

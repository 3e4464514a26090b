"""What the state machine needs from a chain, whatever runs it (titanoboa or Anvil via Ape).

`tests/stateful/machine.py` holds the rules, the model and the invariants; it talks to the
contracts only through a `Driver`: views are plain contract calls (both backends take the
same arguments and return tuples or structs with named fields), transactions go through
`send`, which returns a `Sent` (success or revert reason, decoded events) instead of raising,
and time moves through `now`/`travel`. `boa_system.BoaDriver` and `ape_system.ApeDriver` fill
in the backend-specific parts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from margincall.constants import WAD
from margincall.deploy import DEFAULT_MARKETS, MarketSpec
from margincall.math import RiskParams

# The fuzzed markets: the default three, with feed bounds a fault can leave (an eighth and
# eight times the starting price; prices stay inside [start / 4, start * 3]) and a heartbeat
# that a few long waits without a price update can outlast.
HEARTBEAT = 6 * 3_600
FUZZ_MARKETS: tuple[MarketSpec, ...] = tuple(
    dataclasses.replace(
        m,
        heartbeat=HEARTBEAT,
        min_price=int(m.price * WAD) // 8,
        max_price=int(m.price * WAD) * 8,
    )
    for m in DEFAULT_MARKETS
)

N_TRADERS = 3
LP_LIQUIDITY = 10_000_000  # whole tokens
FUND_SEED = 50  # whole tokens: small, so bad debt is sometimes socialised
# the pool's deposit cooldown in the fuzzed systems: short next to the machine's time steps,
# so LPs both meet the lock and get past it (the `set_cooldown` rule changes it)
POOL_COOLDOWN = 60
TRADER_TOKENS = 10**9  # whole tokens minted to each trader and to the donor


@dataclass(frozen=True)
class Actors:
    """Addresses by role. The keepers double as strangers to the admin functions."""

    owner: str
    guardian: str
    lps: tuple[str, str]  # the first seeds the pool; the second joins during the run
    keepers: tuple[str, str]
    donor: str
    traders: tuple[str, ...]


class Ev:
    """One decoded event: its name, the emitting contract and its fields as attributes."""

    __slots__ = ("name", "address", "fields")

    def __init__(self, name: str, address: str, fields: dict[str, Any]):
        self.name = name
        self.address = address
        self.fields = fields

    def __getattr__(self, key: str) -> Any:
        try:
            return self.fields[key]
        except KeyError:
            raise AttributeError(key) from None

    def __repr__(self) -> str:
        return f"{self.name}{self.fields}"


@dataclass
class Sent:
    """The outcome of one transaction: `ok` or the revert `reason`, and its events.

    `value` is the function's return value when the backend gives it for free (titanoboa);
    Ape would need a trace for it, so there it is None and the machine reads events.
    """

    ok: bool
    reason: str | None = None
    value: Any = None
    events: list[Ev] = field(default_factory=list)

    def of(self, contract: Any, name: str) -> list[Ev]:
        """The events named `name` emitted by `contract`."""
        address = str(contract.address).lower()
        return [e for e in self.events if e.name == name and str(e.address).lower() == address]


@dataclass(frozen=True)
class RawAccount:
    """The engine's raw account record and positions (no prices)."""

    collateral: int
    markets: int
    deadline: int
    last_tranche: int
    tranches: int
    positions: tuple[tuple[int, int, int], ...]  # (market id, size, open notional)


class Driver:
    """A deployed system plus the backend operations the machine uses.

    Subclasses set the contract handles and actors and implement `now`, `travel`, `send`,
    `start_example` and `end_example`. Reads that only transactions can change are cached
    until the next `send` (raw accounts) or `forget` (market configs, risk parameters).
    """

    token: Any
    pool: Any
    fund: Any
    engine: Any
    lens: Any  # MarginLens: check_margins, preview_liquidation
    feeds: list
    oracles: list
    markets: tuple[MarketSpec, ...]
    decimals: int
    actors: Actors
    book: Any  # OrderBook: commit, settle and cancel orders (the only way to trade)

    def __init__(self) -> None:
        self._raw: dict[str, RawAccount] = {}
        self._configs: dict[int, Any] = {}
        self._params: RiskParams | None = None
        self.sent = 0  # transactions sent so far

    # --- backend ---------------------------------------------------------------

    def now(self) -> int:
        """The time views see and the next transaction will carry."""
        raise NotImplementedError

    def travel(self, seconds: int) -> None:
        raise NotImplementedError

    def _send(self, contract: Any, fn: str, args: tuple, sender: str) -> Sent:
        raise NotImplementedError

    def try_call(self, contract: Any, fn: str, *args: Any) -> tuple[bool, Any]:
        """A view call: (True, result) or (False, revert reason)."""
        raise NotImplementedError

    def start_example(self) -> None:
        """Marks the state every example starts from (an anchor or a snapshot)."""
        raise NotImplementedError

    def end_example(self) -> None:
        """Returns to the state `start_example` marked."""
        raise NotImplementedError

    # --- shared ---------------------------------------------------------------

    def send(self, contract: Any, fn: str, *args: Any, sender: str) -> Sent:
        """Sends one transaction as `sender` (an actor's address); never raises on a revert."""
        if contract is self.engine or contract is self.book:  # they write account records
            self._raw.clear()
        self.sent += 1
        return self._send(contract, fn, args, sender)

    def forget(self) -> None:
        """Drops every cached read (after a revert to the start, or a change of settings)."""
        self._raw.clear()
        self._configs.clear()
        self._params = None

    @property
    def scale(self) -> int:
        return 10 ** (18 - self.decimals)

    @property
    def unit(self) -> int:
        return 10**self.decimals

    def mul(self, market_id: int) -> int:
        """Feed answer to wad: the adapter's multiplier (every fuzzed feed has <= 18 decimals)."""
        return 10 ** (18 - self.markets[market_id].feed_decimals)

    def config(self, market_id: int) -> Any:
        if market_id not in self._configs:
            self._configs[market_id] = self.engine.markets(market_id)
        return self._configs[market_id]

    def risk_params(self) -> RiskParams:
        if self._params is None:
            rp = self.engine.risk_params()
            self._params = RiskParams(
                **{f: int(getattr(rp, f)) for f in RiskParams.__dataclass_fields__}
            )
        return self._params

    def raw_account(self, who: str) -> RawAccount:
        if who not in self._raw:
            collateral, bits, deadline, last, tranches = self.engine.account_info(who)
            positions = []
            for m in range(len(self.markets)):
                if (bits >> m) & 1:
                    size, cost = self.engine.position(who, m)
                    positions.append((m, int(size), int(cost)))
            self._raw[who] = RawAccount(
                int(collateral),
                int(bits),
                int(deadline),
                int(last),
                int(tranches),
                tuple(positions),
            )
        return self._raw[who]

    def window_room(self, now: int, params: RiskParams) -> dict[int, int]:
        """What each market's liquidation window cap still admits (wad notional)."""
        room = {}
        for m in range(len(self.markets)):
            start, used = self.engine.window_state(m)
            if now >= start + params.liquidation_window:
                used = 0
            room[m] = int(self.config(m).window_cap) - int(used)
        return room

    def balance(self, who: str) -> int:
        return int(self.token.balanceOf(who))

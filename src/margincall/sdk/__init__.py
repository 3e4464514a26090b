"""Typed SDK over every margincall contract: the only door to the contracts.

- `MarginEngineClient` (`engine`): margin accounts, trades, margin calls, liquidations;
- `PoolClient` (`pool`): the LP pool (ERC-4626): assets, share price, the open-interest
  reserve, deposits, redemptions and withdrawals;
- `FundClient` (`fund`): the insurance fund: balance, donations, its payments to keepers;
- `OrderBookClient` (`orders`): commit orders, find their settlement round, settle them
  (one or in batches), cancel expired ones; positions change only through orders;
- `OracleClient` (`oracle`): one market's oracle adapter: price, validity, reason, settings;
- `Clients` (`clients`): all four over one deployed system (`Clients.from_system`,
  `Clients.from_record`);
- `types`: the frozen dataclasses the clients return; `errors`: the typed errors they raise;
- `events`: the one reader and decoder of the contracts' event logs (`RawEvent`) and the
  fast `check_margins` decoder (`decode_statuses`).

Everything the CLI, the bots, the scripts, the simulator and the tests do with the contracts
goes through these clients (tests/unit/test_sdk_door.py keeps it so). Reads come back as
frozen dataclasses with plain integers (wad for values and ratios, token units for token
amounts, as the engine documents). Every sender checks first, with the engine's own views
and the reference math of `margincall.math`, and raises a typed `MarginCallError` with a
clear message instead of sending a transaction that would revert.
"""

from margincall.constants import State
from margincall.sdk.book import PositionBook, open_accounts
from margincall.sdk.clients import (
    Clients,
)
from margincall.sdk.engine import (
    MarginEngineClient,
    lens_of,
)
from margincall.sdk.errors import (
    InsufficientFunds,
    InsufficientMargin,
    InvalidRequest,
    MarginCallError,
    NotCallable,
    NotLiquidatable,
    OracleError,
    ReserveLocked,
    SharesLocked,
    SlippageExceeded,
    StalePrice,
    TooSoon,
    UnderMarginCall,
    WindowFull,
)
from margincall.sdk.events import RawEvent, decode_statuses, get_logs
from margincall.sdk.fund import (
    FundClient,
    FundState,
)
from margincall.sdk.oracle import (
    FeedSettings,
    OracleClient,
    OracleStatus,
)
from margincall.sdk.orders import (
    OrderBookClient,
    OrderOutcome,
    PendingOrder,
)
from margincall.sdk.pool import (
    LpPosition,
    PoolClient,
    PoolState,
)
from margincall.sdk.types import (
    AccountRecord,
    Call,
    LiquidationPreview,
    MarginStatus,
    Market,
    Position,
    chunks,
)

__all__ = [
    "Call",
    "AccountRecord",
    "Clients",
    "FeedSettings",
    "FundClient",
    "FundState",
    "InsufficientFunds",
    "InsufficientMargin",
    "InvalidRequest",
    "LiquidationPreview",
    "LpPosition",
    "MarginCallError",
    "MarginEngineClient",
    "lens_of",
    "MarginStatus",
    "Market",
    "NotCallable",
    "NotLiquidatable",
    "OracleClient",
    "OracleError",
    "OracleStatus",
    "OrderBookClient",
    "OrderOutcome",
    "PendingOrder",
    "PoolClient",
    "PoolState",
    "Position",
    "PositionBook",
    "RawEvent",
    "ReserveLocked",
    "SharesLocked",
    "SlippageExceeded",
    "StalePrice",
    "State",
    "TooSoon",
    "UnderMarginCall",
    "WindowFull",
    "chunks",
    "decode_statuses",
    "get_logs",
    "open_accounts",
]

"""Protocol constants shared by the SDK, scripts and tests (mirrors MarginEngine.vy)."""

from enum import IntEnum

WAD = 10**18
MAX_MARKETS = 16
MAX_POSITIONS = 5
MAX_SCAN = 500
MAX_BATCH = 100
# EIP-7825 (Ethereum's Fusaka upgrade): no transaction may use more gas than this
TX_GAS_CAP = 2**24


class State(IntEnum):
    """Account states, in the engine's numbering (PROTOCOL.md section 2)."""

    HEALTHY = 0
    CALLABLE = 1
    CALLED = 2
    LIQUIDATABLE = 3
    CRITICAL = 4
    BANKRUPT = 5


class PlanCode(IntEnum):
    """`preview_liquidation(...).reason`: why a `liquidate` call would revert."""

    OK = 0
    NOT_LIQUIDATABLE = 1
    TOO_SOON = 2
    WINDOW_FULL = 3

"""The operations settings both bots share (`OpsSettings`), from `MARGINCALL_*` variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

DEV_CHAIN_IDS = (1337, 31337)  # automining dev chains: the head moves only with transactions

#: variable -> (default, meaning); docs/bots.md lists the same, `margincall keeper --help` too.
OPS_VARS: dict[str, tuple[str, str]] = {
    "MARGINCALL_METRICS_HOST": ("127.0.0.1", "address the /metrics and /health server binds"),
    "MARGINCALL_METRICS_PORT": (
        "off",
        "port of the /metrics and /health server; 0 picks a free port; off: no server",
    ),
    "MARGINCALL_RPC_TIMEOUT": ("5", "seconds before any RPC call of the bot gives up"),
    "MARGINCALL_WATCH_INTERVAL": ("1", "seconds between two watchdog probes of the node"),
    "MARGINCALL_STALL_BLOCKS": ("10", "block times without a new head before /health fails"),
    "MARGINCALL_STALL_AFTER": (
        "",
        "seconds without a new head before /health fails (0: never); default: "
        "MARGINCALL_STALL_BLOCKS x MARGINCALL_BLOCK_TIME, else x the measured block time, "
        "and never on dev chains 1337 and 31337",
    ),
    "MARGINCALL_RESET_DEPTH": ("16", "blocks the head may go back before it is a chain reset"),
}


class OpsConfigError(ValueError):
    """An operations setting is malformed."""


def _number(env: Mapping[str, str], name: str, positive: bool = True) -> float | None:
    raw = (env.get(name) or OPS_VARS[name][0]).strip()
    if raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        raise OpsConfigError(f"{name} must be a number, not {raw!r}") from None
    if not value == value or value in (float("inf"), float("-inf")) or value < 0:
        raise OpsConfigError(f"{name} must be a finite number >= 0, not {raw!r}")
    if positive and value == 0:
        raise OpsConfigError(f"{name} must be positive, not {raw!r}")
    return value


@dataclass(frozen=True)
class OpsSettings:
    host: str = "127.0.0.1"
    port: int | None = None  # None: no server
    rpc_timeout: float = 5.0
    interval: float = 1.0
    stall_blocks: int = 10
    stall_after: float | None = None  # None: from the block time; 0: never
    block_time: float | None = None
    reset_depth: int = 16

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OpsSettings:
        env = os.environ if env is None else env
        raw_port = (env.get("MARGINCALL_METRICS_PORT") or "off").strip().lower()
        if raw_port in ("off", "none", ""):
            port = None
        elif raw_port.isdigit() and int(raw_port) <= 65_535:
            port = int(raw_port)
        else:
            raise OpsConfigError(
                f"MARGINCALL_METRICS_PORT must be a port (0-65535) or off, not {raw_port!r}"
            )
        stall_blocks = _number(env, "MARGINCALL_STALL_BLOCKS")
        depth = _number(env, "MARGINCALL_RESET_DEPTH", positive=False)
        block_time = (env.get("MARGINCALL_BLOCK_TIME") or "").strip()
        return cls(
            host=(env.get("MARGINCALL_METRICS_HOST") or "127.0.0.1").strip(),
            port=port,
            rpc_timeout=_number(env, "MARGINCALL_RPC_TIMEOUT") or 5.0,
            interval=_number(env, "MARGINCALL_WATCH_INTERVAL") or 1.0,
            stall_blocks=int(stall_blocks or 10),
            stall_after=_number(env, "MARGINCALL_STALL_AFTER", positive=False),
            block_time=float(block_time) if block_time.isdigit() and int(block_time) else None,
            reset_depth=int(depth if depth is not None else 16),
        )

    def stall_limit(self, chain_id: int | None) -> tuple[float | None, bool]:
        """(seconds without a new head before `head_stalled`, or None; measure the block
        time from the heads instead)."""
        if self.stall_after is not None:
            return (self.stall_after or None), False
        if self.block_time:
            return self.stall_blocks * self.block_time, False
        return None, chain_id not in DEV_CHAIN_IDS


def check_env(env: Mapping[str, str]) -> None:
    """Raises `OpsConfigError` naming the first malformed variable."""
    OpsSettings.from_env(env)


__all__ = ["DEV_CHAIN_IDS", "OPS_VARS", "OpsConfigError", "OpsSettings", "check_env"]

"""The notifier's settings (`NotifierConfig`), from `MARGINCALL_*` environment variables."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from margincall.constants import WAD
from margincall.notify.messages import WarningPolicy
from margincall.notify.webhook import check_url

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

"""A timeout on every RPC call a bot makes through web3 (`apply_rpc_timeout`).

Ape's providers build web3's `HTTPProvider` with a 30 s timeout (ape-foundry) or 30 min
(a plain node), and web3 retries a timed-out read call five times: a frozen node then
holds a bot's head poll, or a handler, for minutes, silently. The bots' runner calls
`apply_rpc_timeout(web3, MARGINCALL_RPC_TIMEOUT)` before the bot starts: every request
then gives up after that many seconds, and only refused connections are retried (twice,
quickly); a timeout surfaces at once as an error the runner and the handlers log.
"""

from __future__ import annotations

from typing import Any


def _http_providers(web3: Any) -> list[Any]:
    provider = getattr(web3, "provider", None)
    found = []
    for candidate in (provider, getattr(provider, "_active_provider", None)):
        if candidate is not None and hasattr(candidate, "_request_kwargs"):
            found.append(candidate)
    return found


def apply_rpc_timeout(web3: Any, seconds: float) -> int:
    """Sets `seconds` as the request timeout of `web3`'s HTTP provider(s); returns how many
    providers it set (0: not an HTTP provider, e.g. IPC or websocket)."""
    import requests
    from web3.providers.rpc.utils import ExceptionRetryConfiguration

    providers = _http_providers(web3)
    for p in providers:
        p._request_kwargs = {**(p._request_kwargs or {}), "timeout": seconds}
        p._exception_retry_configuration = ExceptionRetryConfiguration(
            errors=(requests.ConnectionError,), retries=2, backoff_factor=0.1
        )
    return len(providers)


__all__ = ["apply_rpc_timeout"]

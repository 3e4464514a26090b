"""The node a command talks to, checked before Ape connects: the CLI never starts one.

On a local network (`ethereum:local[:foundry]`, Ape's default here) Ape's foundry provider
quietly starts an empty Anvil when nothing answers at its host, and the command then meets
an empty chain. The CLI's commands instead talk to the node at `APE_FOUNDRY_HOST` (default
`http://127.0.0.1:8545`, where the README's `anvil --port 8545` listens) and, when no node
answers there within `PROBE_TIMEOUT` seconds (down, or frozen), stop with one line.

`rpc` is a minimal JSON-RPC client on the standard library (no web3, no Ape): the fast
`status` path and the `dev` helpers use it.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import Any

import click

DEFAULT_LOCAL_NODE = "http://127.0.0.1:8545"
PROBE_TIMEOUT = 3.0
LOCAL_CHAIN_ID = 31337


class NodeError(Exception):
    """No answer (or an error) from the node."""


def local_network(choice: str | None) -> bool:
    """Whether an Ape network choice names the local network (None: Ape's default, local)."""
    if not choice:
        return True
    parts = str(choice).split(":")
    return len(parts) >= 2 and parts[1] == "local" or parts == ["local"]


def local_node_url() -> str:
    """The local node's URL: `APE_FOUNDRY_HOST`, else Anvil's default port."""
    return os.environ.get("APE_FOUNDRY_HOST") or DEFAULT_LOCAL_NODE


def rpc(url: str, method: str, params: list[Any] | None = None, timeout: float = 10.0) -> Any:
    """One JSON-RPC call; `NodeError` on no answer, a timeout or an error response."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []})
    request = urllib.request.Request(
        url, data=body.encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            reply = json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        raise NodeError(f"no answer from the node at {url} ({reason})") from None
    if "error" in reply:
        raise NodeError(f"{method}: {reply['error'].get('message', reply['error'])}")
    return reply["result"]


def probe(url: str, timeout: float = PROBE_TIMEOUT) -> int:
    """The chain id of the node at `url`, or a one-line `click.ClickException`."""
    try:
        return int(rpc(url, "eth_chainId", timeout=timeout), 16)
    except NodeError:
        raise click.ClickException(
            f"no node answers at {url} within {timeout:g} s (down or frozen): start the "
            "deployment's node (`anvil --port 8545`) or point APE_FOUNDRY_HOST at it; "
            "margincall does not start a node of its own"
        ) from None


def _choice(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return str(getattr(value, "network_choice", value))


def ensure_local_node(network: Any) -> str | None:
    """For a local network: pins Ape's foundry provider to the local node's URL (so it
    connects instead of starting one) and probes it. Returns the URL (None: not local)."""
    if not local_network(_choice(network)):
        return None
    url = local_node_url()
    os.environ["APE_FOUNDRY_HOST"] = url
    probe(url)
    return url


def check_record(network: Any, deployment: Any) -> None:
    """A missing deployment record stops the command in one line before Ape connects (to a
    network that may need an RPC it has not got: `--network ethereum:sepolia`)."""
    from pathlib import Path

    from margincall.deploy.record import DEFAULT_DIR, record_path

    choice = _choice(network) or "ethereum:local"
    path = Path(deployment) if deployment else record_path(choice, DEFAULT_DIR)
    if not path.is_file():
        raise click.ClickException(
            f"refused: {path}: no deployment record for this network (run `ape run deploy` "
            "first, or give --deployment)"
        )


def quiet_ape(ctx: click.Context) -> None:
    """Ape's log at WARNING unless the group's `--verbose`."""
    from ape.logging import logger

    verbose = bool((ctx.find_root().obj or {}).get("verbose"))
    logger.set_level("INFO" if verbose else "WARNING")


def _network_of(ctx: click.Context) -> Any:
    """The command's network: a choice string or the provider Ape's option parsed."""
    from ape.cli.options import NETWORK_META_KEY

    value = ctx.params.get("network")
    if value is None:
        value = (ctx.meta.get(NETWORK_META_KEY) or {}).get("provider")
    return value


def node_command_class() -> type:
    """Ape's `ConnectedProviderCommand`, probing a local node before it connects."""
    from ape.cli import ConnectedProviderCommand

    class NodeCommand(ConnectedProviderCommand):
        def invoke(self, ctx: click.Context) -> Any:
            if self.callback is not None:
                network = _network_of(ctx)
                check_record(network, ctx.params.get("deployment"))
                ensure_local_node(network)
                quiet_ape(ctx)
            return super().invoke(ctx)

    return NodeCommand


__all__ = [
    "DEFAULT_LOCAL_NODE",
    "LOCAL_CHAIN_ID",
    "NodeError",
    "ensure_local_node",
    "local_network",
    "local_node_url",
    "node_command_class",
    "probe",
    "rpc",
]

"""`ApeSource`: the notifier's chain source over Ape (used by bots/notifier.py): the engine's
event logs by block range and the accounts' statuses, through the SDK.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from margincall.notify.messages import WATCHED_EVENTS, EngineEvent

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

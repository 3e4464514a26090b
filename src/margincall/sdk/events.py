"""Reading event logs without the generic ABI decoder, for the keeper's hot path.

A crash puts hundreds of `Liquidation` and `PositionChanged` logs in one block, and the
keeper must read them between two blocks. Ape's decoder builds a rich object per log
(hundreds of microseconds each); the keeper needs three fields. `RawEvent` reads any
field of a log but arrays straight from its topics and data words, using the event's ABI only
to know where each field is.

`decode_statuses` reads the raw output of `check_margins` (a keeper's scan, the simulator)
into `MarginStatus` objects, through the codec below the SDK.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from eth_utils import keccak, to_checksum_address

from margincall import codec
from margincall.sdk.types import MarginStatus


def _bytes(value: Any) -> bytes:
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    text = str(value)
    return bytes.fromhex(text[2:] if text.startswith("0x") else text)


class RawEvent:
    """One event's layout: `topic0`, and where each field lives (a topic or a data word)."""

    def __init__(self, abi: Any):
        self.name = abi.name
        self.topic0 = keccak(text=abi.selector)
        self._where: dict[str, tuple[bool, int, str]] = {}
        topic, word = 1, 0
        for inp in abi.inputs:
            if inp.indexed:
                self._where[inp.name] = (True, topic, inp.type)
                topic += 1
            else:
                if inp.type.endswith("]"):
                    raise ValueError(f"{abi.name}.{inp.name}: arrays are not supported")
                self._where[inp.name] = (False, word, inp.type)
                word += 1

    def matches(self, log: Mapping[str, Any]) -> bool:
        topics = log["topics"]
        return bool(topics) and _bytes(topics[0]) == self.topic0

    def field(self, log: Mapping[str, Any], name: str) -> Any:
        indexed, i, typ = self._where[name]
        if not indexed and typ in ("string", "bytes"):  # the head word holds the offset
            data = _bytes(log["data"])
            at = int.from_bytes(data[32 * i : 32 * i + 32], "big")
            size = int.from_bytes(data[at : at + 32], "big")
            body = data[at + 32 : at + 32 + size]
            return body.decode("utf-8", "replace") if typ == "string" else body
        raw = _bytes(log["topics"][i]) if indexed else _bytes(log["data"])[32 * i : 32 * i + 32]
        if typ == "address":
            return to_checksum_address(raw[-20:])
        if typ == "bool":
            return raw[-1] == 1
        return int.from_bytes(raw, "big", signed=typ.startswith("int"))

    def select(self, logs: Iterable[Mapping[str, Any]], address: str | None = None) -> list:
        """The logs of this event (from `address`, if given)."""
        want = address.lower() if address else None
        return [
            log
            for log in logs
            if self.matches(log) and (want is None or str(log["address"]).lower() == want)
        ]


LOG_CHUNK = 5_000  # blocks per eth_getLogs


def get_logs(
    web3: Any,
    address: str | Sequence[str],
    start: int,
    stop: int,
    topics: Sequence[Any] | None = None,
    chunk: int = LOG_CHUNK,
) -> list[Any]:
    """Raw logs of `address` in blocks start..stop, one `eth_getLogs` per `chunk` blocks:
    the one place the SDK's users read event logs (decode them with `RawEvent`)."""
    out: list[Any] = []
    for lo in range(start, stop + 1, chunk):
        query: dict[str, Any] = {"address": address, "fromBlock": lo}
        query["toBlock"] = min(stop, lo + chunk - 1)
        if topics is not None:
            query["topics"] = list(topics)
        out.extend(web3.eth.get_logs(query))
    return out


def decode_statuses(data: str, names: Mapping[bytes, str] | None = None) -> list[MarginStatus]:
    """`check_margins` output (hex) as `MarginStatus` objects. `names` maps raw 20-byte
    addresses to the strings the caller uses (faster than checksumming each)."""
    return codec.decode_statuses(data, names, MarginStatus)


__all__ = ["LOG_CHUNK", "RawEvent", "decode_statuses", "get_logs"]

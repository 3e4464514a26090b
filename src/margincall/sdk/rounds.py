"""`FeedRounds`: a Chainlink feed's rounds (`latestRoundData`, `getRoundData`) read over raw
`eth_call`s at a given block, for the keeper's settlement hints: an order settles at the
first round of its market's primary feed published strictly after its commit
(`OracleAdapter.round_price`), and the settler names that round.

Raw calls (four-byte selector, five static words back) keep the keeper's per-block reads
cheap and work for any `AggregatorV3Interface`, the project's mock included.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eth_utils import keccak

_LATEST = keccak(text="latestRoundData()")[:4]
_ANSWER_UPDATED = "0x" + keccak(text="AnswerUpdated(int256,uint256,uint256)").hex()
_ROUND = keccak(text="getRoundData(uint80)")[:4]


@dataclass(frozen=True)
class FeedRound:
    """One round: its id, answer (the feed's decimals) and when it was published."""

    round_id: int
    answer: int
    updated_at: int


def _decode(raw: Any) -> FeedRound | None:
    data = bytes(raw)
    if len(data) != 160:
        return None
    words = [int.from_bytes(data[i : i + 32], "big") for i in range(0, 160, 32)]
    answer = words[1] - 2**256 if words[1] >= 2**255 else words[1]
    return FeedRound(words[0], answer, words[3])


class FeedRounds:
    """One feed's rounds through a web3 instance (`provider.web3`)."""

    def __init__(self, web3: Any, feed: str):
        self.web3 = web3
        self.feed = str(feed)

    def _call(self, data: bytes, block_id: int | None) -> FeedRound | None:
        try:
            raw = self.web3.eth.call(
                {"to": self.feed, "data": "0x" + data.hex()},
                block_identifier=block_id if block_id is not None else "latest",
            )
        except Exception:  # noqa: BLE001 - a reverting or missing feed reads as no round
            return None
        return _decode(raw)

    def latest(self, block_id: int | None = None) -> FeedRound | None:
        """`latestRoundData()` at `block_id` (default: the head); None if it reverts."""
        return self._call(_LATEST, block_id)

    def round(self, round_id: int, block_id: int | None = None) -> FeedRound | None:
        """`getRoundData(round_id)`; None for an unknown round or a reverting feed."""
        return self._call(_ROUND + int(round_id).to_bytes(32, "big"), block_id)


def rounds_published(web3: Any, feed: str, start: int, stop: int) -> list[tuple[int, int, int]]:
    """`(round id, updatedAt, block)` of every round a feed published in blocks start..stop,
    from its `AnswerUpdated` logs (Chainlink's aggregator event; the project's mock logs it)."""
    from margincall.sdk.events import get_logs

    out = []
    for log in get_logs(web3, feed, start, stop, [_ANSWER_UPDATED]):
        round_id = int.from_bytes(bytes(log["topics"][2]), "big")
        updated = int.from_bytes(bytes(log["data"])[:32], "big")
        out.append((round_id, updated, int(log["blockNumber"])))
    return out


__all__ = ["FeedRound", "FeedRounds", "rounds_published"]

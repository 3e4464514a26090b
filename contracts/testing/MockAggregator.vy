# pragma version ~=0.4.3
"""
@title Mock Chainlink aggregator
@notice A settable price feed implementing Chainlink's `AggregatorV3Interface`
        (`decimals`, `description`, `version`, `latestRoundData`,
        `getRoundData`), for tests and local demos only. It also serves as an
        L2 sequencer uptime feed mock (answer 0 = up, 1 = down, `startedAt` =
        when the status changed).
        The latest round is packed into one storage word (answer as int128,
        `updatedAt` as uint48, round id as uint64, flags), so
        `latestRoundData` costs a single SLOAD on the common path; `startedAt`
        is stored separately only when `set_round` makes it differ from
        `updatedAt`. Round ids start at 1 and increase by one per update.
@custom:security Anyone can set the answer or make the feed revert. Never
                 deploy outside a local chain.
"""


interface AggregatorV3Interface:
    def decimals() -> uint8: view
    def description() -> String[64]: view
    def version() -> uint256: view
    def getRoundData(_roundId: uint80) -> (uint80, int256, uint256, uint256, uint80): view
    def latestRoundData() -> (uint80, int256, uint256, uint256, uint80): view


implements: AggregatorV3Interface


# Layout of a packed round word:
#   bits   0..63   round id (uint64)
#   bits  64..111  updatedAt (uint48)
#   bit   112      the feed reverts (latest word only)
#   bit   113      startedAt differs from updatedAt (see `_started_at`)
#   bits 128..255  answer (int128, two's complement)
_ROUND_MASK: constant(uint256) = 2**64 - 1
_TIME_MASK: constant(uint256) = 2**48 - 1
_REVERTING: constant(uint256) = 1 << 112
_STARTED_DIFFERS: constant(uint256) = 1 << 113
_VERSION: constant(uint256) = 4

decimals: public(immutable(uint8))

_latest: uint256
_rounds: HashMap[uint256, uint256]
_started_at: HashMap[uint256, uint256]


event AnswerUpdated:
    current: indexed(int256)
    roundId: indexed(uint256)
    updatedAt: uint256


@deploy
def __init__(decimals_: uint8, initial_answer: int256):
    """
    @notice Deploys the feed with a first round at the current block time.
    @param decimals_ The number of decimals of the answers.
    @param initial_answer The answer of round 1.
    """
    decimals = decimals_
    self._new_round(initial_answer, block.timestamp, block.timestamp)


@view
@external
def description() -> String[64]:
    """
    @notice A human-readable description of the feed.
    @return The constant string "margincall mock aggregator".
    """
    return "margincall mock aggregator"


@view
@external
def version() -> uint256:
    """
    @notice The aggregator version, as Chainlink's OCR aggregators report it.
    @return Always 4.
    """
    return _VERSION


@view
@external
def latestRoundData() -> (uint80, int256, uint256, uint256, uint80):
    """
    @notice The latest round, as Chainlink returns it. Reverts with
            "mock: feed down" while `set_reverting(True)` is in effect.
    @return roundId, answer, startedAt, updatedAt, answeredInRound
            (= roundId).
    """
    word: uint256 = self._latest
    if word & _REVERTING != 0:
        raise "mock: feed down"
    return self._unpack(word)


@view
@external
def getRoundData(_roundId: uint80) -> (uint80, int256, uint256, uint256, uint80):
    """
    @notice A past round, as Chainlink returns it. Reverts with
            "mock: no data present" for an unknown round and with
            "mock: feed down" while the feed is set to revert.
    @param _roundId The round id.
    @return roundId, answer, startedAt, updatedAt, answeredInRound
            (= roundId).
    """
    if self._latest & _REVERTING != 0:
        raise "mock: feed down"
    word: uint256 = self._rounds[convert(_roundId, uint256)]
    assert word != 0, "mock: no data present"
    return self._unpack(word)


@external
def set_answer(answer: int256):
    """
    @notice Publishes a new round with `startedAt = updatedAt =
            block.timestamp`, like a Chainlink update.
    @dev Emits `AnswerUpdated`. The answer must fit in an int128.
    @param answer The new answer, in the feed's decimals.
    """
    self._new_round(answer, block.timestamp, block.timestamp)


@external
def set_round(answer: int256, started_at: uint256, updated_at: uint256):
    """
    @notice Publishes a new round with explicit timestamps (zero, stale or
            future-dated ones included), to test consumers' validation.
    @dev Emits `AnswerUpdated`. The answer must fit in an int128 and
         `updated_at` in a uint48.
    @param answer The new answer, in the feed's decimals.
    @param started_at The round's `startedAt`.
    @param updated_at The round's `updatedAt`.
    """
    self._new_round(answer, started_at, updated_at)


@external
def set_reverting(flag: bool):
    """
    @notice Makes `latestRoundData` and `getRoundData` revert with
            "mock: feed down" (True) or answer again (False).
    @param flag Whether the feed reverts.
    """
    if flag:
        self._latest |= _REVERTING
    else:
        self._latest &= ~_REVERTING


@internal
def _new_round(answer: int256, started_at: uint256, updated_at: uint256):
    assert answer >= convert(min_value(int128), int256), "mock: answer out of int128 range"
    assert answer <= convert(max_value(int128), int256), "mock: answer out of int128 range"
    assert updated_at <= _TIME_MASK, "mock: timestamp too large"
    latest: uint256 = self._latest
    round_id: uint256 = (latest & _ROUND_MASK) + 1
    word: uint256 = (
        (convert(convert(answer, bytes32), uint256) << 128) | (updated_at << 64) | round_id
    )
    if started_at != updated_at:
        word |= _STARTED_DIFFERS
        self._started_at[round_id] = started_at
    self._rounds[round_id] = word
    self._latest = word | (latest & _REVERTING)
    log AnswerUpdated(current=answer, roundId=round_id, updatedAt=updated_at)


@view
@internal
def _unpack(word: uint256) -> (uint80, int256, uint256, uint256, uint80):
    round_id: uint80 = convert(word & _ROUND_MASK, uint80)
    answer: int256 = convert(convert(word, bytes32), int256) >> 128
    updated_at: uint256 = (word >> 64) & _TIME_MASK
    started_at: uint256 = updated_at
    if word & _STARTED_DIFFERS != 0:
        started_at = self._started_at[convert(round_id, uint256)]
    return round_id, answer, started_at, updated_at, round_id

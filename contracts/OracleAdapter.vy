# pragma version ~=0.4.3
"""
@title margincall oracle adapter
@notice One adapter per market. Reads a Chainlink `AggregatorV3Interface`
        feed, normalises its answer to 18 decimals and rejects it when it is
        non-positive, stale (older than the feed's heartbeat, or
        `updatedAt == 0`), dated in the future, or outside
        [`min_price`, `max_price`]. An optional fallback feed is used while
        the primary is invalid for any reason (a revert included). An
        optional L2 sequencer uptime feed blocks all prices while the
        sequencer is down and for `sequencer_grace` seconds after it is back.
        `price()` reverts with an "oracle: ..." reason when no valid price
        exists (the primary's reason when both feeds are invalid);
        `try_price()`, `status()` and `reason()` never revert.
        `worst_price()` gives liquidation a worst-case value when no valid
        price exists (the stale-leg shield fix, docs/design.md): the last
        usable answer moved against the holder by `HAIRCUT_STEP` per whole
        heartbeat of its age (at most `HAIRCUT_CAP`), or the bounds.
        Every setting is an immutable, so the adapter has no owner, no state
        and emits no events: to change a setting, deploy a new adapter and
        point the market at it.
@dev Feeds are read with a static `raw_call` that cannot revert; a reply
     shorter than the five ABI words of `latestRoundData` is rejected (a
     longer one is read up to its first five words).
     `price()` and `try_price()` first try a lean primary-only path and
     only when it fails take the full path that looks at the fallback and
     names the reason.
     `answeredInRound` is not checked (deprecated by Chainlink). Bounds are
     converted to the feed's units in the constructor, so the hot path
     compares the raw answer and scales it with one multiplication and one
     division that cannot overflow. Scaling rounds down for feeds with more
     than 18 decimals.
@custom:security Trusts the configured Chainlink feeds to report honest
                 answers and timestamps, and the sequencer feed (if any) to
                 report the L2 sequencer's status. The bounds limit the
                 damage of a wrong answer but do not detect one inside them.
                 A feed that burns all forwarded gas can still make a call
                 run out of gas (1/64 of the gas is kept by the caller).
"""

from .interfaces import IOracle
from .modules import fixed_point
from .modules import margin

implements: IOracle


interface AggregatorV3Interface:
    def decimals() -> uint8: view
    def latestRoundData() -> (uint80, int256, uint256, uint256, uint80): view
    def getRoundData(_roundId: uint80) -> (uint80, int256, uint256, uint256, uint80): view


# Reason codes of `_read_feed` and `_sequencer_code`; 0 means valid.
_OK: constant(uint256) = 0
_FEED_REVERTED: constant(uint256) = 1
_BAD_RESPONSE: constant(uint256) = 2
_NON_POSITIVE: constant(uint256) = 3
_STALE: constant(uint256) = 4
_FUTURE: constant(uint256) = 5
_OUT_OF_BOUNDS: constant(uint256) = 6
_SEQUENCER_DOWN: constant(uint256) = 7
_SEQUENCER_GRACE: constant(uint256) = 8
_SEQUENCER_INVALID: constant(uint256) = 9
_NO_ROUND: constant(uint256) = 10
_ROUND_NOT_AFTER: constant(uint256) = 11
_ROUND_NOT_FIRST: constant(uint256) = 12
_ROUND_AFTER_WINDOW: constant(uint256) = 13
_ROUND_MASK: constant(uint256) = 2**64 - 1

_WAD_DECIMALS: constant(uint8) = 18
# 10**(36 - 18) keeps every scale and bound computation inside uint256.
_MAX_DECIMALS: constant(uint8) = 36
# Five ABI words: roundId, answer, startedAt, updatedAt, answeredInRound.
_ROUND_DATA_SIZE: constant(uint256) = 160
# `best_since` reads at most this many rounds (the latest and 31 before it),
# so its gas is bounded (docs/design.md, "A call clears itself")
_SCAN_ROUNDS: constant(uint256) = 32
_WAD: constant(uint256) = 10**18

# `worst_price`: a stale answer is moved against the holder by HAIRCUT_STEP
# (wad) per whole heartbeat of its age, at most HAIRCUT_CAP (docs/parameters.md).
HAIRCUT_STEP: public(constant(uint256)) = 2 * 10**16
HAIRCUT_CAP: public(constant(uint256)) = 50 * 10**16


# The configuration, as given to the constructor (getters of the same name):
# feeds (empty(address) = none), heartbeats and grace in seconds, and the
# inclusive price bounds in 18 decimals.
primary: public(immutable(address))
primary_heartbeat: public(immutable(uint256))
fallback: public(immutable(address))
fallback_heartbeat: public(immutable(uint256))
sequencer: public(immutable(address))
sequencer_grace: public(immutable(uint256))
min_price: public(immutable(uint256))
max_price: public(immutable(uint256))

# Per feed: price = answer * MUL // DIV (one of them is 1), and the valid
# range of the raw answer, [MIN_ANSWER, MAX_ANSWER], equivalent to
# [min_price, max_price] after scaling.
_PRIMARY_MUL: immutable(uint256)
_PRIMARY_DIV: immutable(uint256)
_PRIMARY_MIN_ANSWER: immutable(uint256)
_PRIMARY_MAX_ANSWER: immutable(uint256)
_FALLBACK_MUL: immutable(uint256)
_FALLBACK_DIV: immutable(uint256)
_FALLBACK_MIN_ANSWER: immutable(uint256)
_FALLBACK_MAX_ANSWER: immutable(uint256)


@deploy
def __init__(
    primary_: address,
    primary_heartbeat_: uint256,
    fallback_: address,
    fallback_heartbeat_: uint256,
    sequencer_: address,
    sequencer_grace_: uint256,
    min_price_: uint256,
    max_price_: uint256,
):
    """
    @notice Deploys an adapter; reads each feed's `decimals()` once.
    @param primary_ The primary Chainlink feed.
    @param primary_heartbeat_ The maximum age of a primary answer, seconds.
    @param fallback_ The fallback feed, or empty(address) for none.
    @param fallback_heartbeat_ The maximum age of a fallback answer, seconds
           (ignored without a fallback).
    @param sequencer_ The Chainlink L2 sequencer uptime feed, or
           empty(address) for none.
    @param sequencer_grace_ Seconds after the sequencer is back up during
           which no price is valid.
    @param min_price_ The lowest valid price, 18 decimals (> 0).
    @param max_price_ The highest valid price, 18 decimals (> min_price_).
    """
    assert primary_ != empty(address), "oracle: zero primary"
    assert primary_heartbeat_ != 0, "oracle: zero heartbeat"
    assert min_price_ != 0, "oracle: zero min price"
    assert min_price_ < max_price_, "oracle: min price not below max"
    if fallback_ != empty(address):
        assert fallback_ != primary_, "oracle: fallback is primary"
        assert fallback_heartbeat_ != 0, "oracle: zero fallback heartbeat"

    primary = primary_
    primary_heartbeat = primary_heartbeat_
    fallback = fallback_
    fallback_heartbeat = fallback_heartbeat_
    sequencer = sequencer_
    sequencer_grace = sequencer_grace_
    min_price = min_price_
    max_price = max_price_

    mul: uint256 = 0
    div: uint256 = 0
    lo: uint256 = 0
    hi: uint256 = 0
    mul, div, lo, hi = self._scaling(primary_, min_price_, max_price_)
    _PRIMARY_MUL = mul
    _PRIMARY_DIV = div
    _PRIMARY_MIN_ANSWER = lo
    _PRIMARY_MAX_ANSWER = hi

    if fallback_ != empty(address):
        mul, div, lo, hi = self._scaling(fallback_, min_price_, max_price_)
    _FALLBACK_MUL = mul
    _FALLBACK_DIV = div
    _FALLBACK_MIN_ANSWER = lo
    _FALLBACK_MAX_ANSWER = hi


@view
@external
def price() -> uint256:
    """
    @notice The current valid price, 18 decimals: the primary's, else the
            fallback's. Reverts with an "oracle: ..." reason when no valid
            price exists: the sequencer's reason if it blocks prices, else
            the primary's reason.
    @return The price of one unit of the base asset, 18 decimals.
    """
    p: uint256 = self._primary_price()
    if p != 0:
        return p
    code: uint256 = 0
    using_fallback: bool = False
    p, code, using_fallback = self._price()
    if code != _OK:
        raise self._reason(code)
    return p


@view
@external
def try_price() -> (uint256, bool):
    """
    @notice The current price and whether it is valid; never reverts.
    @return The price, 18 decimals (0 when not valid), and whether it is
            valid.
    """
    p: uint256 = self._primary_price()
    if p != 0:
        return p, True
    code: uint256 = 0
    using_fallback: bool = False
    p, code, using_fallback = self._price()
    return p, code == _OK


@view
@external
def worst_price() -> (uint256, uint256, bool):
    """
    @notice Liquidation's value of this market for a long holder and for a
            short holder, and whether it is the valid price; never reverts.
            A valid price is returned twice. While the sequencer blocks
            prices: (0, 0, False), no value (the grace period is for the
            traders, and the sequencer blocks every market alike). Else the
            last usable answer (positive, within bounds, `updatedAt` set
            and not in the future; the younger of primary and fallback),
            moved against the holder by HAIRCUT_STEP per whole heartbeat of
            its age, at most HAIRCUT_CAP, kept within the bounds (long
            rounded down, short up); with no usable answer, the bounds
            (`min_price`, `max_price`). Only liquidation uses it.
    @return The long holder's price, the short holder's price (18
            decimals) and whether the price is valid.
    """
    p: uint256 = self._primary_price()
    if p != 0:
        return p, p, True
    code: uint256 = 0
    using_fallback: bool = False
    p, code, using_fallback = self._price()
    if code == _OK:
        return p, p, True
    if code >= _SEQUENCER_DOWN:
        # _price() only returns the sequencer's codes (7 to 9) at or above it
        return 0, 0, False
    last: uint256 = 0
    cut: uint256 = 0
    last, cut = self._last_answer(
        primary,
        primary_heartbeat,
        _PRIMARY_MUL,
        _PRIMARY_DIV,
        _PRIMARY_MIN_ANSWER,
        _PRIMARY_MAX_ANSWER,
    )
    if fallback != empty(address):
        fallback_last: uint256 = 0
        fallback_cut: uint256 = 0
        fallback_last, fallback_cut = self._last_answer(
            fallback,
            fallback_heartbeat,
            _FALLBACK_MUL,
            _FALLBACK_DIV,
            _FALLBACK_MIN_ANSWER,
            _FALLBACK_MAX_ANSWER,
        )
        if fallback_last != 0 and (last == 0 or fallback_cut < cut):
            last = fallback_last
            cut = fallback_cut
    if last == 0:
        return min_price, max_price, False
    # last <= max_price: checked math, it cannot overflow for any real bound
    return (
        max(last * (_WAD - cut) // _WAD, min_price),
        min((last * (_WAD + cut) + _WAD - 1) // _WAD, max_price),
        False,
    )


@view
@external
def status() -> (uint256, bool, bool):
    """
    @notice The price, its validity and its source, for bots; never reverts.
    @return The price, 18 decimals (0 when not valid), whether it is valid,
            and whether it comes from the fallback feed.
    """
    p: uint256 = 0
    code: uint256 = 0
    using_fallback: bool = False
    p, code, using_fallback = self._price()
    return p, code == _OK, using_fallback


@view
@external
def reason() -> String[40]:
    """
    @notice Why no valid price exists; never reverts.
    @return The reason `price()` would revert with, or "" when a valid price
            exists.
    """
    p: uint256 = 0
    code: uint256 = 0
    using_fallback: bool = False
    p, code, using_fallback = self._price()
    if code == _OK:
        return ""
    return self._reason(code)


@view
@external
def round_price(round_id: uint80, after: uint256, until: uint256) -> uint256:
    """
    @notice The settlement price of an order committed at `after`: the
            primary feed's round `round_id`, which must be valid (positive,
            within bounds, not dated in the future, the sequencer up) and
            the first published strictly after `after` (its `updatedAt` >
            `after`, the previous round's <= `after`), no later than
            `until` (the order's expiry) and at most the heartbeat after
            `after`. Staleness is measured against the commit, not now.
            Reverts with an "oracle: ..." reason otherwise. The fallback feed
            is not used: its rounds are not ordered with the primary's.
    @param round_id The round (a hint from the settler; only the first round
           after `after` passes).
    @param after The order's commit time.
    @param until The order's expiry.
    @return The price, 18 decimals.
    """
    p: uint256 = 0
    code: uint256 = 0
    p, code = self._round_price(round_id, after, until)
    if code != _OK:
        raise self._reason(code)
    return p


@view
@external
def try_round_price(round_id: uint80, after: uint256, until: uint256) -> (uint256, uint256):
    """
    @notice `round_price` without reverting, for batched settlement.
    @param round_id The round.
    @param after The order's commit time.
    @param until The order's expiry.
    @return The price (0 unless valid) and the reason code (0 when valid;
            `reason_of` names it).
    """
    return self._round_price(round_id, after, until)


@view
@external
def round_span(round_id: uint80) -> (uint256, uint256, uint256, uint256):
    """
    @notice Round `round_id` of the primary feed and the span of time it is
            the settlement round for: orders committed at t with
            `previous updatedAt <= t < updatedAt` (and `updatedAt` within
            their expiry and the heartbeat after t) settle at it. For
            batched settlement (one read serves every order of a round);
            never reverts.
    @param round_id The round.
    @return The price (18 decimals), the previous round's updatedAt, the
            round's updatedAt, and a reason code (0 when the round itself is
            valid; `reason_of` names it).
    """
    return self._round_span(round_id)


@view
@external
def best_since(since: uint256, long: bool) -> uint256:
    """
    @notice The most favourable valid price the primary feed published
            after `since` (strictly: a round of the call's own second may
            precede the call), for a holder: the highest for a long, the
            lowest for a short; 0 when there is none. `recovered` asks it
            whether an account under a call past its deadline was back at
            `call_ratio` since the call (docs/design.md, "A call clears
            itself"). Walks back from the latest round, at most 32 rounds,
            and stops at the first round published at or before `since`, at
            the first round of a phase and at a round that cannot be read.
            Skips invalid answers (non-positive, out of bounds, dated in the
            future); staleness does not apply (every round counted is
            after `since`). The fallback and sequencer feeds are not read.
            Never reverts.
    @param since Rounds with a later `updatedAt` count (seconds).
    @param long True for the highest price, false for the lowest.
    @return The price, 18 decimals, or 0.
    """
    success: bool = False
    data: Bytes[_ROUND_DATA_SIZE] = b""
    success, data = raw_call(
        primary,
        method_id("latestRoundData()"),
        max_outsize=_ROUND_DATA_SIZE,
        is_static_call=True,
        revert_on_failure=False,
    )
    if not success or len(data) != _ROUND_DATA_SIZE:
        return 0
    round_id: uint256 = extract32(data, 0, output_type=uint256)
    answer: int256 = extract32(data, 32, output_type=int256)
    updated_at: uint256 = extract32(data, 96, output_type=uint256)
    best: uint256 = 0
    for i: uint256 in range(_SCAN_ROUNDS):
        if updated_at <= since:
            break
        if answer > 0 and updated_at <= block.timestamp:
            raw: uint256 = convert(answer, uint256)
            if raw >= _PRIMARY_MIN_ANSWER and raw <= _PRIMARY_MAX_ANSWER:
                p: uint256 = unsafe_div(unsafe_mul(raw, _PRIMARY_MUL), _PRIMARY_DIV)
                if best == 0 or (p > best) == long:
                    best = p
        if round_id & _ROUND_MASK <= 1 or round_id >> 80 != 0:
            break
        round_id -= 1
        ok: bool = False
        ok, answer, updated_at = self._round(convert(round_id, uint80))
        if not ok:
            break
    return best


@view
@external
def recovered(ev: margin.Eval, acct: margin.Acct, p: margin.RiskParams, scale: uint256) -> bool:
    """
    @notice Whether a margin call cleared itself (PROTOCOL.md section 2): the
            account `ev` (valued at current prices by the engine or the lens,
            `margin._classify`), under a call past its deadline, was back at
            `call_ratio` since the call (or its last tranche, if later) with
            no transaction. Each leg is valued at its adapter's `best_since`
            (this adapter's or another market's), where that is better than
            its current price. Legs' best prices at different times
            over-estimate a multi-leg account, toward the trader (at most one
            more notice and grace period, only at ratio >= 1). Asked of the
            first leg's adapter; reads only the feeds. docs/design.md, "A call
            clears itself".
    @param ev The account's positions and their valuation (margin.Eval).
    @param acct The account record (its call deadline, last tranche,
           collateral).
    @param p The engine's risk parameters (grace_period, call_ratio).
    @param scale The engine's collateral scale, 10**(18 - decimals).
    @return True when the call has cleared.
    """
    # the call time is deadline - grace_period (a grace_period raised since
    # the call reaches back before it: toward the trader); a tranche since
    # then changed the holdings, so prices before it do not count
    since: uint256 = max(unsafe_sub(acct.deadline, p.grace_period), acct.last_tranche)
    equity: int256 = convert(acct.collateral * scale, int256)
    maintenance: uint256 = 0
    for i: uint256 in range(margin._MAX_POSITIONS):
        if i == ev.n:
            break
        pos: margin.Pos = ev.pos[i]
        px: uint256 = ev.px[i]
        long: bool = pos.size > 0
        best: uint256 = staticcall IOracle(ev.oracle[i]).best_since(since, long)
        if best != 0 and (best > px) == long:
            px = best
        notional: uint256 = 0
        mm: uint256 = 0
        im: uint256 = 0
        upnl: int256 = 0
        notional, mm, im, upnl = margin._position_value(pos.size, pos.cost, px, ev.mmr[i], 0)
        equity += upnl
        maintenance += mm
    return fixed_point._ratio(equity, maintenance) >= p.call_ratio


@pure
@external
def reason_of(code: uint256) -> String[40]:
    """
    @notice The reason string of a code returned by `try_round_price`.
    @param code A non-zero reason code.
    @return The reason, or "" for 0.
    """
    if code == _OK:
        return ""
    return self._reason(code)


@view
@internal
def _round_price(round_id: uint80, after: uint256, until: uint256) -> (uint256, uint256):
    """
    @dev The rules of `round_price`, never reverting: (price, code).
    """
    p: uint256 = 0
    prev_updated: uint256 = 0
    updated_at: uint256 = 0
    code: uint256 = 0
    p, prev_updated, updated_at, code = self._round_span(round_id)
    if code != _OK:
        return 0, code
    if updated_at <= after:
        return 0, _ROUND_NOT_AFTER
    if updated_at > until:
        return 0, _ROUND_AFTER_WINDOW
    if updated_at - after > primary_heartbeat:
        return 0, _STALE
    if prev_updated > after:
        return 0, _ROUND_NOT_FIRST
    return p, _OK


@view
@internal
def _round_span(round_id: uint80) -> (uint256, uint256, uint256, uint256):
    """
    @dev Round `round_id` of the primary and the time span it covers, never
         reverting: (price, previous round's updatedAt, updatedAt, code).
         The code checks the round alone (it exists and has a previous
         round, not dated in the future, positive, within bounds, the
         sequencer up); the caller checks it against an order's times. A
         round whose id is the first of its aggregator phase (low 64 bits 1)
         has no previous round to prove it is the first after a commit: it
         is refused (such an order expires and is refunded).
    """
    if sequencer != empty(address):
        code: uint256 = self._sequencer_code()
        if code != _OK:
            return 0, 0, 0, code
    answer: int256 = 0
    updated_at: uint256 = 0
    ok: bool = False
    ok, answer, updated_at = self._round(round_id)
    if not ok or updated_at == 0:
        return 0, 0, 0, _NO_ROUND
    if updated_at > block.timestamp:
        return 0, 0, 0, _FUTURE
    if convert(round_id, uint256) & _ROUND_MASK <= 1:
        return 0, 0, 0, _ROUND_NOT_FIRST
    prev_answer: int256 = 0
    prev_updated: uint256 = 0
    ok, prev_answer, prev_updated = self._round(round_id - 1)
    if not ok:
        return 0, 0, 0, _ROUND_NOT_FIRST
    if answer <= 0:
        return 0, 0, 0, _NON_POSITIVE
    raw: uint256 = convert(answer, uint256)
    if raw < _PRIMARY_MIN_ANSWER or raw > _PRIMARY_MAX_ANSWER:
        return 0, 0, 0, _OUT_OF_BOUNDS
    return unsafe_div(unsafe_mul(raw, _PRIMARY_MUL), _PRIMARY_DIV), prev_updated, updated_at, _OK


@view
@internal
def _round(round_id: uint80) -> (bool, int256, uint256):
    """
    @dev Reads one round of the primary feed without reverting: (read,
         answer, updatedAt).
    """
    success: bool = False
    data: Bytes[_ROUND_DATA_SIZE] = b""
    success, data = raw_call(
        primary,
        abi_encode(round_id, method_id=method_id("getRoundData(uint80)")),
        max_outsize=_ROUND_DATA_SIZE,
        is_static_call=True,
        revert_on_failure=False,
    )
    if not success or len(data) != _ROUND_DATA_SIZE:
        return False, 0, 0
    return True, extract32(data, 32, output_type=int256), extract32(data, 96, output_type=uint256)


@view
@internal
def _primary_price() -> uint256:
    """
    @dev The hot path of `price()` and `try_price()`: the primary's price
         when the sequencer allows prices and the primary is valid, else 0
         (a valid price is never 0: it is at least `min_price` > 0). It
         applies exactly the checks of `_read_feed` but skips the reason
         codes, which saves about 220 gas; callers fall back to `_price()`
         on 0, which re-reads the feeds to find the fallback's price or the
         reason. The unit tests assert on every rejection that `price()`
         reverts and `try_price()` returns (0, False), so both paths must
         agree.
    """
    if sequencer != empty(address):
        if self._sequencer_code() != _OK:
            return 0
    success: bool = False
    data: Bytes[_ROUND_DATA_SIZE] = b""
    success, data = raw_call(
        primary,
        method_id("latestRoundData()"),
        max_outsize=_ROUND_DATA_SIZE,
        is_static_call=True,
        revert_on_failure=False,
    )
    if not success or len(data) != _ROUND_DATA_SIZE:
        return 0

    answer: int256 = extract32(data, 32, output_type=int256)
    updated_at: uint256 = extract32(data, 96, output_type=uint256)
    if answer <= 0 or updated_at == 0 or updated_at > block.timestamp:
        return 0
    if unsafe_sub(block.timestamp, updated_at) > primary_heartbeat:
        return 0

    raw: uint256 = convert(answer, uint256)
    if raw < _PRIMARY_MIN_ANSWER or raw > _PRIMARY_MAX_ANSWER:
        return 0
    # raw <= max_answer, so raw * mul <= max_price: no overflow.
    return unsafe_div(unsafe_mul(raw, _PRIMARY_MUL), _PRIMARY_DIV)


@view
@internal
def _price() -> (uint256, uint256, bool):
    """
    @dev The full path: returns (price, reason code, from the fallback).
         The price is 0 unless the code is _OK.
    """
    code: uint256 = _OK
    if sequencer != empty(address):
        code = self._sequencer_code()
        if code != _OK:
            return 0, code, False
    p: uint256 = 0
    p, code = self._read_feed(
        primary,
        primary_heartbeat,
        _PRIMARY_MUL,
        _PRIMARY_DIV,
        _PRIMARY_MIN_ANSWER,
        _PRIMARY_MAX_ANSWER,
    )
    if code == _OK or fallback == empty(address):
        return p, code, False

    fallback_price: uint256 = 0
    fallback_code: uint256 = 0
    fallback_price, fallback_code = self._read_feed(
        fallback,
        fallback_heartbeat,
        _FALLBACK_MUL,
        _FALLBACK_DIV,
        _FALLBACK_MIN_ANSWER,
        _FALLBACK_MAX_ANSWER,
    )
    if fallback_code == _OK:
        return fallback_price, _OK, True
    return 0, code, False


@view
@internal
def _read_feed(
    feed: address,
    heartbeat: uint256,
    mul: uint256,
    div: uint256,
    min_answer: uint256,
    max_answer: uint256,
) -> (uint256, uint256):
    """
    @dev Reads and validates one feed without reverting. Returns
         (price, reason code); the price is 0 unless the code is _OK.
    """
    success: bool = False
    data: Bytes[_ROUND_DATA_SIZE] = b""
    success, data = raw_call(
        feed,
        method_id("latestRoundData()"),
        max_outsize=_ROUND_DATA_SIZE,
        is_static_call=True,
        revert_on_failure=False,
    )
    if not success:
        return 0, _FEED_REVERTED
    if len(data) != _ROUND_DATA_SIZE:
        return 0, _BAD_RESPONSE

    answer: int256 = extract32(data, 32, output_type=int256)
    updated_at: uint256 = extract32(data, 96, output_type=uint256)
    if answer <= 0:
        return 0, _NON_POSITIVE
    if updated_at == 0:
        return 0, _STALE
    if updated_at > block.timestamp:
        return 0, _FUTURE
    if unsafe_sub(block.timestamp, updated_at) > heartbeat:
        return 0, _STALE

    raw: uint256 = convert(answer, uint256)
    if raw < min_answer or raw > max_answer:
        return 0, _OUT_OF_BOUNDS
    # raw <= max_answer, so raw * mul <= max_price: no overflow.
    return unsafe_div(unsafe_mul(raw, mul), div), _OK


@view
@internal
def _last_answer(
    feed: address,
    heartbeat: uint256,
    mul: uint256,
    div: uint256,
    min_answer: uint256,
    max_answer: uint256,
) -> (uint256, uint256):
    """
    @dev A feed's last answer whatever its age, and its haircut: (price,
         min(whole heartbeats of age * HAIRCUT_STEP, HAIRCUT_CAP)); (0, 0)
         when it is not usable (reverting feed, short reply, non-positive,
         `updatedAt` 0 or in the future, out of bounds). Never reverts.
    """
    success: bool = False
    data: Bytes[_ROUND_DATA_SIZE] = b""
    success, data = raw_call(
        feed,
        method_id("latestRoundData()"),
        max_outsize=_ROUND_DATA_SIZE,
        is_static_call=True,
        revert_on_failure=False,
    )
    if not success or len(data) != _ROUND_DATA_SIZE:
        return 0, 0
    answer: int256 = extract32(data, 32, output_type=int256)
    updated_at: uint256 = extract32(data, 96, output_type=uint256)
    if answer <= 0 or updated_at == 0 or updated_at > block.timestamp:
        return 0, 0
    raw: uint256 = convert(answer, uint256)
    if raw < min_answer or raw > max_answer:
        return 0, 0
    steps: uint256 = (block.timestamp - updated_at) // heartbeat
    return unsafe_div(unsafe_mul(raw, mul), div), min(steps * HAIRCUT_STEP, HAIRCUT_CAP)


@view
@internal
def _sequencer_code() -> uint256:
    """
    @dev Reads the sequencer uptime feed without reverting: answer 0 = up,
         anything else = down; `startedAt` = when the status changed (0 for
         an invalid round, per Chainlink's documentation).
    """
    success: bool = False
    data: Bytes[_ROUND_DATA_SIZE] = b""
    success, data = raw_call(
        sequencer,
        method_id("latestRoundData()"),
        max_outsize=_ROUND_DATA_SIZE,
        is_static_call=True,
        revert_on_failure=False,
    )
    if not success or len(data) != _ROUND_DATA_SIZE:
        return _SEQUENCER_INVALID

    answer: int256 = extract32(data, 32, output_type=int256)
    started_at: uint256 = extract32(data, 64, output_type=uint256)
    if answer != 0:
        return _SEQUENCER_DOWN
    if started_at == 0:
        return _SEQUENCER_INVALID
    if started_at > block.timestamp:
        return _SEQUENCER_GRACE
    if unsafe_sub(block.timestamp, started_at) < sequencer_grace:
        return _SEQUENCER_GRACE
    return _OK


@pure
@internal
def _reason(code: uint256) -> String[40]:
    """
    @dev The revert reason of a non-zero reason code.
    """
    if code == _FEED_REVERTED:
        return "oracle: feed reverted"
    if code == _BAD_RESPONSE:
        return "oracle: bad feed response"
    if code == _NON_POSITIVE:
        return "oracle: non-positive price"
    if code == _STALE:
        return "oracle: stale price"
    if code == _FUTURE:
        return "oracle: future timestamp"
    if code == _OUT_OF_BOUNDS:
        return "oracle: price out of bounds"
    if code == _SEQUENCER_DOWN:
        return "oracle: sequencer down"
    if code == _NO_ROUND:
        return "oracle: no such round"
    if code == _ROUND_NOT_AFTER:
        return "oracle: round not after commit"
    if code == _ROUND_NOT_FIRST:
        return "oracle: round not first after commit"
    if code == _ROUND_AFTER_WINDOW:
        return "oracle: round after order window"
    if code == _SEQUENCER_GRACE:
        return "oracle: sequencer grace period"
    return "oracle: sequencer feed invalid"


@view
@internal
def _scaling(
    feed: address, min_price_: uint256, max_price_: uint256
) -> (uint256, uint256, uint256, uint256):
    """
    @dev Reads the feed's decimals and returns (mul, div, min_answer,
         max_answer) such that price = answer * mul // div and
         min_answer <= answer <= max_answer exactly when
         min_price_ <= price <= max_price_.
    """
    decimals: uint8 = staticcall AggregatorV3Interface(feed).decimals()
    assert decimals <= _MAX_DECIMALS, "oracle: unsupported decimals"
    if decimals <= _WAD_DECIMALS:
        # price = answer * mul: ceil the lower bound, floor the upper one.
        mul: uint256 = 10**convert(_WAD_DECIMALS - decimals, uint256)
        lo: uint256 = min_price_ // mul
        if lo * mul != min_price_:
            lo += 1
        return mul, 1, lo, max_price_ // mul
    # price = answer // div (rounds down): price >= min <=> answer >=
    # min * div, and price <= max <=> answer < (max + 1) * div. Saturate
    # instead of overflowing (no int256 answer reaches max_value(uint256)).
    div: uint256 = 10**convert(decimals - _WAD_DECIMALS, uint256)
    lo: uint256 = max_value(uint256)
    if min_price_ <= max_value(uint256) // div:
        lo = min_price_ * div
    hi: uint256 = max_value(uint256)
    if max_price_ < max_value(uint256) // div:
        hi = (max_price_ + 1) * div - 1
    return 1, div, lo, hi

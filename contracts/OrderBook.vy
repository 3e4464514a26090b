# pragma version ~=0.4.3
"""
@title margincall order book
@notice Positions change in two steps, so no trade fills at a price the
        trader could already see: a trader commits an order (market, size
        delta, acceptable price, expiry, reduce-only flag) and anyone settles
        it at the first valid round of the market's primary feed published
        strictly after the commit (the settler names the round; the oracle
        adapter proves it is that round). A settlement fee, escrowed from the
        trader's collateral at commit, pays the settler; an order that cannot
        fill at its settlement price (margin, slippage, nothing left to
        reduce) is cancelled with its reason and the fee refunded; an order
        not settled by its expiry can be cancelled by anyone, refunding the
        fee. At most `_SLOTS` orders are pending per account.

        One order is one storage word (see `_pack`); its id is
        `account << 96 | commit_time << 8 | slot`.
@custom:security Trusts the owner (the settlement fee, at most
        `_MAX_FEE_MICRO`, and the longest order window, at most
        `_MAX_WINDOW`), the engine set once (`set_engine`) and the oracle
        adapters the engine lists. Settlers and traders are untrusted: the
        round is checked by the adapter, a fill's rules by the engine. A
        settler that starves the engine's call of gas cannot cancel an
        order: below `_FILL_GAS` the whole settlement reverts (or a batch
        stops).
"""

from snekmate.auth import ownable
from snekmate.auth import ownable_2step
from interfaces import IOracle
from interfaces import IOrderBook

implements: IOrderBook

initializes: ownable
initializes: ownable_2step[ownable := ownable]

exports: (
    ownable_2step.owner,
    ownable_2step.pending_owner,
    ownable_2step.transfer_ownership,
    ownable_2step.accept_ownership,
    ownable_2step.renounce_ownership,
)


struct MarketConfig:
    oracle: address
    imr: uint256
    mmr: uint256
    fee: uint256
    window_cap: uint256
    active: bool


interface IEngine:
    def markets(market_id: uint256) -> MarketConfig: view
    def market_count() -> uint256: view
    def position(account: address, market_id: uint256) -> (int256, int256): view
    def escrow_fee(account: address, amount: int256): nonpayable
    def fill(
        account: address, market_id: uint256, size_delta: int256, price: uint256
    ) -> int256: nonpayable
    def pay_fills(pool_net: int256, settler: address, fees: uint256): nonpayable


struct Order:
    account: address
    market_id: uint256
    size_delta: int256  # wad, signed
    acceptable_price: uint256  # wad; the stored bound (never looser than asked)
    commit_time: uint256
    expiry: uint256
    reduce_only: bool
    fee: uint256  # token units, escrowed


_SLOTS: constant(uint256) = 4
_MAX_BATCH: constant(uint256) = 50
_MAX_MARKETS: constant(uint256) = 16
# settlement fee in millionths of a token, at most 100 tokens
_MAX_FEE_MICRO: constant(uint256) = 100 * 10**6
# an order lives at most 18 hours (16 bits of seconds)
_MAX_WINDOW: constant(uint256) = 2**16 - 1
# the least gas left for the engine's fill: below it a settlement does not
# risk cancelling an order because the settler starved the call
_FILL_GAS: constant(uint256) = 500_000
# |size delta| < 2**106 (wad): one order fits one word
_SIZE_BIAS: constant(int256) = 2**106
_MANTISSA_BITS: constant(uint256) = 48

_MASK4: constant(uint256) = 2**4 - 1
_MASK8: constant(uint256) = 2**8 - 1
_MASK16: constant(uint256) = 2**16 - 1
_MASK32: constant(uint256) = 2**32 - 1
_MASK40: constant(uint256) = 2**40 - 1
_MASK48: constant(uint256) = 2**48 - 1

# the engine's collateral token units per millionth of a token
FEE_UNIT: public(immutable(uint256))

engine: public(address)
# settlement fee (millionths of a token) | max_window << 32
_config: uint256
# commit_time | window << 40 | market << 56 | reduce_only << 60 | fee << 61
# | price mantissa << 93 | price exponent << 141 | (size + 2**106) << 149
# (acceptable price = mantissa * 10**exponent)
_orders: HashMap[address, uint256[_SLOTS]]


event OrderCommitted:
    order_id: indexed(uint256)
    account: indexed(address)
    market_id: indexed(uint256)
    size_delta: int256
    acceptable_price: uint256
    expiry: uint256
    reduce_only: bool
    fee: uint256


event OrderSettled:
    order_id: indexed(uint256)
    account: indexed(address)
    settler: indexed(address)
    market_id: uint256
    size_delta: int256
    price: uint256
    round_id: uint80
    fee: uint256


event OrderCancelled:
    order_id: indexed(uint256)
    account: indexed(address)
    caller: indexed(address)
    reason: String[64]
    refund: uint256


event EngineSet:
    engine: indexed(address)


event ConfigSet:
    settlement_fee: uint256
    max_window: uint256


@deploy
def __init__(decimals: uint8, settlement_fee_: uint256, max_window_: uint256):
    """
    @notice Deploys the book; the deployer becomes the owner and sets the
            engine with `set_engine`.
    @param decimals The collateral token's decimals (6 to 18).
    @param settlement_fee_ The fee escrowed per order, in millionths of a
           token.
    @param max_window_ The longest an order may live, seconds.
    """
    assert decimals >= 6 and decimals <= 18, "book: token decimals"
    FEE_UNIT = 10**convert(decimals - 6, uint256)
    ownable.__init__()
    ownable_2step.__init__()
    self._set_config(settlement_fee_, max_window_)


@external
def set_engine(engine: address):
    """
    @notice Sets the margin engine, once. Only the owner.
    @param engine The engine (its `ORDER_BOOK` must be this book).
    """
    ownable._check_owner()
    assert self.engine == empty(address), "book: engine already set"
    assert engine != empty(address), "book: zero address"
    self.engine = engine
    log EngineSet(engine=engine)


@external
def set_config(settlement_fee_: uint256, max_window_: uint256):
    """
    @notice Sets the settlement fee and the longest order window for new
            orders (pending ones keep theirs). Only the owner.
    @param settlement_fee_ Millionths of a token, at most 100 tokens.
    @param max_window_ Seconds, 1 to 65,535.
    """
    ownable._check_owner()
    self._set_config(settlement_fee_, max_window_)


@view
@external
def settlement_fee() -> uint256:
    """
    @notice The fee escrowed per new order.
    @return Token units.
    """
    return (self._config & _MASK32) * FEE_UNIT


@view
@external
def max_window() -> uint256:
    """
    @notice The longest an order may live (expiry - commit time).
    @return Seconds.
    """
    return self._config >> 32


@external
@nonreentrant
def commit_order(
    market_id: uint256,
    size_delta: int256,
    acceptable_price: uint256,
    expiry: uint256,
    reduce_only: bool = False,
) -> uint256:
    """
    @notice Commits an order for the caller's account; escrows the
            settlement fee from its collateral (no margin check: the fee is
            bounded, docs/design.md "Fee and escrow"). It fills at the first
            valid round published after this block, if `acceptable_price`
            admits it and the margin rules hold then; a CALLED account may
            commit reductions.
    @param market_id The market.
    @param size_delta Signed change of the position (wad; > 0 buys).
    @param acceptable_price The highest price for a buy, the lowest for a
           sell (wad). Stored as a 48-bit mantissa times a power of ten
           (exact up to about 14 significant digits), rounded tighter.
    @param expiry The last second the order may settle (after this block,
           at most `max_window` away).
    @param reduce_only Fill only what reduces the position at settlement.
    @return The order id.
    """
    engine: address = self.engine
    assert engine != empty(address), "book: no engine"
    assert size_delta != 0, "book: zero size"
    assert abs(size_delta) < _SIZE_BIAS, "book: size out of range"
    assert market_id < staticcall IEngine(engine).market_count(), "book: unknown market"
    config: uint256 = self._config
    assert expiry > block.timestamp, "book: expiry not in the future"
    window: uint256 = expiry - block.timestamp
    assert window <= config >> 32, "book: window too long"
    slot: uint256 = _SLOTS
    for i: uint256 in range(_SLOTS):
        if self._orders[msg.sender][i] == 0:
            slot = i
            break
    assert slot < _SLOTS, "book: too many pending orders"

    fee_micro: uint256 = config & _MASK32
    mantissa: uint256 = 0
    exponent: uint256 = 0
    mantissa, exponent = self._compress(acceptable_price, size_delta > 0)
    self._orders[msg.sender][slot] = (
        block.timestamp
        | (window << 40)
        | (market_id << 56)
        | (convert(reduce_only, uint256) << 60)
        | (fee_micro << 61)
        | (mantissa << 93)
        | (exponent << 141)
        | (convert(size_delta + _SIZE_BIAS, uint256) << 149)
    )
    fee: uint256 = fee_micro * FEE_UNIT
    if fee > 0:
        extcall IEngine(engine).escrow_fee(msg.sender, convert(fee, int256))
    order_id: uint256 = (convert(msg.sender, uint256) << 96) | (block.timestamp << 8) | slot
    log OrderCommitted(
        order_id=order_id,
        account=msg.sender,
        market_id=market_id,
        size_delta=size_delta,
        acceptable_price=mantissa * 10**exponent,
        expiry=expiry,
        reduce_only=reduce_only,
        fee=fee,
    )
    return order_id


@external
@nonreentrant
def settle_order(order_id: uint256, round_id: uint80) -> bool:
    """
    @notice Settles one order at its settlement price, round `round_id` of
            the market's primary feed (the first valid round published
            after the commit; see `OracleAdapter.round_price`). Reverts if
            the order does not exist, has expired, or the round is not its
            settlement round. If the fill fails (margin, slippage, nothing
            to reduce) the order is cancelled with the reason and its fee
            refunded. Pays the fee to the caller on a fill.
    @param order_id The order.
    @param round_id The settlement round.
    @return True if filled, False if cancelled.
    """
    filled: uint256 = 0
    pool_net: int256 = 0
    fees: uint256 = 0
    filled, pool_net, fees = self._settle([order_id], [round_id], True)
    self._pay(pool_net, fees)
    return filled == 1


@external
@nonreentrant
def settle_orders(
    order_ids: DynArray[uint256, _MAX_BATCH], round_ids: DynArray[uint80, _MAX_BATCH]
) -> uint256:
    """
    @notice Settles every order of the list that can be settled with its
            round, skipping (not reverting on) the others: unknown or
            already settled, expired, round not (yet) valid. Orders that fail
            to fill are cancelled with their reason and refund. The pool and
            the fees are paid once, at the end. Stops early (leaving the
            rest pending) when less than `_FILL_GAS` is left.
    @param order_ids The orders.
    @param round_ids The settlement round of each order.
    @return The number of orders filled.
    """
    assert len(order_ids) == len(round_ids), "book: length mismatch"
    filled: uint256 = 0
    pool_net: int256 = 0
    fees: uint256 = 0
    filled, pool_net, fees = self._settle(order_ids, round_ids, False)
    self._pay(pool_net, fees)
    return filled


@external
@nonreentrant
def cancel_order(order_id: uint256):
    """
    @notice Cancels an order after its expiry and refunds its fee to the
            account's collateral. Anyone may cancel an expired order (the
            refund goes to the trader); no one can cancel before expiry,
            so a trader cannot walk away once the settlement price is known.
    @param order_id The order.
    """
    account: address = empty(address)
    slot: uint256 = 0
    w: uint256 = 0
    account, slot, w = self._find(order_id)
    assert w != 0, "book: no such order"
    assert block.timestamp > self._expiry(w), "book: order not expired"
    self._cancel(order_id, account, slot, w, "book: expired")


@view
@external
def order(order_id: uint256) -> Order:
    """
    @notice A pending order (all zero if none).
    @param order_id The order.
    @return The order.
    """
    account: address = empty(address)
    slot: uint256 = 0
    w: uint256 = 0
    account, slot, w = self._find(order_id)
    if w == 0:
        return empty(Order)
    return self._unpack(account, w)


@view
@external
def pending_orders(account: address) -> DynArray[uint256, _SLOTS]:
    """
    @notice The ids of an account's pending orders (settled, cancelled and
            never used slots are left out; expired ones are listed until
            cancelled).
    @param account The account.
    @return The order ids.
    """
    ids: DynArray[uint256, _SLOTS] = []
    for i: uint256 in range(_SLOTS):
        w: uint256 = self._orders[account][i]
        if w != 0:
            ids.append((convert(account, uint256) << 96) | ((w & _MASK40) << 8) | i)
    return ids


@view
@external
def escrowed_of(account: address) -> uint256:
    """
    @notice The settlement fees escrowed for an account's pending orders.
    @param account The account.
    @return Token units (held by the engine).
    """
    total: uint256 = 0
    for i: uint256 in range(_SLOTS):
        total += ((self._orders[account][i] >> 61) & _MASK32) * FEE_UNIT
    return total


@internal
def _settle(
    order_ids: DynArray[uint256, _MAX_BATCH],
    round_ids: DynArray[uint80, _MAX_BATCH],
    strict: bool,
) -> (uint256, int256, uint256):
    """
    @dev Settles each order; `strict` reverts on an ineligible order
         instead of skipping it. Returns (filled, pool net, fees).
    """
    engine: address = self.engine
    oracles: address[_MAX_MARKETS] = empty(address[_MAX_MARKETS])
    # per market, the last round read in this batch: its id + 1, price, the
    # previous round's time, its time, the heartbeat
    spans: uint256[5][_MAX_MARKETS] = empty(uint256[5][_MAX_MARKETS])
    filled: uint256 = 0
    pool_net: int256 = 0
    fees: uint256 = 0
    for k: uint256 in range(_MAX_BATCH):
        if k == len(order_ids):
            break
        order_id: uint256 = order_ids[k]
        account: address = empty(address)
        slot: uint256 = 0
        w: uint256 = 0
        account, slot, w = self._find(order_id)
        if w == 0:
            assert not strict, "book: no such order"
            continue
        expiry: uint256 = self._expiry(w)
        if block.timestamp > expiry:
            assert not strict, "book: order expired"
            continue
        if msg.gas < _FILL_GAS:
            assert not strict, "book: not enough gas"
            break
        o: Order = self._unpack(account, w)
        if oracles[o.market_id] == empty(address):
            oracles[o.market_id] = (staticcall IEngine(engine).markets(o.market_id)).oracle
        price: uint256 = 0
        if strict:
            price = staticcall IOracle(oracles[o.market_id]).round_price(
                round_ids[k], o.commit_time, expiry
            )
        else:
            span: uint256[5] = spans[o.market_id]
            if span[0] != convert(round_ids[k], uint256) + 1:
                code: uint256 = 0
                span[0] = convert(round_ids[k], uint256) + 1
                span[1], span[2], span[3], code = staticcall IOracle(
                    oracles[o.market_id]
                ).round_span(round_ids[k])
                if code != 0:
                    span[3] = 0  # no order settles at an invalid round
                if span[4] == 0:
                    span[4] = staticcall IOracle(oracles[o.market_id]).primary_heartbeat()
                spans[o.market_id] = span
            # the adapter's rules of `round_price`, on the round read once
            if not (
                span[2] <= o.commit_time
                and o.commit_time < span[3]
                and span[3] <= expiry
                and span[3] <= o.commit_time + span[4]
            ):
                continue
            price = span[1]
        delta: int256 = 0
        reason: String[64] = ""
        delta, reason = self._fill_size(engine, o, price)
        if reason == "":
            ok: bool = False
            net: int256 = 0
            ok, net, reason = self._fill(engine, account, o.market_id, delta, price)
            if ok:
                self._orders[account][slot] = 0
                pool_net += net
                fees += o.fee
                filled += 1
                log OrderSettled(
                    order_id=order_id,
                    account=account,
                    settler=msg.sender,
                    market_id=o.market_id,
                    size_delta=delta,
                    price=price,
                    round_id=round_ids[k],
                    fee=o.fee,
                )
                continue
        self._cancel(order_id, account, slot, w, reason)
    return filled, pool_net, fees


@view
@internal
def _fill_size(engine: address, o: Order, price: uint256) -> (int256, String[64]):
    """
    @dev The size to fill at `price`, or the reason the order cannot fill:
         the slippage bound, and for a reduce-only order the current
         position (a liquidation since the commit shrinks the order; with
         nothing left to reduce it is cancelled).
    """
    if o.size_delta > 0 and price > o.acceptable_price:
        return 0, "book: price above acceptable"
    if o.size_delta < 0 and price < o.acceptable_price:
        return 0, "book: price below acceptable"
    if not o.reduce_only:
        return o.size_delta, ""
    size: int256 = (staticcall IEngine(engine).position(o.account, o.market_id))[0]
    if size == 0 or (size > 0) == (o.size_delta > 0):
        return 0, "book: nothing to reduce"
    if abs(o.size_delta) > abs(size):
        return -size, ""
    return o.size_delta, ""


@internal
def _fill(
    engine: address, account: address, market_id: uint256, delta: int256, price: uint256
) -> (bool, int256, String[64]):
    """
    @dev The engine's fill, without reverting: (filled, pool net, the
         engine's revert reason).
    """
    success: bool = False
    response: Bytes[196] = b""
    success, response = raw_call(
        engine,
        abi_encode(
            account,
            market_id,
            delta,
            price,
            method_id=method_id("fill(address,uint256,int256,uint256)"),
        ),
        max_outsize=196,
        revert_on_failure=False,
    )
    if success:
        return True, abi_decode(response, int256), ""
    return False, 0, self._reason(response)


@internal
def _cancel(order_id: uint256, account: address, slot: uint256, w: uint256, reason: String[64]):
    """
    @dev Frees the slot, refunds the escrowed fee and logs why.
    """
    self._orders[account][slot] = 0
    refund: uint256 = ((w >> 61) & _MASK32) * FEE_UNIT
    if refund > 0:
        extcall IEngine(self.engine).escrow_fee(account, -convert(refund, int256))
    log OrderCancelled(
        order_id=order_id, account=account, caller=msg.sender, reason=reason, refund=refund
    )


@internal
def _pay(pool_net: int256, fees: uint256):
    """
    @dev Settles a batch's fills with the pool and pays the settler.
    """
    if pool_net != 0 or fees > 0:
        extcall IEngine(self.engine).pay_fills(pool_net, msg.sender, fees)


@internal
def _set_config(settlement_fee_: uint256, max_window_: uint256):
    assert settlement_fee_ <= _MAX_FEE_MICRO, "book: fee above maximum"
    assert max_window_ > 0 and max_window_ <= _MAX_WINDOW, "book: bad window"
    self._config = settlement_fee_ | (max_window_ << 32)
    log ConfigSet(settlement_fee=settlement_fee_, max_window=max_window_)


@view
@internal
def _find(order_id: uint256) -> (address, uint256, uint256):
    """
    @dev The account, slot and stored word of an order id (word 0 if no
         such pending order: the slot is free or holds a later order).
    """
    account: address = convert(convert(order_id >> 96, uint160), address)
    slot: uint256 = order_id & _MASK8
    if slot >= _SLOTS:
        return account, 0, 0
    w: uint256 = self._orders[account][slot]
    if w & _MASK40 != (order_id >> 8) & _MASK40:
        return account, slot, 0
    return account, slot, w


@pure
@internal
def _expiry(w: uint256) -> uint256:
    return (w & _MASK40) + ((w >> 40) & _MASK16)


@view
@internal
def _unpack(account: address, w: uint256) -> Order:
    """
    @dev Inverse of the packing in `commit_order`.
    """
    return Order(
        account=account,
        market_id=(w >> 56) & _MASK4,
        size_delta=convert(w >> 149, int256) - _SIZE_BIAS,
        acceptable_price=((w >> 93) & _MASK48) * 10**((w >> 141) & _MASK8),
        commit_time=w & _MASK40,
        expiry=self._expiry(w),
        reduce_only=(w >> 60) & 1 == 1,
        fee=((w >> 61) & _MASK32) * FEE_UNIT,
    )


@pure
@internal
def _compress(price: uint256, upper: bool) -> (uint256, uint256):
    """
    @dev `price` as mantissa * 10**exponent with a 48-bit mantissa (about 14
         significant digits: a feed's prices and round bounds stay exact),
         rounded tighter: down for an upper bound (a buy), up for a lower
         bound (a sell).
    """
    mantissa: uint256 = price
    exponent: uint256 = 0
    inexact: bool = False
    # divide by the largest powers of ten that leave mantissa >= 2**48, then
    # once more by ten if needed: the smallest exponent, in 7 steps at most
    for k: uint256 in [32, 16, 8, 4, 2, 1]:
        step: uint256 = 10**k
        if mantissa >= 2**_MANTISSA_BITS * step:
            if mantissa % step != 0:
                inexact = True
            mantissa = mantissa // step
            exponent += k
    if mantissa >= 2**_MANTISSA_BITS:
        if mantissa % 10 != 0:
            inexact = True
        mantissa = mantissa // 10
        exponent += 1
    if not upper and inexact:
        assert exponent < 60, "book: acceptable price out of range"
        mantissa += 1
        if mantissa == 2**_MANTISSA_BITS:
            mantissa = 2**_MANTISSA_BITS // 10 + 1
            exponent += 1
    return mantissa, exponent


@pure
@internal
def _reason(response: Bytes[196]) -> String[64]:
    """
    @dev The reason string of an `Error(string)` revert, or a generic one.
    """
    if len(response) < 68 or convert(slice(response, 0, 4), bytes4) != method_id(
        "Error(string)", output_type=bytes4
    ):
        return "book: fill reverted"
    length: uint256 = extract32(response, 36, output_type=uint256)
    if length > 64 or len(response) < 68 + length:
        return "book: fill reverted"
    return convert(slice(response, 68, length), String[64])

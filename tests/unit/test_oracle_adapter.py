"""Unit tests of OracleAdapter (and the MockAggregator feed it is tested against)."""

import ape
import pytest
from ape.utils import ZERO_ADDRESS

WAD = 10**18
HEARTBEAT = 3_600
FALLBACK_HEARTBEAT = 86_400
GRACE = 3_600
MIN_PRICE = 1 * WAD
MAX_PRICE = 1_000_000 * WAD

# Gas of a whole transaction that calls the adapter on the happy path (8-decimal
# MockAggregator primary, no fallback, no sequencer), 21,000 base and calldata
# included. Observed with Vyper 0.4.3 on Anvil 1.7.1: price() 27,303, try_price()
# 27,327. Of the 6,303 above the base: 2,600 cold account access to the feed and
# 2,527 inside the mock (2,100 of them a cold SLOAD); the adapter itself ~1,100.
# A real Chainlink proxy + aggregator costs several thousand more than the mock.
PRICE_GAS_CEILING = 27_500
TRY_PRICE_GAS_CEILING = 27_550


@pytest.fixture(scope="module")
def owner(accounts):
    return accounts[0]


@pytest.fixture(scope="module")
def deploy_feed(owner, project):
    def deploy(decimals: int = 8, answer: int | None = None):
        if answer is None:
            answer = 2_000 * 10**decimals
        return owner.deploy(project.MockAggregator, decimals, answer)

    return deploy


@pytest.fixture(scope="module")
def deploy_adapter(owner, project):
    def deploy(
        primary,
        primary_heartbeat: int = HEARTBEAT,
        fallback=ZERO_ADDRESS,
        fallback_heartbeat: int = 0,
        sequencer=ZERO_ADDRESS,
        sequencer_grace: int = 0,
        min_price: int = MIN_PRICE,
        max_price: int = MAX_PRICE,
    ):
        return owner.deploy(
            project.OracleAdapter,
            primary,
            primary_heartbeat,
            fallback,
            fallback_heartbeat,
            sequencer,
            sequencer_grace,
            min_price,
            max_price,
        )

    return deploy


@pytest.fixture
def feed(deploy_feed):
    return deploy_feed(8)


@pytest.fixture
def backup_feed(deploy_feed):
    # 18 decimals and a slightly different price, so the source is visible.
    return deploy_feed(18, 2_001 * WAD)


@pytest.fixture
def sequencer_feed(deploy_feed):
    return deploy_feed(0, 0)


@pytest.fixture
def adapter(deploy_adapter, feed):
    return deploy_adapter(feed)


@pytest.fixture
def adapter_with_fallback(deploy_adapter, feed, backup_feed):
    return deploy_adapter(feed, fallback=backup_feed, fallback_heartbeat=FALLBACK_HEARTBEAT)


@pytest.fixture
def adapter_with_sequencer(deploy_adapter, feed, sequencer_feed, chain):
    # The sequencer has been up for longer than the grace period.
    chain.pending_timestamp += GRACE + 1
    chain.mine()
    return deploy_adapter(
        feed, primary_heartbeat=10 * GRACE, sequencer=sequencer_feed, sequencer_grace=GRACE
    )


def head_time(chain) -> int:
    return chain.blocks.head.timestamp


def assert_invalid(adapter, reason: str):
    with ape.reverts(reason):
        adapter.price()
    assert adapter.try_price() == (0, False)
    assert adapter.status() == (0, False, False)
    assert adapter.reason() == reason


# --- normalisation ----------------------------------------------------------------


@pytest.mark.parametrize("decimals", [0, 6, 8, 18, 20, 36])
def test_price_normalises_feed_decimals_to_wad(deploy_feed, deploy_adapter, decimals):
    answer = 20 * 10**decimals + (decimals > 0)  # 20.00...01 in the feed's units
    feed = deploy_feed(decimals, answer)
    adapter = deploy_adapter(feed)
    expected = answer * WAD // 10**decimals
    assert adapter.price() == expected
    assert adapter.try_price() == (expected, True)
    assert adapter.status() == (expected, True, False)
    assert adapter.reason() == ""


def test_price_rounds_down_for_feeds_above_18_decimals(deploy_feed, deploy_adapter):
    feed = deploy_feed(20, 2_000 * 10**20 + 99)
    adapter = deploy_adapter(feed)
    assert adapter.price() == 2_000 * WAD


def test_price_follows_new_answers(adapter, feed, owner):
    assert adapter.price() == 2_000 * WAD
    feed.set_answer(1_234_50000000, sender=owner)
    assert adapter.price() == 1_234_5 * WAD // 10


# --- rejected answers ---------------------------------------------------------------


@pytest.mark.parametrize("answer", [0, -1, -(2_000 * 10**8)])
def test_non_positive_answer_is_rejected(adapter, feed, owner, answer):
    feed.set_answer(answer, sender=owner)
    assert_invalid(adapter, "oracle: non-positive price")


def test_answer_older_than_heartbeat_is_stale(adapter, feed, owner, chain):
    now = head_time(chain) + 100
    chain.pending_timestamp = now
    feed.set_round(2_000 * 10**8, now - HEARTBEAT, now - HEARTBEAT, sender=owner)
    assert head_time(chain) == now
    assert adapter.price() == 2_000 * WAD  # exactly `heartbeat` old: still valid
    chain.mine(timestamp=now + 1)
    assert_invalid(adapter, "oracle: stale price")


def test_answer_goes_stale_with_time(adapter, chain):
    assert adapter.price() == 2_000 * WAD
    chain.pending_timestamp += HEARTBEAT + 1
    chain.mine()
    assert_invalid(adapter, "oracle: stale price")


def test_zero_updated_at_is_stale(deploy_adapter, feed, owner):
    # A huge heartbeat would accept a zero `updatedAt` without the explicit check.
    adapter = deploy_adapter(feed, primary_heartbeat=2**255)
    feed.set_round(2_000 * 10**8, 0, 0, sender=owner)
    assert_invalid(adapter, "oracle: stale price")


@pytest.mark.parametrize("heartbeat", [HEARTBEAT, 2**256 - 1])
def test_future_dated_answer_is_rejected(deploy_adapter, feed, owner, chain, heartbeat):
    # With the largest heartbeat only the explicit check can reject it (the age
    # would wrap around to a huge number otherwise).
    adapter = deploy_adapter(feed, primary_heartbeat=heartbeat)
    future = head_time(chain) + 1_000
    feed.set_round(2_000 * 10**8, future, future, sender=owner)
    assert_invalid(adapter, "oracle: future timestamp")


@pytest.mark.parametrize("decimals", [8, 20])
def test_bounds_are_inclusive_and_enforced(deploy_feed, deploy_adapter, owner, decimals):
    one = 10**decimals
    feed = deploy_feed(decimals)
    adapter = deploy_adapter(feed, min_price=1_000 * WAD, max_price=3_000 * WAD)

    feed.set_answer(1_000 * one, sender=owner)
    assert adapter.price() == 1_000 * WAD
    feed.set_answer(3_000 * one, sender=owner)
    assert adapter.price() == 3_000 * WAD

    feed.set_answer(1_000 * one - 1, sender=owner)
    assert_invalid(adapter, "oracle: price out of bounds")
    feed.set_answer(3_001 * one, sender=owner)
    assert_invalid(adapter, "oracle: price out of bounds")


def test_bounds_round_like_the_price_for_feeds_above_18_decimals(
    deploy_feed, deploy_adapter, owner
):
    feed = deploy_feed(20)
    adapter = deploy_adapter(feed, min_price=1_000 * WAD, max_price=3_000 * WAD)
    # 3000.000...0099 (20 decimals) scales down to exactly 3000 WAD: in bounds.
    feed.set_answer(3_000 * 10**20 + 99, sender=owner)
    assert adapter.price() == 3_000 * WAD
    feed.set_answer(3_000 * 10**20 + 100, sender=owner)
    assert_invalid(adapter, "oracle: price out of bounds")


def test_bound_beyond_feed_precision_rounds_up(deploy_feed, deploy_adapter, owner):
    # min_price 1.5e-8 is not a whole number of 8-decimal units: the lowest valid
    # answer is 2 units, never 1.
    feed = deploy_feed(8, 2)
    adapter = deploy_adapter(feed, min_price=15 * 10**9, max_price=WAD)
    assert adapter.price() == 2 * 10**10
    feed.set_answer(1, sender=owner)
    assert_invalid(adapter, "oracle: price out of bounds")


def test_huge_answer_is_out_of_bounds_without_overflow(deploy_feed, deploy_adapter, owner):
    feed = deploy_feed(0)
    adapter = deploy_adapter(feed, max_price=2**256 - 1)
    feed.set_answer(2**127 - 1, sender=owner)
    assert adapter.price() == (2**127 - 1) * WAD
    adapter_default_bounds = deploy_adapter(feed)
    assert_invalid(adapter_default_bounds, "oracle: price out of bounds")


def test_reverting_feed_is_rejected(adapter, feed, owner):
    feed.set_reverting(True, sender=owner)
    assert_invalid(adapter, "oracle: feed reverted")
    feed.set_reverting(False, sender=owner)
    assert adapter.price() == 2_000 * WAD


@pytest.mark.parametrize(
    "code",
    [
        b"",  # no code: the call succeeds with no return data
        bytes.fromhex("60206000f3"),  # returns one word
        bytes.fromhex("60806000f3"),  # returns four words
    ],
)
def test_short_feed_response_is_rejected(adapter, feed, chain, code):
    chain.provider.set_code(feed.address, code)
    assert_invalid(adapter, "oracle: bad feed response")


def test_longer_feed_response_is_accepted(adapter, feed, chain, owner):
    # Extra trailing words are ignored: a valid five-word prefix is enough. Give the
    # feed code that returns 6 words of memory holding a valid round.
    now = head_time(chain)
    words = [1, 2_000 * 10**8, now, now, 1, 0xDEAD]
    code = b""
    for i, word in enumerate(words):
        code += b"\x7f" + word.to_bytes(32, "big") + b"\x60" + bytes([32 * i]) + b"\x52"
    code += bytes.fromhex("60c06000f3")
    chain.provider.set_code(feed.address, code)
    assert adapter.price() == 2_000 * WAD


# --- fallback -----------------------------------------------------------------------


def test_primary_is_used_while_valid(adapter_with_fallback):
    assert adapter_with_fallback.price() == 2_000 * WAD
    assert adapter_with_fallback.status() == (2_000 * WAD, True, False)


@pytest.mark.parametrize("failure", ["revert", "stale", "negative", "bounds"])
def test_fallback_is_used_while_primary_invalid_then_primary_again(
    adapter_with_fallback, feed, backup_feed, owner, chain, failure
):
    now = head_time(chain)
    if failure == "revert":
        feed.set_reverting(True, sender=owner)
    elif failure == "stale":
        feed.set_round(2_000 * 10**8, now - HEARTBEAT - 10, now - HEARTBEAT - 10, sender=owner)
    elif failure == "negative":
        feed.set_answer(-1, sender=owner)
    else:
        feed.set_answer(2 * 10**6 * 10**8, sender=owner)
    assert adapter_with_fallback.price() == 2_001 * WAD
    assert adapter_with_fallback.try_price() == (2_001 * WAD, True)
    assert adapter_with_fallback.status() == (2_001 * WAD, True, True)
    assert adapter_with_fallback.reason() == ""

    feed.set_reverting(False, sender=owner)
    feed.set_answer(1_999 * 10**8, sender=owner)
    assert adapter_with_fallback.status() == (1_999 * WAD, True, False)


def test_fallback_has_its_own_heartbeat(adapter_with_fallback, backup_feed, owner, chain):
    # After 2 hours the primary (1 h heartbeat) is stale, the fallback (1 day) is not.
    chain.pending_timestamp += 2 * HEARTBEAT
    chain.mine()
    assert adapter_with_fallback.status() == (2_001 * WAD, True, True)
    chain.pending_timestamp += FALLBACK_HEARTBEAT
    chain.mine()
    assert_invalid(adapter_with_fallback, "oracle: stale price")


@pytest.mark.parametrize(
    "primary_failure, reason",
    [
        ("revert", "oracle: feed reverted"),
        ("zero", "oracle: non-positive price"),
        ("future", "oracle: future timestamp"),
    ],
)
def test_both_feeds_invalid_reverts_with_primary_reason(
    adapter_with_fallback, feed, backup_feed, owner, chain, primary_failure, reason
):
    backup_feed.set_reverting(True, sender=owner)
    if primary_failure == "revert":
        feed.set_reverting(True, sender=owner)
    elif primary_failure == "zero":
        feed.set_answer(0, sender=owner)
    else:
        future = head_time(chain) + 1_000
        feed.set_round(2_000 * 10**8, future, future, sender=owner)
    assert_invalid(adapter_with_fallback, reason)


def test_invalid_fallback_does_not_affect_valid_primary(adapter_with_fallback, backup_feed, owner):
    backup_feed.set_answer(-5, sender=owner)
    assert adapter_with_fallback.status() == (2_000 * WAD, True, False)


# --- sequencer ------------------------------------------------------------------------


def test_sequencer_up_past_grace_allows_price(adapter_with_sequencer):
    assert adapter_with_sequencer.price() == 2_000 * WAD
    assert adapter_with_sequencer.status() == (2_000 * WAD, True, False)


def test_sequencer_down_blocks_valid_price(adapter_with_sequencer, sequencer_feed, owner):
    sequencer_feed.set_answer(1, sender=owner)
    assert_invalid(adapter_with_sequencer, "oracle: sequencer down")


def test_sequencer_down_blocks_fallback_too(
    deploy_adapter, feed, backup_feed, sequencer_feed, owner, chain
):
    chain.pending_timestamp += GRACE + 1
    chain.mine()
    adapter = deploy_adapter(
        feed,
        primary_heartbeat=10 * GRACE,
        fallback=backup_feed,
        fallback_heartbeat=FALLBACK_HEARTBEAT,
        sequencer=sequencer_feed,
        sequencer_grace=GRACE,
    )
    assert adapter.price() == 2_000 * WAD
    feed.set_reverting(True, sender=owner)
    assert adapter.status() == (2_001 * WAD, True, True)
    sequencer_feed.set_answer(1, sender=owner)
    assert_invalid(adapter, "oracle: sequencer down")


def test_sequencer_grace_period_after_restart(
    adapter_with_sequencer, sequencer_feed, feed, owner, chain
):
    sequencer_feed.set_answer(1, sender=owner)
    restart = head_time(chain) + 100
    sequencer_feed.set_round(0, restart, restart, sender=owner)
    feed.set_round(2_000 * 10**8, restart, restart, sender=owner)
    chain.mine(timestamp=restart + GRACE - 1)
    assert_invalid(adapter_with_sequencer, "oracle: sequencer grace period")
    chain.mine(timestamp=restart + GRACE)
    assert adapter_with_sequencer.price() == 2_000 * WAD


def test_sequencer_restart_dated_in_future_is_in_grace(
    adapter_with_sequencer, sequencer_feed, owner, chain
):
    future = head_time(chain) + 1_000
    sequencer_feed.set_round(0, future, future, sender=owner)
    assert_invalid(adapter_with_sequencer, "oracle: sequencer grace period")


@pytest.mark.parametrize("failure", ["revert", "zero_started_at"])
def test_invalid_sequencer_feed_blocks_price(
    adapter_with_sequencer, sequencer_feed, owner, failure
):
    if failure == "revert":
        sequencer_feed.set_reverting(True, sender=owner)
    else:
        sequencer_feed.set_round(0, 0, 0, sender=owner)
    assert_invalid(adapter_with_sequencer, "oracle: sequencer feed invalid")


# --- constructor and views ----------------------------------------------------------


def test_views_report_configuration(deploy_adapter, feed, backup_feed, sequencer_feed):
    adapter = deploy_adapter(
        feed,
        primary_heartbeat=111,
        fallback=backup_feed,
        fallback_heartbeat=222,
        sequencer=sequencer_feed,
        sequencer_grace=333,
        min_price=444,
        max_price=555,
    )
    assert adapter.primary() == feed.address
    assert adapter.primary_heartbeat() == 111
    assert adapter.fallback() == backup_feed.address
    assert adapter.fallback_heartbeat() == 222
    assert adapter.sequencer() == sequencer_feed.address
    assert adapter.sequencer_grace() == 333
    assert adapter.min_price() == 444
    assert adapter.max_price() == 555


def test_optional_feeds_default_to_none(adapter):
    assert adapter.fallback() == ZERO_ADDRESS
    assert adapter.sequencer() == ZERO_ADDRESS


@pytest.mark.parametrize(
    "overrides, reason",
    [
        ({"primary": ZERO_ADDRESS}, "oracle: zero primary"),
        ({"primary_heartbeat": 0}, "oracle: zero heartbeat"),
        ({"min_price": 0}, "oracle: zero min price"),
        ({"min_price": 5 * WAD, "max_price": 5 * WAD}, "oracle: min price not below max"),
        ({"min_price": 6 * WAD, "max_price": 5 * WAD}, "oracle: min price not below max"),
        ({"fallback": "primary", "fallback_heartbeat": 1}, "oracle: fallback is primary"),
        ({"fallback": "backup", "fallback_heartbeat": 0}, "oracle: zero fallback heartbeat"),
    ],
)
def test_constructor_rejects_bad_config(deploy_adapter, feed, backup_feed, overrides, reason):
    args = {"primary": feed}
    args.update(overrides)
    if args.get("fallback") == "primary":
        args["fallback"] = feed
    elif args.get("fallback") == "backup":
        args["fallback"] = backup_feed
    with ape.reverts(reason):
        deploy_adapter(**args)


def test_constructor_rejects_feed_with_too_many_decimals(deploy_feed, deploy_adapter, feed):
    wide = deploy_feed(37, 1)
    with ape.reverts("oracle: unsupported decimals"):
        deploy_adapter(wide)
    with ape.reverts("oracle: unsupported decimals"):
        deploy_adapter(feed, fallback=wide, fallback_heartbeat=1)


# --- gas ------------------------------------------------------------------------------


def test_price_gas_on_primary_happy_path_stays_under_ceiling(adapter, owner):
    receipt = adapter.price.transact(sender=owner)
    assert not receipt.failed
    assert receipt.gas_used <= PRICE_GAS_CEILING, receipt.gas_used
    assert adapter.price.estimate_gas_cost(sender=owner) <= PRICE_GAS_CEILING


def test_try_price_gas_on_primary_happy_path_stays_under_ceiling(adapter, owner):
    receipt = adapter.try_price.transact(sender=owner)
    assert not receipt.failed
    assert receipt.gas_used <= TRY_PRICE_GAS_CEILING, receipt.gas_used


# --- best_since: the best price since a margin call (docs/design.md) ---------------------

# Gas of a `best_since` transaction that reads 32 rounds of the 8-decimal MockAggregator (the
# bound), 21,000 base included. Observed with Vyper 0.4.3 on Anvil 1.7.1: 155,324 (about
# 4,200 per round: a getRoundData call, its cold SLOAD and the checks). A real Chainlink
# proxy + aggregator reads more per round.
BEST_SINCE_32_GAS_CEILING = 160_000


def publish(feed, owner, chain, answers, step: int = 10) -> list[int]:
    """Publishes one round per answer (whole units, 8 decimals), `step` seconds apart;
    returns their updatedAt."""
    times = []
    for a in answers:
        chain.pending_timestamp = head_time(chain) + step
        tx = feed.set_answer(int(a * 10**8), sender=owner)
        times.append(chain.blocks[tx.block_number].timestamp)
    return times


def test_best_since_is_the_highest_for_a_long_and_the_lowest_for_a_short(
    adapter, feed, owner, chain
):
    times = publish(feed, owner, chain, [1_500, 2_300, 1_900, 2_100, 1_800])
    assert adapter.best_since(times[1] - 1, True) == 2_300 * WAD
    assert adapter.best_since(times[1] - 1, False) == 1_800 * WAD
    # only rounds published after `since` count
    assert adapter.best_since(times[2] - 1, True) == 2_100 * WAD
    assert adapter.best_since(times[0] - 1, False) == 1_500 * WAD
    assert adapter.best_since(times[-1] - 1, True) == 1_800 * WAD
    assert adapter.best_since(times[-1], True) == 0  # nothing published after


def test_best_since_skips_invalid_rounds_and_keeps_walking(deploy_adapter, feed, owner, chain):
    adapter = deploy_adapter(feed, min_price=1_000 * WAD, max_price=3_000 * WAD)
    [start] = publish(feed, owner, chain, [2_200])
    publish(feed, owner, chain, [0, -5, 900, 3_001])  # non-positive and out of bounds
    chain.pending_timestamp = head_time(chain) + 10
    feed.set_round(2_900 * 10**8, start, head_time(chain) + 10_000, sender=owner)  # future
    publish(feed, owner, chain, [2_000])
    assert adapter.best_since(start - 1, True) == 2_200 * WAD
    assert adapter.best_since(start - 1, False) == 2_000 * WAD


def test_best_since_stops_at_a_round_before_since(adapter, feed, owner, chain):
    [old] = publish(feed, owner, chain, [2_500])
    chain.pending_timestamp = head_time(chain) + 10
    feed.set_round(2_600 * 10**8, 0, 0, sender=owner)  # an unfinished round: stops the walk
    later = publish(feed, owner, chain, [2_050])
    assert adapter.best_since(old - 1, True) == 2_050 * WAD
    assert adapter.best_since(later[0], False) == 0


def test_best_since_reads_at_most_32_rounds(adapter, feed, owner, chain):
    times = publish(feed, owner, chain, [2_400] + [2_000] * 32)
    assert adapter.best_since(times[0] - 1, True) == 2_000 * WAD  # the 33rd round back is not read
    times = publish(feed, owner, chain, [2_400] + [2_000] * 31)
    assert adapter.best_since(times[0] - 1, True) == 2_400 * WAD  # the 32nd round back is
    tx = adapter.best_since.transact(times[0] - 1, True, sender=owner)
    assert tx.gas_used <= BEST_SINCE_32_GAS_CEILING, tx.gas_used


def test_best_since_never_reverts(adapter, feed, owner, chain):
    [t] = publish(feed, owner, chain, [2_100])
    feed.set_reverting(True, sender=owner)
    assert adapter.best_since(t - 1, True) == 0
    feed.set_reverting(False, sender=owner)
    # the walk ends at the first round (id 1), which is read
    assert adapter.best_since(0, False) == 2_000 * WAD


# --- the mock feed itself -------------------------------------------------------------


def test_mock_reports_rounds_like_chainlink(feed, owner, chain):
    assert feed.decimals() == 8
    assert feed.version() == 4
    assert feed.description() == "margincall mock aggregator"
    tx = feed.set_answer(-42, sender=owner)
    now = chain.blocks[tx.block_number].timestamp
    assert feed.latestRoundData() == (2, -42, now, now, 2)
    assert feed.getRoundData(1)[1] == 2_000 * 10**8
    assert feed.getRoundData(2) == (2, -42, now, now, 2)
    assert tx.events == [feed.AnswerUpdated(current=-42, roundId=2, updatedAt=now)]
    with ape.reverts("mock: no data present"):
        feed.getRoundData(3)


def test_mock_set_round_keeps_distinct_started_at(feed, owner):
    tx = feed.set_round(7, 100, 200, sender=owner)
    assert feed.latestRoundData() == (2, 7, 100, 200, 2)
    assert tx.events == [feed.AnswerUpdated(current=7, roundId=2, updatedAt=200)]
    feed.set_round(8, 300, 300, sender=owner)
    assert feed.latestRoundData() == (3, 8, 300, 300, 3)
    assert feed.getRoundData(2) == (2, 7, 100, 200, 2)


def test_mock_reverting_flag_survives_new_rounds(feed, owner):
    feed.set_reverting(True, sender=owner)
    feed.set_answer(5, sender=owner)
    with ape.reverts("mock: feed down"):
        feed.latestRoundData()
    feed.set_reverting(False, sender=owner)
    assert feed.latestRoundData()[1] == 5


def test_mock_rejects_values_it_cannot_pack(feed, owner):
    with ape.reverts("mock: answer out of int128 range"):
        feed.set_answer(2**127, sender=owner)
    with ape.reverts("mock: answer out of int128 range"):
        feed.set_answer(-(2**127) - 1, sender=owner)
    with ape.reverts("mock: timestamp too large"):
        feed.set_round(1, 0, 2**48, sender=owner)


# --- worst_price: liquidation's value without a valid price (the stale-leg shield fix) ----

STEP, CAP = 2 * 10**16, 50 * 10**16


def test_worst_price_is_the_valid_price_twice(adapter, adapter_with_fallback, feed, owner):
    assert adapter.worst_price() == (2_000 * WAD, 2_000 * WAD, True)
    feed.set_reverting(True, sender=owner)
    # the fallback's valid price is a valid price
    assert adapter_with_fallback.worst_price() == (2_001 * WAD, 2_001 * WAD, True)
    assert (adapter.HAIRCUT_STEP(), adapter.HAIRCUT_CAP()) == (STEP, CAP)


@pytest.mark.parametrize("heartbeats, cut", [(1, STEP), (3, 3 * STEP), (24, 24 * STEP), (40, CAP)])
def test_stale_answer_is_moved_against_the_holder_per_heartbeat_of_age(
    adapter, feed, owner, chain, heartbeats, cut
):
    # 1_234.56789012 so the roundings show: long rounded down, short up
    old = head_time(chain) - heartbeats * HEARTBEAT - 5
    feed.set_round(123_456_789_012, old, old, sender=owner)
    last = 123_456_789_012 * 10**10
    assert adapter.try_price() == (0, False)
    long_px, short_px, valid = adapter.worst_price()
    assert not valid
    assert long_px == last * (WAD - cut) // WAD
    assert short_px == -(-last * (WAD + cut) // WAD)


def test_haircut_stays_within_the_bounds(deploy_feed, deploy_adapter, owner, chain):
    feed = deploy_feed(8, 1_000 * 10**8)
    bounded = deploy_adapter(feed, min_price=990 * WAD, max_price=1_010 * WAD)
    old = head_time(chain) - 2 * HEARTBEAT - 5
    feed.set_round(1_000 * 10**8, old, old, sender=owner)
    assert bounded.worst_price() == (990 * WAD, 1_010 * WAD, False)


@pytest.mark.parametrize("fault", ["zero", "negative", "above_max", "future", "revert", "short"])
def test_no_usable_answer_gives_the_bounds(adapter, feed, owner, chain, fault):
    if fault == "zero":
        feed.set_answer(0, sender=owner)
    elif fault == "negative":
        feed.set_answer(-1, sender=owner)
    elif fault == "above_max":
        feed.set_answer(MAX_PRICE // 10**10 + 1, sender=owner)
    elif fault == "future":
        future = head_time(chain) + 1_000
        feed.set_round(2_000 * 10**8, future, future, sender=owner)
    elif fault == "revert":
        feed.set_reverting(True, sender=owner)
    else:
        chain.provider.set_code(feed.address, bytes.fromhex("60206000f3"))
    assert adapter.worst_price() == (MIN_PRICE, MAX_PRICE, False)


def test_worst_price_takes_the_younger_of_primary_and_fallback(
    adapter_with_fallback, feed, backup_feed, owner, chain
):
    now = head_time(chain)
    # primary stale by 3 heartbeats (1 h each), fallback by 1 (1 day): the fallback's cut
    feed.set_round(2_000 * 10**8, now - 3 * HEARTBEAT - 5, now - 3 * HEARTBEAT - 5, sender=owner)
    old = now - FALLBACK_HEARTBEAT - 5
    backup_feed.set_round(2_001 * WAD, old, old, sender=owner)
    assert adapter_with_fallback.worst_price() == (
        2_001 * WAD * (WAD - STEP) // WAD,
        2_001 * WAD * (WAD + STEP) // WAD,
        False,
    )
    # a broken fallback leaves the primary's stale answer
    backup_feed.set_reverting(True, sender=owner)
    assert adapter_with_fallback.worst_price() == (
        2_000 * WAD * (WAD - 3 * STEP) // WAD,
        2_000 * WAD * (WAD + 3 * STEP) // WAD,
        False,
    )


def test_worst_price_has_no_value_while_the_sequencer_blocks_prices(
    adapter_with_sequencer, sequencer_feed, owner, chain
):
    sequencer_feed.set_answer(1, sender=owner)
    assert adapter_with_sequencer.worst_price() == (0, 0, False)
    now = head_time(chain)
    sequencer_feed.set_round(0, now, now, sender=owner)  # back up: the grace period
    assert adapter_with_sequencer.worst_price() == (0, 0, False)

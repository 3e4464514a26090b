"""The simulator's chain layer and baseline parameters, without a chain: ABI codec, the fast
`check_margins` decoder, the baseline's risk parameters against the engine's bounds."""

from __future__ import annotations

import pytest
from eth_abi import encode
from eth_utils import keccak, to_checksum_address

from margincall.codec import (
    STATUS_FIELDS,
    Abi,
    check_status_layout,
    encode_addresses,
)
from margincall.constants import WAD, State
from margincall.math import RiskParams
from margincall.sdk import decode_statuses
from margincall.sim.baseline import BASELINE, PHASED, baseline_params, params_for

STATUS_TYPE = "(" + ",".join(t for _, t in STATUS_FIELDS) + ")[]"
ABI = [
    {
        "type": "function",
        "name": "check_margins",
        "inputs": [{"name": "accounts", "type": "address[]"}],
        "outputs": [
            {
                "name": "",
                "type": "tuple[]",
                "components": [{"name": n, "type": t} for n, t in STATUS_FIELDS],
            }
        ],
    },
    {
        "type": "function",
        "name": "deposit",
        "inputs": [{"name": "amount", "type": "uint256"}],
        "outputs": [],
    },
    {
        "type": "function",
        "name": "deposit",
        "inputs": [
            {"name": "amount", "type": "uint256"},
            {"name": "account", "type": "address"},
        ],
        "outputs": [],
    },
    {
        "type": "event",
        "name": "BadDebt",
        "inputs": [
            {"name": "account", "type": "address", "indexed": True},
            {"name": "amount", "type": "uint256", "indexed": False},
            {"name": "paid_by_fund", "type": "uint256", "indexed": False},
            {"name": "socialised", "type": "uint256", "indexed": False},
        ],
    },
]
ACCOUNT = to_checksum_address("0x" + "ab" * 20)


def test_decode_statuses_matches_the_generic_abi_decoder():
    rows = [
        (ACCOUNT, 5 * WAD, -3 * WAD, 2 * WAD, 4 * WAD, 0, int(State.BANKRUPT), 0, 0, 1, True),
        (ACCOUNT, 7 * WAD, 9 * WAD, WAD, 2 * WAD, 9 * WAD, int(State.CALLED), 123, 456, 2, True),
        (ACCOUNT, 1, 1, 0, 0, 2**256 - 1, int(State.HEALTHY), 0, 0, 0, False),
    ]
    data = "0x" + encode([STATUS_TYPE], [rows]).hex()
    got = decode_statuses(data)
    assert [tuple(getattr(s, n) for n, _ in STATUS_FIELDS) for s in got] == rows
    assert got[0].state is State.BANKRUPT and got[2].priced is False
    named = decode_statuses(data, {bytes.fromhex("ab" * 20): "trader-7"})
    assert named[0].account == "trader-7"


def test_abi_encodes_the_longest_overload_and_decodes_events():
    abi = Abi(ABI)
    check_status_layout(abi)
    data = abi.encode("deposit", 5, ACCOUNT)
    assert data[:10] == "0x" + keccak(text="deposit(uint256,address)")[:4].hex()
    topic = "0x" + keccak(text="BadDebt(address,uint256,uint256,uint256)").hex()
    log = {
        "topics": [topic, "0x" + encode(["address"], [ACCOUNT]).hex()],
        "data": "0x" + encode(["uint256"] * 3, [10, 7, 3]).hex(),
    }
    name, fields = abi.decode_log(log)
    assert name == "BadDebt"
    assert fields["amount"] == 10 and fields["paid_by_fund"] == 7 and fields["socialised"] == 3
    assert fields["account"].lower() == ACCOUNT.lower()
    assert abi.decode_log({"topics": ["0x" + "00" * 32], "data": "0x"}) is None


def test_address_array_calldata_matches_eth_abi():
    selector = keccak(text="check_margins(address[])")[:4]
    accounts = [to_checksum_address(f"0x{i:040x}") for i in (1, 2**159, 0xABC)]
    expected = "0x" + (selector + encode(["address[]"], [accounts])).hex()
    assert encode_addresses(selector, accounts) == expected
    assert encode_addresses(selector, []) == "0x" + (selector + encode(["address[]"], [[]])).hex()
    with pytest.raises(ValueError, match="40 hex"):
        encode_addresses(selector, ["0x1234"])


def test_a_changed_status_struct_is_refused():
    changed = [dict(ABI[0])]
    changed[0]["outputs"] = [{"name": "", "type": "uint256[]"}]
    with pytest.raises(RuntimeError, match="check_margins returns"):
        check_status_layout(Abi(changed))


def test_baseline_liquidates_everything_at_maintenance_within_the_engine_bounds():
    p = RiskParams()
    b = baseline_params(p)
    assert b.critical_ratio == WAD - 1 and b.call_ratio == WAD + 1
    assert b.close_factor == WAD and b.call_reward == 0
    assert (b.liquidation_penalty, b.keeper_share) == (p.liquidation_penalty, p.keeper_share)
    # the engine's bounds (MarginEngine._set_params / _check_market, docs/parameters.md)
    mmr, imr = 5 * WAD // 100, 10 * WAD // 100
    assert WAD < b.call_ratio <= 3 * WAD
    assert 10**17 <= b.critical_ratio < WAD
    assert b.liquidation_penalty * WAD < mmr * b.critical_ratio
    assert imr * WAD >= mmr * b.call_ratio
    assert params_for(PHASED, p) == p and params_for(BASELINE, p) == b
    with pytest.raises(ValueError, match="unknown mode"):
        params_for("lenient", p)


def test_setup_mining_stops_on_a_dropped_transaction_instead_of_mining_forever():
    """A transaction the node dropped never gets a receipt: `_mine_out` raises after
    STALL_BLOCKS empty blocks (a 500-trader setup once mined forever), and returns the
    receipts of the ones that were mined."""
    from margincall.sim.setup import STALL_BLOCKS, SimSetup, SimulationError, Tx

    sim = SimSetup.__new__(SimSetup)
    kept, dropped = Tx("a", "b", "0x", "deposit", 1), Tx("a", "b", "0x", "settle_orders", 1)
    sim.pending = {"0x1": kept, "0x2": dropped}
    blocks: list[int] = []

    def mine(timestamp=None, extra=()):
        blocks.append(timestamp)
        if len(blocks) == 1:
            return [(sim.pending.pop("0x1"), {"status": "0x1"})], []
        return [], []

    sim.mine = mine
    with pytest.raises(SimulationError, match=r"1 transactions \(settle_orders\) not mined"):
        sim._mine_out(100)
    assert len(blocks) == 1 + STALL_BLOCKS and blocks[:2] == [101, 102]

    sim.pending = {"0x1": kept}
    blocks.clear()
    assert sim._mine_out(7) == (8, [(kept, {"status": "0x1"})])

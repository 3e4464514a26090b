"""The peer benchmark without running it: the table and the docs block it writes, that our
Solidity helpers in bench/peers/ compile with solcjs (cached), and that the oracle and the
health lens agree with Morpho Blue itself on a small chain setup."""

from __future__ import annotations

import ape
import pytest
from ape.contracts import ContractContainer

from margincall.bench import solidity
from margincall.bench.peers_doc import (
    BEGIN,
    END,
    SECTION,
    PeerRow,
    breakdown_lines,
    console_table,
    render_block,
    replace_block,
    table_lines,
    write_doc,
)
from margincall.bench.trace import (
    EVENTS,
    EXECUTION,
    INTRINSIC,
    READS_COLD,
    REFUND,
    side_by_side,
)

ROWS = [
    PeerRow("liquidation tranche vs partial liquidate", 85_000, 90_606, "a", "b"),
    PeerRow("deposit", 60_000, 50_000, "c", "d"),
]
INFO = {
    "nproc": "2",
    "cpu": "cpu",
    "python": "3.11",
    "anvil": "1.7.1",
    "vyper": "0.4.3",
    "solc": "0.8.19",
    "date": "2026-12-06",
}
DOC = """# Benchmarks

Intro.

## Targets side by side

<!-- summary:begin -->
targets
<!-- summary:end -->

## Gas

<!-- gas:begin -->
gas table
<!-- gas:end -->
"""


def test_ratio_and_verdict_say_which_protocol_is_cheaper():
    cheaper, dearer = ROWS
    assert f"{cheaper.ratio:.2f}" == "0.94"
    assert cheaper.verdict == "margincall cheaper by 5,606"
    assert f"{dearer.ratio:.2f}" == "1.20"
    assert dearer.verdict == "Morpho cheaper by 10,000"
    assert PeerRow("x", 5, 5).verdict == "equal"


def test_table_has_one_line_per_row_with_both_figures_and_the_ratio():
    lines = table_lines(ROWS)
    assert lines[0].startswith("| operation | margincall | Morpho Blue | ratio")
    assert len(lines) == 2 + len(ROWS)
    assert lines[2].startswith(
        "| liquidation tranche vs partial liquidate | 85,000 | 90,606 | 0.94x"
    )
    assert lines[3].startswith("| deposit | 60,000 | 50,000 | 1.20x | Morpho cheaper by 10,000")
    text = console_table(ROWS)
    assert "90,606" in text and "1.20x" in text
    assert len(text.splitlines()) == 2 + len(ROWS)


MARGINCALL_PARTS = {
    EXECUTION: (20_000, 900),
    "call token": (30_000, 3),
    INTRINSIC: (21_400, 1),
    READS_COLD: (16_800, 8),
}
MORPHO_PARTS = {
    INTRINSIC: (23_400, 1),
    "call oracle": (8_000, 1),
    "call token": (27_000, 2),
    REFUND: (-4_800, 1),
    EVENTS: (3_000, 2),
}


def test_breakdowns_line_up_component_by_component():
    parts = side_by_side(MARGINCALL_PARTS, MORPHO_PARTS)
    assert [key for key, _, _ in parts] == [
        INTRINSIC,
        READS_COLD,
        EVENTS,
        "call token",
        "call oracle",
        EXECUTION,
        REFUND,
    ]
    by_key = {key: (left, right) for key, left, right in parts}
    assert by_key[EVENTS] == ((0, 0), (3_000, 2))
    assert by_key["call token"] == ((30_000, 3), (27_000, 2))
    lines = breakdown_lines("tranche vs partial liquidate", parts)
    assert lines[0] == "**tranche vs partial liquidate**"
    assert "| call token | 30,000 (3 calls) | 27,000 (2 calls) |" in lines
    assert "| call oracle | - | 8,000 (1 call) |" in lines
    assert "| storage refund | - | -4,800 |" in lines
    assert lines[-1] == "| **total (gas used)** | **88,200** | **56,600** |"
    block = render_block(ROWS, INFO, [], [("tranche vs partial liquidate", parts)])
    assert "Where the gas goes" in block and "**88,200**" in block
    assert block.index("| deposit |") < block.index("**tranche vs partial liquidate**")


def test_new_block_goes_after_the_targets_and_before_gas():
    block = render_block(ROWS, INFO, ["one condition"])
    assert block.startswith(BEGIN) and block.endswith(END)
    assert "- one condition" in block and "measured 2026-12-06" in block
    text = replace_block(DOC, block)
    assert text.index("<!-- summary:end -->") < text.index(SECTION) < text.index("## Gas")
    assert text.index(SECTION) < text.index(BEGIN) < text.index(END) < text.index("## Gas")
    assert "gas table" in text and "targets" in text and "Intro." in text


def test_second_run_replaces_the_block_and_leaves_the_rest_alone():
    first = replace_block(DOC, render_block(ROWS, INFO, []))
    rows = [PeerRow("deposit", 40_000, 50_000)]
    second = replace_block(first, render_block(rows, INFO, []))
    assert second.count(BEGIN) == 1 and second.count(SECTION) == 1
    assert "90,606" not in second and "40,000" in second
    assert second.replace(second[second.index(BEGIN) : second.index(END)], "") == first.replace(
        first[first.index(BEGIN) : first.index(END)], ""
    )
    assert replace_block(second, render_block(rows, INFO, [])) == second


def test_document_without_a_gas_section_gets_the_block_at_the_end(tmp_path):
    path = tmp_path / "benchmarks.md"
    path.write_text("# Benchmarks\n\nOther.\n")
    write_doc(path, render_block(ROWS, INFO, []))
    text = path.read_text()
    assert text.startswith("# Benchmarks\n\nOther.\n\n" + SECTION)
    assert text.rstrip().endswith(END)


def test_missing_document_is_created(tmp_path):
    path = tmp_path / "docs" / "benchmarks.md"
    write_doc(path, render_block(ROWS, INFO, []))
    assert path.read_text().startswith("# Benchmarks")
    assert BEGIN in path.read_text()


def test_solidity_helpers_compile_and_come_from_the_cache_the_second_time(tmp_path, monkeypatch):
    helpers = solidity.compile_sources(
        solidity.SOLC_MORPHO, [solidity.ORACLE_SOURCE, solidity.LENS_SOURCE], cache=tmp_path
    )
    token = solidity.compile_sources(solidity.SOLC_OZ, [solidity.TOKEN_SOURCE], cache=tmp_path)
    functions = {
        name: {e["name"] for e in a.abi if e["type"] == "function"}
        for name, a in {**helpers, **token}.items()
    }
    assert {"price", "FEED", "SCALE_FACTOR"} <= functions["FeedOracle"]
    assert {"health", "MORPHO"} <= functions["MorphoHealthLens"]
    assert {"mint", "transfer", "transferFrom", "decimals"} <= functions["BenchToken"]
    assert helpers["FeedOracle"].compiler.startswith("0.8.19+")
    assert token["BenchToken"].compiler.startswith("0.8.28+")
    for name in ("FeedOracle", "MorphoHealthLens", "BenchToken"):
        a = {**helpers, **token}[name]
        assert a.runtime_size > 0 and len(a.bytecode) > len(a.runtime)
    assert len(list(tmp_path.glob("*.json"))) == 2

    def no_compiler(*args, **kwargs):
        raise AssertionError("compiled again instead of reading the cache")

    monkeypatch.setattr(solidity, "run_solc", no_compiler)
    again = solidity.compile_sources(solidity.SOLC_OZ, [solidity.TOKEN_SOURCE], cache=tmp_path)
    assert again["BenchToken"] == token["BenchToken"]


def test_compile_error_is_raised_with_the_compiler_message(tmp_path):
    (tmp_path / "Broken.sol").write_text(
        "pragma solidity 0.8.19;\ncontract Broken { uint x = ; }\n"
    )
    with pytest.raises(solidity.SolcError, match="ParserError"):
        solidity.compile_sources(solidity.SOLC_MORPHO, ["Broken.sol"], root=tmp_path, cache=None)


# --- the helpers on chain, next to Morpho itself ---------------------------------------

WAD = 10**18
LLTV = 86 * WAD // 100
ZERO = "0x" + "00" * 20


@pytest.fixture(scope="module")
def morpho_market(owner, lp, trader, project):
    """Morpho with one market (no IRM, LLTV 86%) on our oracle over a MockAggregator at 2,000;
    the lp supplied 100,000 and the trader holds 4 ETH of collateral and 6,800 of debt."""
    art = solidity.compile_peers()  # cached under .build/peers after the first compile

    def deploy(name, *args):
        return owner.deploy(ContractContainer(art[name].contract_type()), *args)

    usd = deploy("BenchToken", "Bench USD", "bUSD", 18)
    weth = deploy("BenchToken", "Bench ETH", "bETH", 18)
    feed = owner.deploy(project.MockAggregator, 8, 2_000 * 10**8)
    oracle = deploy("FeedOracle", feed.address, 8, 18, 18)
    morpho = deploy("Morpho", owner.address)
    lens = deploy("MorphoHealthLens", morpho.address)
    params = (usd.address, weth.address, oracle.address, ZERO, LLTV)
    morpho.enableIrm(ZERO, sender=owner)
    morpho.enableLltv(LLTV, sender=owner)
    morpho.createMarket(params, sender=owner)
    usd.mint(lp.address, 100_000 * WAD, sender=lp)
    usd.approve(morpho.address, 2**256 - 1, sender=lp)
    morpho.supply(params, 100_000 * WAD, 0, lp.address, b"", sender=lp)
    weth.mint(trader.address, 4 * WAD, sender=trader)
    weth.approve(morpho.address, 2**256 - 1, sender=trader)
    morpho.supplyCollateral(params, 4 * WAD, trader.address, b"", sender=trader)
    morpho.borrow(params, 6_800 * WAD, 0, trader.address, trader.address, sender=trader)
    return {"morpho": morpho, "lens": lens, "oracle": oracle, "feed": feed, "params": params}


def test_oracle_scales_the_shared_feed_to_morphos_1e36_price(morpho_market, owner):
    feed, oracle = morpho_market["feed"], morpho_market["oracle"]
    assert oracle.price() == 2_000 * 10**36  # one wei of collateral in wei of loan token, x1e36
    feed.set_answer(123_456_000_000, sender=owner)  # 1,234.56
    assert oracle.price() == 123_456 * 10**34
    feed.set_answer(-1, sender=owner)
    with ape.reverts("oracle: negative answer"):
        oracle.price()


def test_lens_health_is_morphos_own_liquidation_boundary(morpho_market, owner, trader, keeper):
    morpho, lens, params = morpho_market["morpho"], morpho_market["lens"], morpho_market["params"]
    feed = morpho_market["feed"]
    feed.set_answer(2_000 * 10**8, sender=owner)
    borrowed, max_borrow, healthy = lens.health(params, trader.address)
    assert borrowed == 6_800 * WAD
    assert max_borrow == 4 * 2_000 * LLTV  # 4 ETH at 2,000 x 86%, in wei
    assert healthy
    with ape.reverts("position is healthy"):
        morpho.liquidate(params, trader.address, WAD, 0, b"", sender=keeper)
    feed.set_answer(1_800 * 10**8, sender=owner)
    borrowed, max_borrow, healthy = lens.health(params, trader.address)
    assert (borrowed, max_borrow, healthy) == (6_800 * WAD, 4 * 1_800 * LLTV, False)
    usd = ContractContainer(solidity.compile_peers()["BenchToken"].contract_type()).at(params[0])
    usd.mint(keeper.address, 10_000 * WAD, sender=keeper)
    usd.approve(morpho.address, 2**256 - 1, sender=keeper)
    receipt = morpho.liquidate(params, trader.address, WAD, 0, b"", sender=keeper)
    (event,) = receipt.decode_logs(morpho.Liquidate)
    assert event.seizedAssets == WAD and event.badDebtAssets == 0

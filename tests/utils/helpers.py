"""Test helpers: funding actors, opening positions, checking conservation."""

from __future__ import annotations

from margincall.constants import WAD


def wad(x: float) -> int:
    return int(round(x * WAD))


def mint_and_approve(system, who, whole_tokens: float, spender=None) -> int:
    amount = int(whole_tokens * system.unit)
    system.token.mint(who.address, amount, sender=who)
    system.token.approve((spender or system.engine).address, 2**256 - 1, sender=who)
    return amount


def fund_lp(system, lp, whole_tokens: float) -> None:
    amount = mint_and_approve(system, lp, whole_tokens, spender=system.pool)
    system.pool.deposit(amount, lp.address, sender=lp)


def deposit(system, trader, whole_tokens: float):
    amount = mint_and_approve(system, trader, whole_tokens)
    return system.engine.deposit(amount, trader.address, sender=trader)


def open_position(system, trader, market_id: int, size: float, slippage: float = 0.05):
    """Opens `size` base units (negative: short) with a loose slippage bound."""
    price = system.engine.markets(market_id).oracle
    oracle = system.oracles[market_id]
    p = oracle.price()
    bound = int(p * (1 + slippage)) if size > 0 else int(p * (1 - slippage))
    return system.engine.trade(market_id, wad(size), bound, sender=trader)


def assert_conserved(system, accounts) -> None:
    """Engine's token balance equals the sum of its collateral ledgers."""
    held = system.token.balanceOf(system.engine.address)
    ledger = sum(system.engine.collateral_of(a.address) for a in accounts)
    assert held == ledger, f"engine holds {held}, ledgers sum to {ledger}"

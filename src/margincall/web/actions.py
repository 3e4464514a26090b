"""The wallet actions' server side: the SDK's pre-checks before signing, the result after.

`precheck(view, body)` takes what the page is about to do (`action`: deposit, reduce or
close; `account`; `from`, the wallet's address; `amount` in whole tokens or `size` in base
units) and runs the SDK's checks for it (`check_deposit`, `check_trade`), exactly those the
CLI runs before sending. It returns the calls the wallet must sign, in order (an `approve`
first when the engine's allowance is short), each with its ABI fragment, and what the
account would look like after. Nothing is signed or sent here.

`tx_result(view, tx_hash)` reads the receipt and the engine's events of that transaction
(through `read_events`) and the account's state now.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from margincall import math as ref
from margincall.constants import WAD, State
from margincall.report import fmt_fixed
from margincall.sdk import InsufficientFunds, InvalidRequest
from margincall.web.chain import ChainView, DashboardError, read_events, to_account
from margincall.web.render import event_line

SLIPPAGE_BPS = 50


def _amount(text: Any, decimals: int, what: str) -> int:
    try:
        d = Decimal(str(text).replace(",", "").replace("_", "").strip())
    except InvalidOperation:
        raise InvalidRequest(f"{what}: {text!r} is not a number") from None
    if not d.is_finite() or d <= 0:
        raise InvalidRequest(f"{what}: must be a positive number, got {text!r}")
    scaled = d.scaleb(decimals)
    if scaled != scaled.to_integral_value():
        raise InvalidRequest(f"{what}: {text} has more than {decimals} decimals")
    return int(scaled)


def _after(view: ChainView, model: ref.Account) -> dict[str, Any]:
    """Ratio and whether the call ratio is met, for an account after the action."""
    client = view.clients.engine  # type: ignore[union-attr]
    v = ref.evaluate(model, client.scale)
    ratio = v.ratio
    params = client.risk_params()
    return {
        "ratio_after": "∞" if ratio >= ref.MAX_UINT else f"{ratio / WAD:.4f}",
        "cures": v.maintenance == 0 or v.equity * WAD >= params.call_ratio * v.maintenance,
    }


def precheck(view: ChainView, body: dict[str, Any]) -> dict[str, Any]:
    """The SDK's checks for `body`; the calls to sign when they pass (see the module)."""
    with view.lock:
        if view.clients is None:
            view.refresh()
        client = view.clients.engine  # type: ignore[union-attr]
        action = str(body.get("action", ""))
        account = to_account(str(body.get("account", "")))
        sender = to_account(str(body.get("from", "")))
        if action == "deposit":
            return _deposit(view, client, account, sender, body)
        if action not in ("reduce", "close"):
            raise InvalidRequest(f"unknown action {action!r} (deposit, reduce or close)")
        if sender != account:
            raise InvalidRequest(
                f"only the account itself can {action} its positions: the wallet is {sender}, "
                f"the account {account} (a deposit may come from anyone)"
            )
        return _reduce(view, client, account, action, body)


def _deposit(view, client, account: str, sender: str, body) -> dict[str, Any]:
    amount = _amount(body.get("amount"), client.decimals, "deposit")
    whole = fmt_fixed(amount, client.decimals, min(client.decimals, 6))
    checks = [f"deposit {whole} tokens for {account}"]
    calls = []
    try:
        client.check_deposit(amount, sender, account)
        checks.append("balance and allowance cover it")
    except InsufficientFunds as err:
        if "allowance" not in str(err):
            raise
        checks.append(f"{err}: the wallet approves the engine first")
        calls.append(client.wallet_call("approve", [client.address, amount], on="token"))
    calls.append(client.wallet_call("deposit", [amount, account]))
    model = client.model(account)
    after = ref.Account(
        model.collateral + amount,
        model.positions,
        model.deadline,
        model.last_tranche,
        model.tranches,
    )
    return {"ok": True, "checks": checks, "calls": calls, **_after(view, after)}


def _reduce(view, client, account: str, action: str, body) -> dict[str, Any]:
    try:
        market_id = int(body.get("market", -1))
    except (TypeError, ValueError):
        raise InvalidRequest(f"market: {body.get('market')!r} is not a market id") from None
    position = next((p for p in client.positions(account) if p.market_id == market_id), None)
    if position is None:
        raise InvalidRequest(f"{action}: no open position in market {market_id}")
    size = abs(position.size)
    if action == "close":
        reduce = size
    else:
        reduce = _amount(body.get("size"), 18, "reduce")
        if reduce > size:
            raise InvalidRequest(
                f"reduce: {reduce / WAD:g} is more than the position's {size / WAD:g}; "
                "close it instead"
            )
    delta = -reduce if position.size > 0 else reduce
    acceptable = client.acceptable_price(market_id, delta, SLIPPAGE_BPS)
    client.check_trade(market_id, delta, acceptable, account)
    # a reduce-only order: a keeper settles it at the first oracle round after the commit
    orders = client.orders
    expiry = client.now + orders.max_window()
    orders.check_commit(market_id, delta, acceptable, expiry, account, True)
    call = client.wallet_call(
        "commit_order", [market_id, delta, acceptable, expiry, True], on="book", label=action
    )
    fee = client.market(market_id).fee
    after = ref.after_reduction(client.model(account), market_id, reduce, fee, client.scale)
    checks = [
        f"{action} market {market_id} by {reduce / WAD:g} at the oracle price "
        f"{position.price / WAD:,.2f}, slippage bound {acceptable / WAD:,.2f} "
        f"({SLIPPAGE_BPS} bps): the engine accepts it; a reduce-only order, settled by a keeper at "
        "the first oracle round after its commit"
    ]
    return {"ok": True, "checks": checks, "calls": [call], **_after(view, after)}


def tx_result(view: ChainView, tx_hash: str) -> dict[str, Any]:
    """What a mined transaction did to the engine, and the accounts it touched now."""
    text = str(tx_hash).strip().lower()
    if not (text.startswith("0x") and len(text) == 66):
        raise DashboardError(f"{tx_hash!r} is not a transaction hash")
    with view.lock:
        receipt = view.provider.web3.eth.get_transaction_receipt(text)
        if receipt is None:
            raise DashboardError(f"transaction {text} is not mined")
        block = int(receipt["blockNumber"])
        source = view.source
        if source is None:
            raise DashboardError("not connected to the node yet")
        evs = [ev for ev in read_events(source, block, block) if ev.tx_hash == text]
        accounts = sorted({ev.account for ev in evs})
        states = {}
        if accounts:
            for s in view.clients.engine.statuses(accounts):  # type: ignore[union-attr]
                states[s.account] = State(s.state).name
    return {
        "ok": int(receipt["status"]) == 1,
        "block": block,
        "gas_used": int(receipt["gasUsed"]),
        "events": [f"{ev.name}: {event_line(ev, view.record.collateral_decimals)}" for ev in evs],
        "states": states,
    }


__all__ = ["precheck", "tx_result"]

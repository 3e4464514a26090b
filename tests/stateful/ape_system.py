"""Drives a system deployed on Anvil through Ape for the state machine (`ApeDriver`).

The real client path: every transaction is signed by a test account and mined by Anvil, every
view is an `eth_call`, events come decoded from receipts, reverts come back as Ape's
`ContractLogicError` with the contract's reason.

Time: Anvil's clock follows the wall clock and survives a snapshot revert, so the driver keeps
the model's time itself. Every transaction is pinned to it (`chain.pending_timestamp`), which
is the head block's time that views see; `travel` mines an empty block later. Each example
starts from a snapshot and ends by reverting to it.
"""

from __future__ import annotations

from typing import Any

from ape.exceptions import ContractLogicError
from eth_abi import decode as abi_decode
from eth_utils import to_hex
from web3.exceptions import ContractLogicError as Web3ContractLogicError

from margincall.deploy import deploy_system
from tests.stateful.driver import (
    FUND_SEED,
    FUZZ_MARKETS,
    LP_LIQUIDITY,
    POOL_COOLDOWN,
    TRADER_TOKENS,
    Actors,
    Driver,
    Ev,
    Sent,
)

ERROR_SELECTOR = bytes.fromhex("08c379a0")  # Error(string)


class ApeDriver(Driver):
    """A system deployed through Ape on the provider `chain` is connected to."""

    def __init__(self, chain: Any, system: Any, actors: Actors, signers: dict[str, Any]):
        super().__init__()
        self.chain = chain
        self.actors = actors
        self.signers = signers
        self.token, self.pool, self.fund = system.token, system.pool, system.fund
        self.engine = system.engine
        self.lens = system.lens
        self.feeds, self.oracles = system.feeds, system.oracles
        self.markets = system.markets
        self.decimals = int(system.token.decimals())
        self._now = chain.blocks.head.timestamp
        self._snapshot = None
        self._web3 = chain.provider.web3

    def now(self) -> int:
        return self._now

    def travel(self, seconds: int) -> None:
        self._now += seconds
        self.chain.pending_timestamp = self._now
        self.chain.mine()

    def _send(self, contract: Any, fn: str, args: tuple, sender: str) -> Sent:
        self.chain.pending_timestamp = self._now
        try:
            receipt = getattr(contract, fn)(*args, sender=self.signers[sender])
        except ContractLogicError as e:
            return Sent(False, e.revert_message)
        events = [
            Ev(log.event_name, log.contract_address, dict(log.event_arguments))
            for log in receipt.events
        ]
        return Sent(True, events=events)

    def balance(self, who: str) -> int:
        # The conservation check reads ten balances per step: a plain `eth_call` of
        # `balanceOf` is several times cheaper than Ape's contract call machinery.
        data = "0x70a08231" + str(who).lower()[2:].rjust(64, "0")
        return int.from_bytes(self._web3.eth.call({"to": self.token.address, "data": data}))

    def try_call(self, contract: Any, fn: str, *args: Any) -> tuple[bool, Any]:
        # Used for views expected to revert. Ape answers a reverted call with a trace and a
        # source-mapped error (about 1 s each on the engine); a plain `eth_call` gets the
        # same reason from Anvil at once. A call that succeeds is made again through Ape.
        data = getattr(contract, fn).encode_input(*args)
        try:
            self._web3.eth.call({"to": contract.address, "data": to_hex(data)})
        except Web3ContractLogicError as e:
            raw = bytes.fromhex(str(e.data or "")[2:])
            if raw[:4] != ERROR_SELECTOR:
                return False, str(e)
            return False, abi_decode(["string"], raw[4:])[0]
        return True, getattr(contract, fn)(*args)

    def start_example(self) -> None:
        self._snapshot = self.chain.snapshot()
        self._now = self.chain.blocks.head.timestamp
        self.forget()

    def end_example(self) -> None:
        self.chain.restore(self._snapshot)
        self.forget()


def deploy_funded_ape_system(
    chain: Any, project: Any, accounts: dict[str, Any], decimals: int
) -> ApeDriver:
    """Deploys a system with `margincall.deploy` (the fuzzed markets) and funds it as the
    titanoboa campaigns do. `accounts` maps roles to Ape accounts: owner, guardian, lp,
    second_lp, keeper, rival_keeper, donor and trader0..trader2."""
    a = accounts
    actors = Actors(
        owner=a["owner"].address,
        guardian=a["guardian"].address,
        lps=(a["lp"].address, a["second_lp"].address),
        keepers=(a["keeper"].address, a["rival_keeper"].address),
        donor=a["donor"].address,
        traders=tuple(a[f"trader{i}"].address for i in range(3)),
    )
    system = deploy_system(project, a["owner"], a["guardian"], decimals, markets=FUZZ_MARKETS)
    token, unit = system.token, 10**decimals
    for role, amount, spender in (
        ("lp", LP_LIQUIDITY, system.pool),
        ("second_lp", LP_LIQUIDITY, system.pool),
        ("donor", TRADER_TOKENS, system.fund),
        *((f"trader{i}", TRADER_TOKENS, system.engine) for i in range(3)),
    ):
        who = a[role]
        token.mint(who.address, amount * unit, sender=who)
        token.approve(spender.address, 2**256 - 1, sender=who)
    system.pool.set_cooldown(POOL_COOLDOWN, sender=a["owner"])
    system.pool.deposit(LP_LIQUIDITY * unit, a["lp"].address, sender=a["lp"])
    system.fund.donate(FUND_SEED * unit, sender=a["donor"])
    signers = {acct.address: acct for acct in a.values()}
    d = ApeDriver(chain, system, actors, signers)
    d.book = system.book
    return d

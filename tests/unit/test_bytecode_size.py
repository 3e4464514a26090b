"""Every deployable fits the EIP-170 code size limit (a larger one cannot deploy on mainnet),
and the engine keeps its headroom under it for the changes the protocol still needs.

What counts is the code stored at deployment: the compiled runtime plus the values of the
contract's immutables, which Vyper appends to it (32 bytes each). Anvil does not enforce the
limit (titanoboa does), so the size is read from the deployed code, not assumed."""

import pytest

EIP170_LIMIT = 24_576
# issue 15: the engine leaves 3,076 bytes of EIP-170 free (views on MarginLens, bounds on
# MarginParams, logic in contracts/modules/)
ENGINE_BUDGET = 21_500


def _sizes(chain, contract) -> tuple[int, int]:
    deployed = len(chain.provider.get_code(contract.address))
    runtime = contract.contract_type.runtime_bytecode.bytecode
    compiled = (len(runtime) - 2) // 2 if runtime.startswith("0x") else len(runtime) // 2
    return deployed, compiled


@pytest.mark.parametrize("name", ["engine", "lens", "checker", "pool", "fund", "oracle", "book"])
def test_deployed_code_fits_eip170(chain, system, name):
    contract = {
        "engine": system.engine,
        "lens": system.lens,
        "checker": system.checker,
        "pool": system.pool,
        "fund": system.fund,
        "oracle": system.oracles[0],
        "book": system.book,
    }[name]
    deployed, compiled = _sizes(chain, contract)
    assert deployed >= compiled  # immutables come on top of the compiled runtime
    assert 0 < deployed <= EIP170_LIMIT, f"{name}: {deployed} bytes deployed"


def test_engine_deployed_code_within_its_budget(chain, system):
    deployed, compiled = _sizes(chain, system.engine)
    # six immutables (token, pool, fund, scale, order book, checker), 32 bytes each
    assert deployed == compiled + 6 * 32
    assert deployed <= ENGINE_BUDGET, f"engine: {deployed} bytes deployed"

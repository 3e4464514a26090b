"""Every deployable fits the EIP-170 code size limit (a larger one cannot deploy on mainnet).

What counts is the code stored at deployment: the compiled runtime plus the values of the
contract's immutables, which Vyper appends to it (32 bytes each). Anvil does not enforce the
limit (titanoboa does), so the size is read from the deployed code, not assumed."""

import pytest

EIP170_LIMIT = 24_576


@pytest.mark.parametrize("name", ["engine", "pool", "fund", "oracle"])
def test_deployed_code_fits_eip170(chain, system, name):
    contract = {
        "engine": system.engine,
        "pool": system.pool,
        "fund": system.fund,
        "oracle": system.oracles[0],
    }[name]
    deployed = len(chain.provider.get_code(contract.address))
    runtime = contract.contract_type.runtime_bytecode.bytecode
    compiled = (len(runtime) - 2) // 2 if runtime.startswith("0x") else len(runtime) // 2
    assert deployed >= compiled  # immutables come on top of the compiled runtime
    assert 0 < deployed <= EIP170_LIMIT, f"{name}: {deployed} bytes deployed"

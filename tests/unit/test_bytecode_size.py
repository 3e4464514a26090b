"""Every deployable fits the EIP-170 runtime size limit (a larger one cannot deploy on mainnet)."""

import pytest

EIP170_LIMIT = 24_576


@pytest.mark.parametrize(
    "name", ["MarginEngine", "OracleAdapter", "LiquidityPool", "InsuranceFund"]
)
def test_runtime_bytecode_fits_eip170(project, name):
    code = getattr(project, name).contract_type.runtime_bytecode.bytecode
    size = (len(code) - 2) // 2 if code.startswith("0x") else len(code) // 2
    assert 0 < size <= EIP170_LIMIT, f"{name} runtime is {size} bytes"

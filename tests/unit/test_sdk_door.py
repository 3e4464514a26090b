"""The SDK is the only door to the contracts: outside `margincall.sdk`, the transport (the
keeper's `TxSender`, the simulator's raw JSON-RPC) and the deployer, no module calls a
contract function, reaches a contract through an SDK client or a deployed `System`, or loads
a contract type from the Ape project. An AST check over src/, bots/ and scripts/; it is shown
failing on planted violations."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [ROOT / "src" / "margincall", ROOT / "bots", ROOT / "scripts"]

# modules allowed to touch contracts, and why
ALLOWED = {
    "src/margincall/sdk/": "the SDK: the door itself",
    "src/margincall/deploy/": "the deployer (deploys, wires and records the contracts)",
    "src/margincall/codec.py": "the raw ABI codec below the SDK",
    "src/margincall/keeper/tx.py": "the transport: signs and sends what the SDK built",
    "src/margincall/sim/chain.py": "the simulator's raw JSON-RPC transport",
    "src/margincall/cli/fast.py": "`status` over raw JSON-RPC: importing margincall.sdk would "
    "load eth_abi and undo its <= 1.5 s start (docs/benchmarks.md, CLI speed)",
    "src/margincall/cli/dev.py": "local-chain helpers over raw JSON-RPC: importing margincall.sdk "
    "would load eth_abi and undo the fast commands' start",
    "src/margincall/sim/setup.py": "the simulator's setup: deploys through the deployer",
    "src/margincall/bench/gas.py": "the gas benchmark measures each contract function itself",
    "src/margincall/bench/peers.py": "the peer benchmark measures each function, next to Morpho",
    "src/margincall/bench/scan.py": "the scan benchmark times Ape's raw call against the SDK's",
    "src/margincall/demo/story.py": "the scripted walk-through shows the engine's own reverts",
}

# what a raw contract handle is called when reached through an SDK client or a `System`
RAW_HANDLES = {"engine", "token", "pool", "fund", "oracles", "adapter", "feeds", "lens"}
# MarginEngineClient.engine, System.engine, clients.engine.engine
HOLDERS = {"client", "system", "engine"}
APE_RAW = {"encode_input", "contract_type", "decode_logs", "call_view_method"}


DEV_CONTRACTS = {"MockERC20.vy", "MockAggregator.vy"}  # the dev chains' token and feeds


def _abi_functions() -> set[str]:
    """The external functions of the protocol's contracts and of the dev chains' token and
    feeds (from the Vyper sources; other test doubles aside)."""
    names: set[str] = set()
    for path in (ROOT / "contracts").rglob("*.vy"):
        if "testing" in path.parts and path.name not in DEV_CONTRACTS:
            continue
        text = path.read_text()
        names |= set(re.findall(r"@external\s*(?:@\w+\s*)*def (\w+)\(", text))
    return names


def _sdk_methods() -> set[str]:
    """Every method name of the SDK's classes (a call of one of them is not a raw call)."""
    names: set[str] = set()
    for path in (ROOT / "src" / "margincall" / "sdk").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef):
                names.add(node.name)
    return names


RAW_ONLY = _abi_functions() - _sdk_methods()


def _terminal(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def violations(source: str, name: str = "<planted>") -> list[str]:
    """Each raw contract access of a module's source, as `name:line: what`."""
    out: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute):
            holder = _terminal(node.value)
            if node.attr in RAW_HANDLES and holder is not None:
                if holder in HOLDERS or holder.endswith("_client"):
                    out.append(f"{name}:{node.lineno}: {holder}.{node.attr} (a raw contract)")
            if node.attr in APE_RAW:
                out.append(f"{name}:{node.lineno}: .{node.attr} (Ape's raw contract API)")
            if holder == "project" and node.attr[:1].isupper():
                out.append(f"{name}:{node.lineno}: project.{node.attr} (a contract type)")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr in RAW_ONLY:
                out.append(f"{name}:{node.lineno}: .{node.func.attr}() (a contract function)")
    return out


def _modules() -> list[tuple[str, Path]]:
    out = []
    for base in SOURCES:
        for path in sorted(base.rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if not any(rel == a or (a.endswith("/") and rel.startswith(a)) for a in ALLOWED):
                out.append((rel, path))
    return out


def test_the_contract_functions_are_known():
    # the check is only as good as its list: the engine's keeper actions and views are in it
    assert {"check_margins", "window_state", "liquidate_many", "risk_params"} <= _abi_functions()
    assert "check_margins" in RAW_ONLY and "deposit" not in RAW_ONLY


def test_no_module_outside_the_sdk_transport_and_deployer_touches_a_contract():
    modules = _modules()
    assert len(modules) > 40  # keeper, notify, sim, cli, bench, demo, bots, scripts
    found = [v for rel, path in modules for v in violations(path.read_text(), rel)]
    assert found == []


@pytest.mark.parametrize(
    "planted, what",
    [
        ("self.client.engine.liquidate_many(batch, sender=keeper)", "client.engine"),
        ("engine = system.engine", "system.engine"),
        ("statuses = engine.check_margins(accounts)", ".check_margins()"),
        ("start, used = contract.window_state(0)", ".window_state()"),
        ("engine = project.MarginEngine.at(record.engine)", "project.MarginEngine"),
        ("data = method.encode_input(*args)", ".encode_input"),
        ("logs = receipt.decode_logs(abi)", ".decode_logs"),
        ("fund_client.fund.fund_balance()", "fund_client.fund"),
    ],
)
def test_a_planted_raw_call_fails_the_check(planted, what):
    found = violations(f"def f(self, engine, contract, system, project, record):\n    {planted}\n")
    assert found and any(what in v for v in found), found


def test_the_sdks_own_calls_pass_the_check():
    legit = """
def f(clients, client, keeper, record):
    clients.engine.statuses(record.accounts)
    client.build("liquidate_many", ["0x" + "11" * 20])
    clients.fund.balance()
    client.deposit(1, keeper)
"""
    assert violations(legit) == []

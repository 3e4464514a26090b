"""Solidity for the peer benchmark: solcjs (the `solc` npm package) through its standard-JSON
API, driven from Python, with the outputs cached under `.build/peers/`.

The compilers and the sources they read come from the project's npm devDependencies
(package.json, package-lock.json): nothing is downloaded at compile time and no peer source is
copied into the repository. `bench/peers/solc.js` runs one compile; imports resolve against the
repository root, then `node_modules/`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[3]
CACHE = ROOT / ".build" / "peers"
DRIVER = ROOT / "bench" / "peers" / "solc.js"
HELPERS = "bench/peers"

# Morpho Blue's foundry.toml (profile.default): via_ir, optimizer_runs 999999,
# bytecode_hash "none", evm_version "paris".
MORPHO_SETTINGS: dict[str, Any] = {
    "viaIR": True,
    "optimizer": {"enabled": True, "runs": 999_999},
    "evmVersion": "paris",
    "metadata": {"bytecodeHash": "none"},
}
# Morpho.sol pins 0.8.19; OpenZeppelin 5.4 needs ^0.8.20, so the token has a compiler of its
# own (an npm alias of the same `solc` package).
SOLC_MORPHO = "solc"
SOLC_OZ = "solc-0.8.28"
MORPHO_SOURCE = "@morpho-org/morpho-blue/src/Morpho.sol"
TOKEN_SOURCE = f"{HELPERS}/BenchToken.sol"
ORACLE_SOURCE = f"{HELPERS}/FeedOracle.sol"
LENS_SOURCE = f"{HELPERS}/MorphoHealthLens.sol"


class SolcError(RuntimeError):
    """The compiler reported errors (or could not be run)."""


@dataclass(frozen=True)
class Artifact:
    """One compiled contract."""

    name: str
    source: str
    compiler: str  # solcjs's version string
    abi: list[dict[str, Any]]
    bytecode: str  # creation code, hex without 0x
    runtime: str  # deployed code (immutables unset), hex without 0x

    @property
    def runtime_size(self) -> int:
        return len(self.runtime) // 2

    def contract_type(self) -> Any:
        """An ethpm `ContractType` that Ape deploys (`ContractContainer(artifact...)`)."""
        from ethpm_types import ContractType

        return ContractType.model_validate(
            {
                "contractName": self.name,
                "sourceId": self.source,
                "abi": self.abi,
                "deploymentBytecode": {"bytecode": "0x" + self.bytecode},
                "runtimeBytecode": {"bytecode": "0x" + self.runtime},
            }
        )


def source_path(name: str, root: Path = ROOT) -> Path:
    """Where a source unit lives: the repository first, then node_modules."""
    for base in (root, root / "node_modules"):
        if (base / name).is_file():
            return base / name
    raise SolcError(f"source not found: {name} (run `make setup` for the npm packages)")


def standard_input(sources: list[str], settings: dict[str, Any], root: Path = ROOT) -> dict:
    """The standard-JSON input for `sources` (unit names), asking for ABI and bytecodes."""
    return {
        "language": "Solidity",
        "sources": {s: {"content": source_path(s, root).read_text()} for s in sources},
        "settings": {
            **settings,
            "outputSelection": {
                "*": {"*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"]}
            },
        },
    }


def cache_key(package: str, job: dict, root: Path = ROOT) -> str:
    """Changes with the compiler, the input, and the npm lock (which pins every import)."""
    lock = root / "package-lock.json"
    digest = hashlib.sha256(package.encode())
    digest.update(json.dumps(job, sort_keys=True).encode())
    digest.update(lock.read_bytes() if lock.exists() else b"")
    return digest.hexdigest()[:24]


def run_solc(package: str, job: dict, root: Path = ROOT, timeout: int = 900) -> dict:
    """One solcjs run: `{"version": ..., "output": ...}`; raises `SolcError` on errors."""
    node = shutil.which("node")
    if node is None:
        raise SolcError("node not found: solcjs needs Node.js")
    try:
        done = subprocess.run(
            [node, str(DRIVER), package, str(root)],
            input=json.dumps(job),
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=root,
        )
    except subprocess.TimeoutExpired as exc:
        raise SolcError(f"{package}: no answer in {timeout} s") from exc
    if done.returncode != 0:
        raise SolcError(f"{package} failed: {done.stderr.strip()[-2000:]}")
    result = json.loads(done.stdout)
    errors = [e for e in result["output"].get("errors", []) if e.get("severity") == "error"]
    if errors:
        raise SolcError("\n".join(e.get("formattedMessage", e["message"]) for e in errors))
    return result


def compile_sources(
    package: str,
    sources: list[str],
    settings: dict[str, Any] = MORPHO_SETTINGS,
    root: Path = ROOT,
    cache: Path | None = CACHE,
) -> dict[str, Artifact]:
    """Every contract the compile saw (`sources` and their imports), by name (cached by
    `cache_key`)."""
    job = standard_input(sources, settings, root)
    result = None
    path = cache / f"{cache_key(package, job, root)}.json" if cache is not None else None
    if path is not None and path.exists():
        result = json.loads(path.read_text())
    if result is None:
        result = run_solc(package, job, root)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(result))
    out: dict[str, Artifact] = {}
    for source, contracts in result["output"]["contracts"].items():
        for name, c in contracts.items():
            out[name] = Artifact(
                name,
                source,
                result["version"],
                c["abi"],
                c["evm"]["bytecode"]["object"],
                c["evm"]["deployedBytecode"]["object"],
            )
    return out


def compile_peers(root: Path = ROOT, cache: Path | None = CACHE) -> dict[str, Artifact]:
    """Morpho Blue 1.0.0, its one-feed oracle and health lens (solc 0.8.19), and the
    OpenZeppelin token (solc 0.8.28), all with Morpho's foundry.toml settings."""
    out = compile_sources(
        SOLC_MORPHO, [MORPHO_SOURCE, ORACLE_SOURCE, LENS_SOURCE], root=root, cache=cache
    )
    # Morpho emits its events from the EventsLib library, and solc 0.8.19 leaves library
    # events out of the contract's ABI: add them, so receipts decode.
    events = [e for e in out["EventsLib"].abi if e.get("type") == "event"]
    out["Morpho"] = replace(out["Morpho"], abi=out["Morpho"].abi + events)
    out.update(compile_sources(SOLC_OZ, [TOKEN_SOURCE], root=root, cache=cache))
    return out

"""Account names the CLI takes wherever it takes an address, resolved without starting Ape.

- a hex address (any case): checksummed;
- `TEST::N`: Ape's N-th test account, derived from the project's test mnemonic
  (`test.mnemonic` and `test.hd_path` in ape-config.yaml; Ape's defaults otherwise) with
  BIP-32 over coincurve, as Ape derives it (tests/unit/test_cli_accounts.py checks the two
  agree);
- any other name: an account imported into Ape (`ape accounts import NAME`), whose keyfile
  (`<ape data folder>/accounts/NAME.json`) carries its address in clear.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
from functools import lru_cache
from pathlib import Path

DEFAULT_TEST_MNEMONIC = "test test test test test test test test test test test junk"
DEFAULT_TEST_HD_PATH = "m/44'/60'/0'/0"
_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141  # secp256k1 order
_HEX = re.compile(r"^0x[0-9a-fA-F]{40}$")
_TEST = re.compile(r"^TEST::(\d+)$")


class AccountError(ValueError):
    """The name is neither an address, nor a test account, nor an imported alias."""


def keccak(data: bytes) -> bytes:
    from eth_hash.auto import keccak as _keccak

    return _keccak(data)


def checksum(address: str) -> str:
    """EIP-55 checksummed form of a 0x-prefixed 40-hex-digit address."""
    if not _HEX.match(address):
        raise AccountError(f"account: {address!r} is not an address")
    low = address[2:].lower()
    digest = keccak(low.encode()).hex()
    return "0x" + "".join(c.upper() if int(digest[i], 16) >= 8 else c for i, c in enumerate(low))


def _project_test_config(root: Path) -> tuple[str, str]:
    path = root / "ape-config.yaml"
    mnemonic, hd_path = DEFAULT_TEST_MNEMONIC, DEFAULT_TEST_HD_PATH
    if path.is_file():
        import yaml

        test = (yaml.safe_load(path.read_text()) or {}).get("test") or {}
        mnemonic = str(test.get("mnemonic") or mnemonic)
        hd_path = str(test.get("hd_path") or hd_path)
    return mnemonic, hd_path


@lru_cache(maxsize=64)
def test_account(index: int, mnemonic: str, hd_path: str) -> str:
    """The address of `hd_path/index` from `mnemonic` (BIP-39 seed, BIP-32 derivation)."""
    from coincurve import PrivateKey

    seed = hashlib.pbkdf2_hmac("sha512", mnemonic.encode(), b"mnemonic", 2048)
    digest = hmac.new(b"Bitcoin seed", seed, hashlib.sha512).digest()
    key, chain_code = int.from_bytes(digest[:32], "big"), digest[32:]
    steps = hd_path.rstrip("/").split("/")[1:] + [str(index)]
    for step in steps:
        hardened = step.endswith("'")
        i = int(step.rstrip("'")) + (0x80000000 if hardened else 0)
        if hardened:
            data = b"\x00" + key.to_bytes(32, "big")
        else:
            data = PrivateKey(key.to_bytes(32, "big")).public_key.format(compressed=True)
        digest = hmac.new(chain_code, data + i.to_bytes(4, "big"), hashlib.sha512).digest()
        key = (int.from_bytes(digest[:32], "big") + key) % _N
        chain_code = digest[32:]
    public = PrivateKey(key.to_bytes(32, "big")).public_key.format(compressed=False)[1:]
    return checksum("0x" + keccak(public)[-20:].hex())


def ape_data_folder() -> Path:
    return Path(os.environ.get("APE_DATA_FOLDER") or Path.home() / ".ape")


def resolve_account(name: str, root: Path | None = None) -> str:
    """The checksummed address of an address, `TEST::N` or an imported Ape alias."""
    text = name.strip()
    if _HEX.match(text):
        return checksum(text)
    test = _TEST.match(text)
    if test:
        mnemonic, hd_path = _project_test_config(root or Path.cwd())
        return test_account(int(test.group(1)), mnemonic, hd_path)
    if text.startswith("0x"):
        raise AccountError(f"account: {name!r} is not an address")
    keyfile = ape_data_folder() / "accounts" / f"{text}.json"
    try:
        address = json.loads(keyfile.read_text())["address"]
    except (OSError, ValueError, KeyError):
        raise AccountError(
            f"account: {name!r} is not an address, a test account (TEST::N) or an account "
            f"imported into Ape (no {keyfile})"
        ) from None
    return checksum(address if str(address).startswith("0x") else "0x" + str(address))


__all__ = ["AccountError", "checksum", "resolve_account", "test_account"]

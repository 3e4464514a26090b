"""`Clients`: the four clients over one deployed system (`Clients.from_system`,
`Clients.from_record`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from margincall.sdk.engine import MarginEngineClient
from margincall.sdk.errors import (
    InvalidRequest,
)
from margincall.sdk.fund import FundClient
from margincall.sdk.oracle import OracleClient
from margincall.sdk.pool import PoolClient

# --- all of them ------------------------------------------------------------------


@dataclass(frozen=True)
class Clients:
    """The four clients over one deployed system."""

    engine: MarginEngineClient
    pool: PoolClient
    fund: FundClient
    oracles: tuple[OracleClient, ...]

    @classmethod
    def from_contracts(
        cls,
        engine: Any,
        token: Any,
        pool: Any,
        fund: Any,
        oracles: Sequence[Any],
        lens: Any = None,
    ) -> Clients:
        return cls(
            MarginEngineClient(engine, token, oracles, lens),
            PoolClient(pool, token),
            FundClient(fund, token),
            tuple(OracleClient(o, m) for m, o in enumerate(oracles)),
        )

    @classmethod
    def from_system(cls, system: Any) -> Clients:
        """From a `margincall.deploy.System`."""
        return cls.from_contracts(
            system.engine, system.token, system.pool, system.fund, system.oracles, system.lens
        )

    @classmethod
    def from_record(cls, record: Any, project: Any) -> Clients:
        """From a `margincall.deploy.record.DeploymentRecord` and the Ape project's types."""
        c = record.contracts(project)
        return cls.from_contracts(
            c["engine"], c["token"], c["pool"], c["fund"], c["oracles"], c["lens"]
        )

    def oracle(self, market_id: int) -> OracleClient:
        if not 0 <= market_id < len(self.oracles):
            raise InvalidRequest(f"market {market_id}: no oracle adapter known to the client")
        return self.oracles[market_id]

"""Operations for the bots: the chain watchdog, `/metrics` (Prometheus) and `/health`.

Below `keeper/` and `notify/` (which register their metrics here) and above `sdk/`:

- `health`: the watchdog's logic without I/O (`Watch`, `Probe`, `Fault`);
- `probe`: one bounded JSON-RPC round to the node;
- `rpc`: a timeout on every web3 call of the bot;
- `exporter`, `server`: the Prometheus collector and the HTTP endpoint;
- `settings`: `MARGINCALL_METRICS_*`, `MARGINCALL_RPC_TIMEOUT`, ... (`OPS_VARS`);
- `service`: `Ops`, which runs them in the bot's process (docs/bots.md, "Operations").
"""

from margincall.ops.exporter import BotView, Series
from margincall.ops.health import Event, Expect, Fault, Probe, Watch
from margincall.ops.service import (
    FATAL_EXIT,
    ChainFault,
    Ops,
    current,
    install,
    register_bot,
)
from margincall.ops.settings import OPS_VARS, OpsConfigError, OpsSettings, check_env

__all__ = [
    "FATAL_EXIT",
    "OPS_VARS",
    "BotView",
    "ChainFault",
    "Event",
    "Expect",
    "Fault",
    "Ops",
    "OpsConfigError",
    "OpsSettings",
    "Probe",
    "Series",
    "Watch",
    "check_env",
    "current",
    "install",
    "register_bot",
]

"""The notifier: engine events and early warnings as messages, delivered exactly once.

`bots/notifier.py` (Silverback) is a thin shell around `Notifier`; everything
that decides what to send, and when, lives in this package and runs without a chain
(tests/unit/test_notify.py):

- **messages** (`event_message`, `warning_message`): one per `MarginCall`,
  `MarginCallCleared`, `Liquidation` and `BadDebt` event, addressed to the
  account the event concerns, and one per early-warning *episode*: a warning
  when an account's ratio falls under `warn_ratio`, re-armed only once the
  ratio is back at or above `warn_ratio * (1 + hysteresis)` (or the account
  has no position left). Each message is a JSON object with the raw event
  fields (integers as decimal strings), their units, human values and a text
  line (schema in docs/bots.md);
- **idempotency keys**: `<chain id>:<tx hash>:<log index>` for an event,
  `<chain id>:<engine>:warning:<account>:<block the episode began>` for a
  warning. Re-reading the same logs, or re-observing the same episode,
  yields the same key;
- **`Outbox`** (SQLite): `enqueue` is an `INSERT OR IGNORE` on the key, so a
  restart that re-reads logs never duplicates a message; a cursor (the last
  block whose logs are fully enqueued), the open positions and the warning
  episodes are committed in the same transaction as the messages, so a crash
  at any point resumes exactly where the last commit left off;
- **delivery** (`Webhook`, `deliver`): an HTTP POST of the JSON body with an
  `Idempotency-Key` header; a 2xx marks the message delivered (committed at
  once), anything else is retried with exponential backoff per message.
  Messages of one account are delivered in order (the next one waits for the
  previous one); accounts do not hold each other up.

Delivery guarantee: every enqueued message is POSTed until a 2xx comes back,
and is never POSTed again after its 2xx is committed. One window cannot be
closed from the sender's side: if the process dies (or the response is lost,
e.g. a timeout after the receiver has processed the request) between the
receiver's 2xx and the commit, the message is sent again after the restart,
with the same `Idempotency-Key`; a receiver that drops keys it has already
seen gets every message exactly once.
"""

from margincall.notify.config import (
    ENV_VARS,
    NotifierConfig,
    NotifierConfigError,
    default_outbox,
    notifier_env,
)
from margincall.notify.courier import (
    ChainSource,
    Courier,
    Notifier,
    TickReport,
)
from margincall.notify.messages import (
    EARLY_WARNING,
    KINDS,
    ORDER_EXPIRED,
    ORDER_KINDS,
    UNITS,
    WATCHED_EVENTS,
    WATCHED_ORDER_EVENTS,
    Context,
    EngineEvent,
    Message,
    WarningPolicy,
    event_key,
    event_message,
    human_value,
    raw_value,
    warning_key,
    warning_message,
)
from margincall.notify.metrics import export_prometheus
from margincall.notify.outbox import (
    Outbox,
    OutboxError,
    Pending,
)
from margincall.notify.source import (
    ApeSource,
)
from margincall.notify.webhook import (
    DeliveryError,
    DeliveryReport,
    Webhook,
    WebhookRejected,
    WebhookUnreachable,
    check_url,
    deliver,
)

__all__ = [
    "ApeSource",
    "ChainSource",
    "Context",
    "Courier",
    "DeliveryError",
    "DeliveryReport",
    "EARLY_WARNING",
    "ENV_VARS",
    "EngineEvent",
    "KINDS",
    "ORDER_EXPIRED",
    "ORDER_KINDS",
    "Message",
    "Notifier",
    "NotifierConfig",
    "NotifierConfigError",
    "Outbox",
    "OutboxError",
    "Pending",
    "TickReport",
    "UNITS",
    "WATCHED_EVENTS",
    "WATCHED_ORDER_EVENTS",
    "WarningPolicy",
    "Webhook",
    "WebhookRejected",
    "WebhookUnreachable",
    "check_url",
    "default_outbox",
    "deliver",
    "event_key",
    "event_message",
    "export_prometheus",
    "human_value",
    "notifier_env",
    "raw_value",
    "warning_key",
    "warning_message",
]

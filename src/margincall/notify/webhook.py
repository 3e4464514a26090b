"""Delivery (`Webhook`, `deliver`): an HTTP POST of the JSON body with an `Idempotency-Key`
header; a 2xx marks the message delivered (committed at once), anything else is retried
with exponential backoff per message. Messages of one account are delivered in order (the
next one waits for the previous one); accounts do not hold each other up.
"""

from __future__ import annotations

import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlparse

from margincall.notify.outbox import Outbox

USER_AGENT = "margincall-notifier/1"
# --- webhook ------------------------------------------------------------------------------


class DeliveryError(Exception):
    """A delivery attempt failed; the message stays pending."""


class WebhookUnreachable(DeliveryError):
    """No HTTP answer (refused, DNS, timeout): the next messages would fail the same way."""


class WebhookRejected(DeliveryError):
    """The receiver answered with a non-2xx status."""

    def __init__(self, status: int, reason: str = ""):
        self.status = status
        super().__init__(f"HTTP {status} {reason}".strip())


def check_url(url: str) -> str:
    """An absolute http(s) URL, or `ValueError`."""
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError(f"webhook URL must be an absolute http(s) URL, not {url!r}")
    return url


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects are refused: urllib would follow a 301/302/303 as a GET without the body,
    and its 2xx would count as a delivery that never happened."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


class Webhook:
    """POSTs a message's JSON body to `url` with an `Idempotency-Key` header.

    Only a 2xx answer delivers; a redirect (3xx) is a rejection like any other status:
    configure the final URL."""

    def __init__(self, url: str, timeout: float = 5.0, headers: Mapping[str, str] | None = None):
        self.url = check_url(url)
        if timeout <= 0:
            raise ValueError("webhook timeout must be positive")
        self.timeout = timeout
        self.headers = dict(headers or {})

    def send(self, key: str, body: bytes) -> int:
        """Returns the 2xx status; raises `WebhookRejected` or `WebhookUnreachable`."""
        request = urllib.request.Request(
            self.url,
            data=body,
            method="POST",
            headers={
                "Content-Type": "application/json",
                "Idempotency-Key": key,
                "User-Agent": USER_AGENT,
                **self.headers,
            },
        )
        try:
            with _OPENER.open(request, timeout=self.timeout) as response:
                response.read(65_536)
                status = int(response.status)
        except urllib.error.HTTPError as err:
            raise WebhookRejected(err.code, str(err.reason)) from None
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise WebhookUnreachable(f"{type(err).__name__}: {reason}") from None
        if not 200 <= status < 300:
            raise WebhookRejected(status)
        return status


class Sender(Protocol):
    def send(self, key: str, body: bytes) -> int: ...


@dataclass
class DeliveryReport:
    delivered: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    unreachable: bool = False


def deliver(
    outbox: Outbox,
    sender: Sender,
    budget: float = 2.0,
    clock: Callable[[], float] = time.monotonic,
    log: logging.Logger | None = None,
) -> DeliveryReport:
    """Sends due messages until none is due or `budget` seconds have passed.

    A 2xx is committed at once (`mark_delivered`); a non-2xx reschedules that
    message and delivery goes on with other accounts; an unreachable webhook
    ends the round (every other message would wait for the same timeout).
    """
    log = log or logging.getLogger(__name__)
    report = DeliveryReport()
    deadline = clock() + budget
    tried: set[str] = set()
    while clock() < deadline:
        batch = [p for p in outbox.due() if p.key not in tried]
        if not batch:
            break
        for p in batch:
            if clock() >= deadline:
                break
            tried.add(p.key)
            try:
                sender.send(p.key, p.body)
            except DeliveryError as err:
                delay = outbox.mark_failed(p.key, str(err))
                report.failed[p.key] = str(err)
                log.warning(
                    f"notify: delivery of {p.key} failed (attempt {p.attempts + 1}: {err}); "
                    f"retry in {delay:.1f} s"
                )
                if isinstance(err, WebhookUnreachable):
                    report.unreachable = True
                    return report
                continue
            outbox.mark_delivered(p.key)
            report.delivered.append(p.key)
            log.info(f"notify: delivered {p.key}")
    return report

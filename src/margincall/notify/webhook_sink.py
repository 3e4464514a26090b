"""A local webhook receiver: a stdlib HTTP server in a thread that records every POST with
its `Idempotency-Key`. The demo and the notifier tests use it as the notifier's webhook."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Delivery:
    key: str  # the Idempotency-Key header
    body: dict[str, Any]
    at: float


class WebhookServer:
    """A local HTTP server recording every POST (JSON body and `Idempotency-Key`).

    `status` is what it answers (200 by default; set e.g. 503 to refuse); `stop()` closes
    the port (connection refused) and `start()` opens the same port again.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self.host = host
        self.port = port
        self.status = 200
        self.deliveries: list[Delivery] = []
        self.refused = 0  # requests answered with a non-2xx status
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/hook"

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> WebhookServer:
        if self._server is not None:
            return self
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(length)
                status = outer.status
                with outer._lock:
                    if 200 <= status < 300:
                        outer.deliveries.append(
                            Delivery(
                                self.headers.get("Idempotency-Key", ""),
                                json.loads(raw),
                                time.monotonic(),
                            )
                        )
                    else:
                        outer.refused += 1
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):  # quiet
                pass

        self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    # --- what arrived ---

    def received(self) -> list[Delivery]:
        with self._lock:
            return list(self.deliveries)

    def keys(self) -> list[str]:
        return [d.key for d in self.received()]

    def wait_for(
        self,
        predicate: Callable[[list[Delivery]], bool],
        timeout: float = 30.0,
        what: str = "deliveries",
        on_timeout: Callable[[], str] = lambda: "",
    ) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        while True:
            got = self.received()
            if predicate(got):
                return got
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"webhook: no {what} within {timeout:.0f} s; got "
                    f"{[(d.body.get('kind'), d.key) for d in got]}\n{on_timeout()}"
                )
            time.sleep(0.05)

    def wait_for_keys(self, keys: set[str], timeout: float = 30.0, **kw: Any) -> list[Delivery]:
        return self.wait_for(lambda got: keys <= {d.key for d in got}, timeout, **kw)

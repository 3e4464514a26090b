"""The bot's HTTP endpoint: `GET /metrics` (Prometheus text format) and `GET /health`.

`/health` answers 200 when the bot is up and its node healthy, 503 otherwise, with a JSON
body that says why (`Watch.health`). A small threaded server from the standard library
(no web framework): it runs in a daemon thread next to the bot and binds
`MARGINCALL_METRICS_HOST:MARGINCALL_METRICS_PORT`.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

HealthFn = Callable[[], tuple[bool, dict]]


def _handler(registry: CollectorRegistry, health: HealthFn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._reply(200, CONTENT_TYPE_LATEST, generate_latest(registry))
            elif path == "/health":
                ok, body = health()
                data = json.dumps(body).encode() + b"\n"
                self._reply(200 if ok else 503, "application/json", data)
            else:
                self._reply(404, "text/plain", b"try /metrics or /health\n")

        def _reply(self, status: int, content_type: str, data: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:  # scrapes are not worth a log line
            return

    return Handler


class OpsServer:
    """`/metrics` and `/health` on `host:port` (port 0: a free one, see `url`)."""

    def __init__(self, host: str, port: int, registry: CollectorRegistry, health: HealthFn):
        self._server = ThreadingHTTPServer((host, port), _handler(registry, health))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="margincall-ops-http", daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> OpsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


__all__ = ["OpsServer"]

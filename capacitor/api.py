"""The HTTP endpoint on ``api.port``: ``/healthz`` and ``/metrics``.

``/healthz`` returns JSON with ``status`` (``ok``, ``failing`` or
``stopping``) and one entry per check, with HTTP 200 when every check
passes and 503 otherwise. ``/metrics`` returns capacitor.metrics.REGISTRY
in the Prometheus text format, or in OpenMetrics when the request's Accept
header names it.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client.exposition import choose_encoder

from capacitor import metrics

LOGGER = logging.getLogger(__name__)


@dataclass
class Health:
    """The result of the health checks: ``checks`` maps each check to ``ok`` or a problem."""

    status: str = "ok"
    checks: dict[str, str] = field(default_factory=dict)

    @property
    def healthy(self) -> bool:
        return self.status == "ok"

    def fail(self, check: str, problem: str) -> None:
        self.checks[check] = problem
        if self.status == "ok":
            self.status = "failing"


def _handler_class(health: Callable[[], Health]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "capacitor"

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/healthz":
                self._health()
            elif path == "/metrics":
                self._metrics()
            else:
                self._send(HTTPStatus.NOT_FOUND, b"not found: try /healthz or /metrics\n", "text/plain")

        def _health(self) -> None:
            result = health()
            body = json.dumps({"status": result.status, "checks": result.checks}, indent=2)
            code = HTTPStatus.OK if result.healthy else HTTPStatus.SERVICE_UNAVAILABLE
            self._send(code, body.encode() + b"\n", "application/json")

        def _metrics(self) -> None:
            encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
            self._send(HTTPStatus.OK, encoder(metrics.REGISTRY), content_type)

        def _send(self, code: HTTPStatus, body: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            LOGGER.debug("HTTP %s: " + format, self.client_address[0], *args)

    return Handler


class _IPv6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


class ApiServer:
    """Serve ``/healthz`` and ``/metrics`` from a thread."""

    def __init__(self, health: Callable[[], Health]) -> None:
        self.health = health
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int] | None:
        if self._server is None:
            return None
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self, host: str, port: int) -> None:
        """Bind `host`:`port` and serve; raise OSError when the port cannot be bound."""
        server_class = _IPv6Server if ":" in host else ThreadingHTTPServer
        server = server_class((host, port), _handler_class(self.health))
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="http-api", daemon=True)
        self._thread.start()
        LOGGER.info("HTTP endpoint listening on http://%s:%d (/healthz, /metrics)", host, port)

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

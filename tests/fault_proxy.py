"""A fault-injecting HTTP proxy for tests: put it in front of a real local server.

``FaultProxy(upstream)`` listens on 127.0.0.1 (a free port), forwards GET and POST to
``upstream`` and writes its own base URL over the upstream's in textual response bodies and
in headers, so that links a server builds from its own address (STAC ``self`` and ``next``
links, asset hrefs) lead back through the proxy. Each request is sorted into the first
*route* whose predicate accepts it (``STAC_ROUTES`` by default; ``"other"`` if none does) and
takes the next fault queued for that route, if any::

    with FaultProxy(server.url) as proxy:
        proxy.inject("next", status(503), truncate(0.5))  # page 2 fails twice, then works
        search(..., catalog=catalog.with_url(proxy.url))
        assert proxy.counts["next"] == 3

Faults: :func:`status` (an error answer, optionally with ``Retry-After``; upstream is not
asked), :func:`delay` (answer late, past a client's timeout), :func:`truncate` (a 200 whose
body stops early; its ``Content-Length`` is the short length, or with ``declare_full=True``
the full one and the connection then closes) and :func:`drop` (headers and part of the body,
then a TCP reset). For asset URLs, pass routes such as ``{"cog": lambda r: ".tif" in r.path}``;
``Range`` headers are forwarded and 206 answers pass through.
"""

from __future__ import annotations

import http.client
import io
import json
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

__all__ = ["STAC_ROUTES", "Fault", "FaultProxy", "ProxyRequest"]
__all__ += ["delay", "drop", "status", "truncate"]


@dataclass(frozen=True)
class ProxyRequest:
    """What a route predicate sees of a request: ``path`` is without the query string."""

    method: str
    path: str
    query: dict[str, list[str]]
    body: bytes

    def json(self) -> dict:
        """The JSON body (empty when there is none or it is not a JSON object)."""
        try:
            value = json.loads(self.body or b"{}")
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}


@dataclass(frozen=True)
class Fault:
    """One injected misbehaviour; build it with :func:`status`, :func:`delay` … ."""

    kind: str  # "status", "delay", "truncate" or "drop"
    code: int = 200  # status: the HTTP status answered
    retry_after: int | None = None  # status: Retry-After seconds (HTTP allows whole ones)
    seconds: float = 0.0  # delay: wait before answering
    keep: float = 0.5  # truncate, drop: share of the body sent
    declare_full: bool = False  # truncate: announce the full Content-Length, then close


def status(code: int, retry_after: int | None = None) -> Fault:
    return Fault("status", code=code, retry_after=retry_after)


def delay(seconds: float) -> Fault:
    return Fault("delay", seconds=seconds)


def truncate(keep: float = 0.5, *, declare_full: bool = False) -> Fault:
    return Fault("truncate", keep=keep, declare_full=declare_full)


def drop(keep: float = 0.5) -> Fault:
    return Fault("drop", keep=keep)


def _is_search(r: ProxyRequest) -> bool:
    return r.path.rstrip("/").endswith("/search")


def _is_next_page(r: ProxyRequest) -> bool:
    # rustac pages with `skip`; other APIs use `token` (in the query for GET, the body for POST)
    keys = set(r.query) | set(r.json())
    return _is_search(r) and bool(keys & {"skip", "token", "next", "page"})


STAC_ROUTES: Mapping[str, Callable[[ProxyRequest], bool]] = {
    "landing": lambda r: r.path in ("", "/"),
    "collections": lambda r: r.path.startswith("/collections"),
    "next": _is_next_page,
    "search": _is_search,
}
"""Routes of a STAC API: landing page, collections, first result page, later pages."""

# Not forwarded: the proxy frames its own answers, and asks for plain bodies so that it can
# rewrite the URLs in them.
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}
_NOT_FORWARDED = _HOP_BY_HOP | {"accept-encoding"}


class FaultProxy:
    """A forwarding proxy on 127.0.0.1 that misbehaves as scripted (a context manager)."""

    def __init__(
        self, upstream: str, routes: Mapping[str, Callable[[ProxyRequest], bool]] = STAC_ROUTES
    ) -> None:
        self.upstream = upstream.rstrip("/")
        self.routes = dict(routes)
        self.faults: dict[str, list[Fault]] = {}
        self.counts: Counter[str] = Counter()
        """Requests seen per route (faulty ones included)."""
        self.log: list[tuple[str, str, str, str]] = []
        """``(route, method, path, fault kind or "")`` of every request, in order."""
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real servers answer
            disable_nagle_algorithm = True  # headers then body: no 40 ms delayed-ACK stall

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                proxy._handle(self)

            do_POST = do_GET

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def inject(self, route: str, *faults: Fault) -> None:
        """Queue ``faults`` for the next requests of ``route``, one per request."""
        if route not in self.routes and route != "other":
            raise KeyError(f"unknown route {route!r}; routes are {sorted(self.routes)}")
        with self._lock:
            self.faults.setdefault(route, []).extend(faults)

    def pending(self) -> dict[str, int]:
        """Faults queued but not used yet, per route."""
        with self._lock:
            return {route: len(queue) for route, queue in self.faults.items() if queue}

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        body = h.rfile.read(int(h.headers.get("Content-Length") or 0))
        split = urlsplit(h.path)
        request = ProxyRequest(h.command, split.path, parse_qs(split.query), body)
        route = next((name for name, accepts in self.routes.items() if accepts(request)), "other")
        with self._lock:
            self.counts[route] += 1
            queue = self.faults.get(route)
            fault = queue.pop(0) if queue else None
            self.log.append((route, h.command, h.path, fault.kind if fault else ""))
        try:
            if fault is not None and fault.kind == "status":
                headers = [("Content-Type", "application/json")]
                if fault.retry_after is not None:
                    headers.append(("Retry-After", str(fault.retry_after)))
                payload = json.dumps({"code": fault.code, "description": "injected fault"})
                self._send(h, fault.code, headers, payload.encode())
                return
            if fault is not None and fault.kind == "delay":
                time.sleep(fault.seconds)
            code, headers, content = self._forward(h, body)
            if fault is None or fault.kind == "delay":
                self._send(h, code, headers, content)
                return
            part = content[: int(len(content) * fault.keep)]
            short = fault.kind == "truncate" and not fault.declare_full
            self._send(h, code, headers, part, length=len(part if short else content))
            h.close_connection = not short
            if fault.kind == "drop":  # SO_LINGER 0, then close: a reset, not a clean FIN
                linger = struct.pack("ii", 1, 0)
                h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                h.rfile.close()
                h.wfile.close()
                h.connection.close()  # the last reference: the socket closes now
                h.wfile = io.BytesIO()  # what the handler still flushes
        except OSError:  # the client gave up (timed out) first
            h.close_connection = True

    def _forward(self, h: BaseHTTPRequestHandler, body: bytes) -> tuple[int, list, bytes]:
        target = urlsplit(self.upstream)
        conn = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
        try:
            headers = {k: v for k, v in h.headers.items() if k.lower() not in _NOT_FORWARDED}
            conn.request(h.command, target.path + h.path, body=body or None, headers=headers)
            answer = conn.getresponse()
            content = answer.read()
        finally:
            conn.close()
        headers = [
            (k, v.replace(self.upstream, self.url))
            for k, v in answer.getheaders()
            if k.lower() not in _HOP_BY_HOP
        ]
        kind = answer.getheader("Content-Type", "")
        if "json" in kind or kind.startswith("text/"):  # leave binary bodies (COGs) alone
            content = content.replace(self.upstream.encode(), self.url.encode())
        return answer.status, headers, content

    @staticmethod
    def _send(
        h: BaseHTTPRequestHandler, code: int, headers: list, content: bytes, length=None
    ) -> None:
        h.send_response(code)
        for key, value in headers:
            h.send_header(key, value)
        h.send_header("Content-Length", str(len(content) if length is None else length))
        h.end_headers()
        h.wfile.write(content)
        h.wfile.flush()

"""A local stand-in for a cloud object store with signed URLs, and its signer.

:class:`SignedAssetServer` serves the files under a folder over HTTP (``GET`` with ``Range``,
``HEAD``) on 127.0.0.1, like blob storage behind SAS tokens:

- ``GET /token`` with the header ``Ocp-Apim-Subscription-Key: <key>`` issues a token, as the
  Planetary Computer's token API does; a wrong key is answered 401;
- an asset request needs ``?se=…&sig=<token>``; a token is good for ``ttl`` seconds, after
  which the server answers 403 — a SAS token expiring in the middle of a run;
- ``faults`` maps a file's path (relative to the folder) to what it gets instead of its bytes:
  ``"404"``, ``"500"``, ``"truncate"`` (half of each answer, with the full Content-Length), or
  ``"corrupt"`` (random bytes in place of the data).

:func:`sign` is the signer (``signing: signed_assets:sign`` in a catalog): it asks the server
in the URL for a fresh token with the key in ``$PC_SDK_SUBSCRIPTION_KEY``. Both the key and
the tokens are secrets that must never reach a log or an output.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
import time
import urllib.parse
import urllib.request
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

KEY_HEADER = "Ocp-Apim-Subscription-Key"


class SignedAssetServer:
    def __init__(self, root: str | Path, key: str, ttl: float = 3600.0) -> None:
        self.root = Path(root).resolve()
        self.key = key
        self.ttl = ttl
        self.tokens: dict[str, float] = {}  # token -> when it expires (time.monotonic)
        self.faults: dict[str, str] = {}
        self.status = Counter()  # answers given, by status
        self.issued = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_HEAD(self) -> None:
                server.handle(self, body=False)

            def do_GET(self) -> None:
                server.handle(self, body=True)

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)

    def __enter__(self) -> SignedAssetServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.http.shutdown()
        self.http.server_close()

    def expire_all(self) -> None:
        """Every token issued so far expires now (a run that outlived its SAS tokens)."""
        with self.lock:
            self.tokens = dict.fromkeys(self.tokens, 0.0)

    def href(self, path: Path) -> str:
        """The unsigned URL of a file under the root."""
        return f"{self.url}/{Path(path).resolve().relative_to(self.root).as_posix()}"

    def handle(self, h: BaseHTTPRequestHandler, body: bool) -> None:
        url = urllib.parse.urlsplit(h.path)
        query = urllib.parse.parse_qs(url.query)
        if url.path == "/token":
            if h.headers.get(KEY_HEADER) != self.key:
                return self.reply(h, 401, b"bad subscription key", body)
            token = secrets.token_hex(16)
            with self.lock:
                self.tokens[token] = time.monotonic() + self.ttl
                self.issued += 1
            payload = json.dumps({"token": f"se=2099-01-01&sig={token}"}).encode()
            return self.reply(h, 200, payload, body, "application/json")
        token = query.get("sig", [""])[0]
        with self.lock:
            valid = self.tokens.get(token, 0.0) > time.monotonic()
        if not valid:
            return self.reply(h, 403, b"AuthenticationFailed: signature expired", body)
        relative = urllib.parse.unquote(url.path).lstrip("/")
        path = (self.root / relative).resolve()
        if self.root not in path.parents or not path.is_file():
            return self.reply(h, 404, b"BlobNotFound", body)
        fault = self.faults.get(relative)
        if fault in ("404", "500"):
            return self.reply(h, int(fault), b"injected fault", body)
        data = path.read_bytes()
        if fault == "corrupt":
            data = data[:16] + secrets.token_bytes(len(data) - 16)
        start, end = 0, len(data) - 1
        ranged = h.headers.get("Range", "")
        if ranged.startswith("bytes="):
            first, _, last = ranged[6:].partition("-")
            start, end = int(first or 0), min(int(last) if last else end, len(data) - 1)
        chunk = data[start : end + 1]
        status = 206 if ranged else 200
        headers = {"Accept-Ranges": "bytes", "Content-Range": f"bytes {start}-{end}/{len(data)}"}
        sent = chunk[: len(chunk) // 2] if fault == "truncate" else chunk
        self.reply(h, status, chunk, body, "image/tiff", headers, sent)

    def reply(self, h, status, payload, body, kind="text/plain", headers=None, sent=None) -> None:
        with self.lock:
            self.status[status] += 1
        try:
            h.send_response(status)
            h.send_header("Content-Type", kind)
            h.send_header("Content-Length", str(len(payload)))
            for name, value in (headers or {}).items():
                h.send_header(name, value)
            if sent is not None and len(sent) < len(payload):
                h.send_header("Connection", "close")
                h.close_connection = True
            h.end_headers()
            if body:
                h.wfile.write(payload if sent is None else sent)
        except (BrokenPipeError, ConnectionResetError):
            pass


def sign(href: str) -> str:
    """``href`` signed with a fresh token of the server it points at (the key is read from
    ``$PC_SDK_SUBSCRIPTION_KEY``); anything not served over HTTP is returned as it is."""
    if not href.startswith("http://"):
        return href
    parts = urllib.parse.urlsplit(href)
    request = urllib.request.Request(
        f"{parts.scheme}://{parts.netloc}/token",
        headers={KEY_HEADER: os.environ.get("PC_SDK_SUBSCRIPTION_KEY", "")},
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        token = json.loads(answer.read())["token"]
    return urllib.parse.urlunsplit(parts._replace(query=token))


def sign_item(item):
    """Sign every asset of a pystac item in place (the search-time signer)."""
    for asset in item.assets.values():
        asset.href = sign(asset.href)
    return item

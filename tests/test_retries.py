"""Retries against a local HTTP server that fails on purpose (429, 5xx, timeouts, bad pages)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from unique_cube.config.catalog import load_catalog
from unique_cube.errors import SearchFailedError
from unique_cube.inputs.search import RetryPolicy, search

DATA = Path(__file__).parent / "data"
ITEMS = json.loads((DATA / "pc" / "landsat-c2-l2-pc.json").read_text())
# An undisturbed answer must come within the read timeout or the request counts below change:
# 1.5 s leaves room for a loaded 2-core CI machine (as in test_faults_stac.py).
FAST = RetryPolicy(retries=3, backoff=0.01, timeout=1.5)
BBOX = (140.0, -45.0, 155.0, -40.0)


class FlakyStacApi:
    """A minimal STAC API (landing page, one collection, paged /search) that misbehaves.

    ``faults`` maps a resource (``"landing"``, ``"page1"``, ``"page2"``) to the faults its next
    requests get, one per request: ``"429"``, ``"500"``… answer that status, ``"timeout"``
    answers after the client's timeout; once the list is used up it answers normally.
    """

    def __init__(self) -> None:
        self.faults: dict[str, list[str]] = {}
        self.requests: list[str] = []
        self.lock = threading.Lock()
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output quiet
                pass

            def do_GET(self) -> None:
                api.handle(self, None)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                api.handle(self, json.loads(self.rfile.read(length) or b"{}"))

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FlakyStacApi:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def handle(self, handler: BaseHTTPRequestHandler, body: dict | None) -> None:
        page2 = "token=page2" in handler.path or (body or {}).get("token") == "page2"
        resource = (
            "page2" if page2 else "page1" if handler.path.startswith("/search") else "landing"
        )
        with self.lock:
            self.requests.append(f"{handler.command} {handler.path}")
            pending = self.faults.get(resource, [])
            fault = pending.pop(0) if pending else None
        try:
            if fault == "timeout":
                time.sleep(FAST.timeout * 2)
                self.reply(handler, 200, {})
            elif fault is not None:
                self.reply(handler, int(fault), {"code": fault}, {"Retry-After": "0"})
            else:
                self.reply(handler, 200, self.answer(handler.path, body, page2))
        except (BrokenPipeError, ConnectionResetError):
            pass

    def answer(self, path: str, body: dict | None, page2: bool) -> dict:
        if path.split("?")[0] in ("", "/"):
            return {
                "type": "Catalog",
                "id": "flaky",
                "description": "flaky test API",
                "stac_version": "1.0.0",
                "conformsTo": [
                    "https://api.stacspec.org/v1.0.0/core",
                    "https://api.stacspec.org/v1.0.0/item-search",
                    "https://api.stacspec.org/v1.0.0/collections",
                ],
                "links": [
                    {"rel": "self", "href": self.url + "/"},
                    {"rel": "root", "href": self.url + "/"},
                    {
                        "rel": "search",
                        "type": "application/geo+json",
                        "href": self.url + "/search",
                        "method": "GET",
                    },
                    {
                        "rel": "search",
                        "type": "application/geo+json",
                        "href": self.url + "/search",
                        "method": "POST",
                    },
                    {"rel": "data", "href": self.url + "/collections"},
                ],
            }
        if path.startswith("/search"):
            features = ITEMS[2:] if page2 else ITEMS[:2]
            links = []
            if not page2:
                if body is None:
                    links.append({"rel": "next", "href": self.url + "/search?token=page2"})
                else:
                    links.append(
                        {
                            "rel": "next",
                            "href": self.url + "/search",
                            "method": "POST",
                            "body": {**body, "token": "page2"},
                        }
                    )
            return {"type": "FeatureCollection", "features": features, "links": links}
        raise AssertionError(f"unexpected request {path}")

    @staticmethod
    def reply(handler: BaseHTTPRequestHandler, status: int, payload: dict, headers=None) -> None:
        data = json.dumps(payload).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            handler.send_header(key, value)
        handler.end_headers()
        handler.wfile.write(data)


@pytest.fixture
def flaky() -> Iterator[FlakyStacApi]:
    with FlakyStacApi() as api:
        yield api


def landsat_search(api: FlakyStacApi, method: str, retry: RetryPolicy = FAST):
    catalog = load_catalog("planetary-computer").with_url(api.url)
    # Signing is replaced by a fake that marks hrefs: no request leaves this machine.
    return search(
        "landsat-c2-l2",
        BBOX,
        "2024-04-01/2024-04-30",
        catalog=catalog,
        method=method,
        retry=retry,
        signer=_fake_sign,
    )


def _fake_sign(obj) -> None:
    # pystac-client hands the modifier item dicts, pages or objects, as the PC signer accepts.
    if isinstance(obj, dict):
        for feature in obj.get("features", []):
            _fake_sign(feature)
        for asset in obj.get("assets", {}).values():
            asset["href"] += "?signed=yes"
    else:
        for item in getattr(obj, "items", []):
            _fake_sign(item)
        for asset in getattr(obj, "assets", {}).values():
            asset.href += "?signed=yes"


EXPECTED = sorted(it["id"] for it in ITEMS if it["properties"]["eo:cloud_cover"] <= 90)


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize("fault", ["429", "500", "502", "503", "504", "timeout"])
def test_search_recovers_from_transient_faults(
    flaky: FlakyStacApi, method: str, fault: str
) -> None:
    # the landing page fails once, the first result page twice, the second page once
    flaky.faults = {"landing": [fault], "page1": [fault, fault], "page2": [fault]}
    items = landsat_search(flaky, method)
    assert sorted(it.id for it in items) == EXPECTED
    search_calls = [r for r in flaky.requests if r.startswith(f"{method} /search")]
    assert len(search_calls) == 5  # page 1 three times, page 2 twice
    assert all(not pending for pending in flaky.faults.values())


def test_retry_after_is_honoured(flaky: FlakyStacApi) -> None:
    flaky.faults = {"page1": ["429"]}
    original = flaky.reply

    def reply_with_wait(handler, status, payload, headers=None):
        if status == 429:
            headers = {"Retry-After": "1"}
        original(handler, status, payload, headers)

    flaky.reply = reply_with_wait  # type: ignore[method-assign]
    started = time.monotonic()
    items = landsat_search(flaky, "POST")
    assert time.monotonic() - started >= 0.95
    assert len(items) == len(EXPECTED)


def test_signer_is_applied_to_every_item(flaky: FlakyStacApi) -> None:
    items = landsat_search(flaky, "POST")
    assert all(a.href.endswith("?signed=yes") for it in items for a in it.assets.values())


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_search_fails_clearly_after_the_retry_budget(flaky: FlakyStacApi, method: str) -> None:
    flaky.faults = {"page1": ["503"] * 10}
    with pytest.raises(SearchFailedError) as err:
        landsat_search(flaky, method, RetryPolicy(retries=2, backoff=0.01, timeout=0.5))
    message = str(err.value)
    assert "collection 'landsat-c2-l2'" in message
    assert "after up to 2 retries" in message
    assert len([r for r in flaky.requests if "/search" in r]) == 3  # 1 try + 2 retries


def test_a_failing_next_page_never_gives_a_partial_list(flaky: FlakyStacApi) -> None:
    flaky.faults = {"page2": ["503"] * 10}
    with pytest.raises(SearchFailedError, match="failed after up to 3 retries"):
        landsat_search(flaky, "POST")
    page2_calls = [r for r in flaky.requests if r.startswith("POST /search")][1:]
    assert len(page2_calls) == 4


def test_unreachable_api_is_a_clear_error() -> None:
    catalog = load_catalog("demo").with_url("http://127.0.0.1:9")
    with pytest.raises(SearchFailedError, match=r"cannot open the STAC API of catalog 'demo' at"):
        search(
            "hls-l30", BBOX, "2024-04-01", catalog=catalog, retry=RetryPolicy(retries=1, backoff=0)
        )

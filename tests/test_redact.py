"""Secrets never reach the user: redact(), log records and tracebacks, the command line's
error line when a STAC API with credentials in its URL cannot be opened or fails a search."""

from __future__ import annotations

import functools
import http.server
import io
import json
import logging
import threading
from collections.abc import Iterator

import pytest

from unique_cube import cli
from unique_cube.inputs.reads import redact as redact_from_reads
from unique_cube.inputs.search import RetryPolicy, search
from unique_cube.inputs.stac_server import free_port
from unique_cube.redact import install_redaction, redact

SECRETS = ("hunter2", "SECRET", "2099-01-01", "T0K3N", "K3Y", "eyJhbGciOi")


def assert_clean(text: str) -> None:
    leaked = [s for s in SECRETS if s in text]
    assert not leaked, f"{leaked} in {text!r}"


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ("https://alice:hunter2@api.example.com/stac/v1",
         "https://<redacted>@api.example.com/stac/v1"),
        # an unescaped '@' in the password leaves nothing of it behind
        ("http://alice:hun@ter2@127.0.0.1:7822/", "http://<redacted>@127.0.0.1:7822/"),
        ("/vsicurl/https://acct.blob.core.windows.net/c/B04.tif?st=2024&se=2099-01-01&sp=r"
         "&sig=SECRET%2Fx%3D: HTTP 403",
         "/vsicurl/https://acct.blob.core.windows.net/c/B04.tif?<redacted>: HTTP 403"),
        ("GET https://api.example.com/search?token=T0K3N&limit=10 failed",
         "GET https://api.example.com/search?<redacted> failed"),
        ("https://api.example.com/stac?subscription-key=K3Y, then what? nothing",
         "https://api.example.com/stac?<redacted>, then what? nothing"),
        ("x.zarr?subscription_key=K3Y", "x.zarr?<redacted>"),
        # secret-named parameters outside a query string
        ("credential sv=2021&sig=SECRET", "credential sv=<redacted>&sig=<redacted>"),
        ("PC_SDK_SUBSCRIPTION_KEY=K3Y", "PC_SDK_SUBSCRIPTION_KEY=<redacted>"),
        ("https://h/items?page=2&token=T0K3N", "https://h/items?<redacted>"),
        # headers, as text and as a dict's repr
        ("Ocp-Apim-Subscription-Key: K3Y\nAccept: application/json",
         "Ocp-Apim-Subscription-Key: <redacted>\nAccept: application/json"),
        ("Authorization: Bearer eyJhbGciOi.x-y_z", "Authorization: Bearer <redacted>"),
        ("{'Authorization': 'Basic aHVudGVyMg==', 'Accept': 'json'}",
         "{'Authorization': 'Basic <redacted>', 'Accept': 'json'}"),
        ('{"Ocp-Apim-Subscription-Key": "K3Y", "x-api-key": "K3Y"}',
         '{"Ocp-Apim-Subscription-Key": "<redacted>", "x-api-key": "<redacted>"}'),
    ],
)  # fmt: skip
def test_redact_cuts_credentials_and_keeps_the_rest(text: str, kept: str) -> None:
    clean = redact(text)
    assert_clean(clean)
    assert kept in clean
    assert redact(clean) == clean  # redacting twice (source, then CLI) changes nothing


def test_redact_leaves_ordinary_messages_alone() -> None:
    for text in (
        "catalog.yaml: stac_url: expected a string, got 3 (int)",
        "pipelines/demo.yaml: grid.tile: must be positive, got 0 (key: tile)",
        "no items for collection 'hls2-l30' at http://127.0.0.1:7822, bbox [1, 2, 3, 4]",
        "response=503 base=3 else=1",
    ):
        assert redact(text) == text


def test_reads_still_exports_redact() -> None:
    assert redact_from_reads is redact


def test_log_records_and_their_tracebacks_are_redacted() -> None:
    install_redaction()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("test_redact.records")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("opening %s", "https://alice:hunter2@h/stac?sig=SECRET")
        try:
            raise ConnectionError("Max retries exceeded with url: /search?se=2099-01-01&sig=SECRET")
        except ConnectionError:
            logger.exception("search of %s failed", "https://h/stac")
        logger.error("headers %s", {"Ocp-Apim-Subscription-Key": "K3Y"})
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert_clean(text)
    assert "opening https://<redacted>@h/stac?<redacted>" in text
    assert "ConnectionError: Max retries exceeded with url: /search?<redacted>" in text
    assert "Traceback (most recent call last)" in text


def fast_search(monkeypatch: pytest.MonkeyPatch) -> None:
    """The command line's search with one quick retry (the default backs off for 15 s)."""
    quick = functools.partial(search, retry=RetryPolicy(retries=1, backoff=0.01, timeout=5))
    monkeypatch.setattr(cli, "search", quick)


def test_cli_error_for_an_unreachable_api_has_no_credentials(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fast_search(monkeypatch)
    port = free_port()  # nothing listens there
    url = f"http://alice:hunter2@127.0.0.1:{port}/?se=2099-01-01&sig=SECRET"
    code = cli.main(["search", "hls-l30", "--stac-url", url, "--bbox", "127", "37", "127.1",
                     "37.1", "--datetime", "2023-05-01"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 4
    assert_clean(err)
    assert (f"unique-cube search: error: cannot open the STAC API of catalog 'demo' at "
            f"http://<redacted>@127.0.0.1:{port}/?<redacted>") in err  # fmt: skip


class _RefusingApi(http.server.BaseHTTPRequestHandler):
    """A STAC API whose landing page works and whose search is refused with a message that
    quotes the signed search URL, as some servers do."""

    def do_GET(self) -> None:
        root = f"http://alice:hunter2@127.0.0.1:{self.server.server_port}"
        self._send(200, {
            "type": "Catalog", "id": "refusing", "description": "x", "stac_version": "1.0.0",
            "conformsTo": ["https://api.stacspec.org/v1.0.0/core",
                           "https://api.stacspec.org/v1.0.0/item-search"],
            "links": [{"rel": "self", "href": f"{root}/"},
                      {"rel": "search", "href": f"{root}/search?sig=SECRET", "method": "POST",
                       "type": "application/geo+json"}],
        })  # fmt: skip

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._send(400, {"code": "BadRequest", "description": f"bad search at {self.path}"})

    def _send(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def refusing_api() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RefusingApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.integration
def test_cli_error_for_a_failed_search_has_no_credentials(
    refusing_api: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fast_search(monkeypatch)
    url = f"http://alice:hunter2@127.0.0.1:{refusing_api}/?se=2099-01-01&sig=SECRET"
    code = cli.main(["search", "hls-l30", "--stac-url", url, "--bbox", "127", "37", "127.1",
                     "37.1", "--datetime", "2023-05-01"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 4
    assert_clean(err)
    assert "unique-cube search: error: the STAC API refused the search of collection" in err
    assert f"at http://<redacted>@127.0.0.1:{refusing_api}/?<redacted>" in err
    assert "bad search at /search?<redacted>" in err  # the API's own words, redacted


def test_unexpected_errors_are_printed_redacted(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("bug while reading https://alice:hunter2@h/x.tif?sig=SECRET")

    monkeypatch.setattr(cli, "search", broken)
    code = cli.main(["search", "hls-l30", "--bbox", "127", "37", "127.1", "37.1",
                     "--datetime", "2023-05-01"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1
    assert_clean(err)
    assert "Traceback (most recent call last)" in err
    assert ("unique-cube search: error: unexpected RuntimeError: bug while reading "
            "https://<redacted>@h/x.tif?<redacted>") in err  # fmt: skip


@pytest.mark.integration
def test_search_json_has_no_credentials(stac_world, capsys: pytest.CaptureFixture[str]) -> None:
    host = stac_world.catalog.stac_url.removeprefix("http://").rstrip("/")
    url = f"http://alice:hunter2@{host}/?se=2099-01-01&sig=SECRET"
    bbox = [str(v) for v in stac_world.bbox]
    code = cli.main(["search", "hls-l30", "--stac-url", url, "--bbox", *bbox,
                     "--datetime", "2023-05-01/2023-05-31", "--json"])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0
    items = json.loads(captured.out)
    assert [it["id"] for it in items][-1] == "HLS.L30.T52SCG.2023139T022000.v2.0"
    assert_clean(captured.out + captured.err)
    roots = {link["href"] for it in items for link in it["links"] if link["rel"] == "root"}
    assert roots == {f"http://{host}/"}

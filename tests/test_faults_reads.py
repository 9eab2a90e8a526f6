"""Asset reads under faults: expired signed URLs, 404s, corrupt and truncated files.

The tiny world's COGs are served by :class:`signed_assets.SignedAssetServer` on 127.0.0.1,
behind tokens that expire after a few requests, as SAS tokens expire during a long run.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from conftest import SIGNING_KEY as KEY
from signed_assets import SignedAssetServer, sign, sign_item
from test_search_and_load import hls_items

from unique_cube.errors import LoadError
from unique_cube.inputs.cube import load
from unique_cube.inputs.reads import AccessDeniedError, ReadPolicy, lost_reads, redact, strip_query

FAST = dict(retries=3, backoff=0.01, http_retries=1)


def _remote(items, server: SignedAssetServer):
    """The items with their assets on the server, signed as a search would sign them."""
    out = []
    for item in items:
        item = item.clone()
        for asset in item.assets.values():
            asset.href = server.href(Path(asset.href.removeprefix("file://")))
        out.append(sign_item(item))
    return out


def _reference(stac_world):
    items = hls_items(stac_world)
    return load(items, stac_world.catalog.source("hls-l30"), stac_world.geobox).compute()


def test_expired_signatures_are_renewed_and_give_the_same_pixels(stac_world, store) -> None:
    items = _remote(hls_items(stac_world), store)
    store.expire_all()  # the tokens signed at search time ran out before the reads
    policy = ReadPolicy(resign=sign, **FAST)
    cube = load(items, stac_world.catalog.source("hls-l30"), stac_world.geobox, read=policy)
    cube = cube.compute(scheduler="threads")
    reference = _reference(stac_world)
    for name in ("red", "nir", "clear"):
        np.testing.assert_array_equal(cube[name].values, reference[name].values)
    assert store.status[403] > 0
    assert store.issued > len(items)  # fresh tokens were asked for


def test_a_403_that_cannot_be_renewed_is_an_error_not_nodata(stac_world, store) -> None:
    items = _remote(hls_items(stac_world), store)
    store.expire_all()
    policy = ReadPolicy(resign=None, ledger="never-used", **FAST)  # even when losses are allowed
    cube = load(items, stac_world.catalog.source("hls-l30"), stac_world.geobox, read=policy)
    with pytest.raises(AccessDeniedError, match=r"access denied.*403") as caught:
        cube.compute(scheduler="threads")
    assert "sig=" not in str(caught.value) and "se=" not in str(caught.value)
    assert "no URL signing is configured" in str(caught.value)
    assert lost_reads("never-used") == []


def test_a_failing_signer_is_retried_not_raised(stac_world, store, monkeypatch) -> None:
    """The token service itself fails once: the read goes on with the next signature."""
    items = _remote(hls_items(stac_world), store)
    store.expire_all()
    failures = []

    def flaky_sign(href: str) -> str:
        if not failures:
            failures.append(href)
            raise OSError("token service unavailable")
        return sign(href)

    policy = ReadPolicy(resign=flaky_sign, **FAST)
    cube = load(items, stac_world.catalog.source("hls-l30"), stac_world.geobox, read=policy)
    cube = cube.compute(scheduler="synchronous")
    np.testing.assert_array_equal(cube["red"].values, _reference(stac_world)["red"].values)
    assert failures


@pytest.mark.parametrize("fault", ["404", "500", "corrupt", "truncate"])
def test_an_unreadable_asset_is_retried_then_raised(stac_world, store, fault, caplog) -> None:
    items = _remote(hls_items(stac_world), store)
    bad = items[0].assets["B04"]
    store.faults[Path(strip_query(bad.href)).name] = fault
    policy = ReadPolicy(resign=sign, **FAST)
    cube = load(items, stac_world.catalog.source("hls-l30"), stac_world.geobox, read=policy)
    with caplog.at_level(logging.DEBUG), pytest.raises(LoadError) as caught:
        cube.compute(scheduler="threads")
    message = str(caught.value)
    assert strip_query(bad.href) in message and "after 4 attempts" in message
    for text in (message, caplog.text):
        assert "sig=" not in text and KEY not in text


@pytest.mark.parametrize("fault", ["404", "corrupt", "truncate"])
def test_a_lost_read_is_no_data_and_is_recorded(stac_world, store, fault) -> None:
    items = _remote(hls_items(stac_world), store)
    bad = items[0].assets["B04"]
    store.faults[Path(strip_query(bad.href)).name] = fault
    ledger = f"test-{fault}"
    policy = ReadPolicy(resign=sign, ledger=ledger, **FAST)
    source = stac_world.catalog.source("hls-l30")
    cube = load(items, source, stac_world.geobox, read=policy).compute(scheduler="threads")
    reference = _reference(stac_world)
    # the lost band is no data (and so not clear) on the lost item's day; the rest is intact
    assert cube["red"].isel(time=0).isnull().all()
    assert not cube["clear"].isel(time=0).any()
    np.testing.assert_array_equal(cube["nir"].isel(time=1), reference["nir"].isel(time=1))
    lost = lost_reads(ledger)
    assert [(e["href"], e["attempts"]) for e in lost] == [(strip_query(bad.href), 4)]
    assert "sig=" not in lost[0]["reason"]
    assert lost_reads(ledger) == []  # collected once


def test_redaction_cuts_tokens_keys_and_passwords() -> None:
    text = (
        "HLS.B04.tif?se=2099-01-01&sig=abc123, band 1: failed; "
        "https://user:secret@host/a.tif?subscription-key=k9 and what? nothing"
    )
    clean = redact(text)
    assert "abc123" not in clean and "secret" not in clean and "k9" not in clean
    assert "HLS.B04.tif?<redacted>" in clean and "what? nothing" in clean

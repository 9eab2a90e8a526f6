"""Near-real-time and final days on their own: which mode a day gets, gaps filled from earlier
days only, a reference from both sides, input changes told, and the item's versions."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pytest
from test_store import _day, _store

from unique_cube.downscale.reference import Reference
from unique_cube.errors import ConfigError, DownscaleError
from unique_cube.gpp.features import fill_gaps
from unique_cube.product.coarse import observation_gap
from unique_cube.product.modes import changed_inputs, day_modes, published

D = dt.date(2023, 6, 1)


def test_auto_makes_a_day_final_once_its_lag_has_passed() -> None:
    today = dt.date(2023, 6, 20)
    days = [dt.date(2023, 6, 3), dt.date(2023, 6, 4), dt.date(2023, 6, 19)]
    modes = day_modes(days, "auto", today, final_after_days=16)
    assert modes == {days[0]: "final", days[1]: "final", days[2]: "nrt"}
    assert set(day_modes(days, "nrt", today, 16).values()) == {"nrt"}
    with pytest.raises(ConfigError, match=r"2023-06-19 is 1 day\(s\) old.*final_after_days \(16\)"):
        day_modes(days, "final", today, 16)
    with pytest.raises(ConfigError, match="unknown mode 'fast'"):
        day_modes(days, "fast", today, 16)


def test_causal_filling_carries_the_last_observation_and_never_reads_ahead() -> None:
    days = np.arange(8.0)
    row = np.array([1.0, np.nan, np.nan, 4.0, np.nan, np.nan, np.nan, np.nan], "float32")
    both = fill_gaps(row[None], days, max_gap=3)[0]
    assert both[1:3] == pytest.approx([2.0, 3.0])  # between the two observations
    assert np.isnan(both[4:]).all()  # never beyond the last one
    causal = fill_gaps(row[None], days, max_gap=3, causal=True)[0]
    assert causal[:7] == pytest.approx([1, 1, 1, 4, 4, 4, 4])  # up to 3 days after each
    assert np.isnan(causal[7])
    # What day 2 gets does not change when later days are observed (or not).
    later = row.copy()
    later[3:] = 9.0
    assert fill_gaps(later[None], days, 3, causal=True)[0][2] == causal[2]
    observed = np.isfinite(row)
    assert list(observation_gap(observed, causal=True)) == [0, 1, 2, 0, 1, 2, 3, 4]
    assert np.isinf(observation_gap(np.array([False, True]), causal=True)[0])
    assert list(observation_gap(observed)[:3]) == [0, 3, 3]  # two-sided: between the two


def test_a_two_sided_reference_takes_each_pixels_nearest_clear_date() -> None:
    shape = (1, 3)
    state = Reference.empty(shape, two_sided=True)
    m = np.zeros(shape, "float32")
    early = np.array([[1.0, 1.0, np.nan]], "float32")  # 10 days before D
    late = np.array([[2.0, np.nan, 2.0]], "float32")  # 4 days after D
    state.update(early, m, D - dt.timedelta(days=10), towards=D)
    state.update(late, m, D + dt.timedelta(days=4), towards=D)
    assert state.gpp.tolist() == [[2.0, 1.0, 2.0]]
    assert state.age(D).tolist() == [[4.0, 10.0, 4.0]]  # how far, whichever side
    assert state.after(D).tolist() == [[True, False, True]]
    assert state.count.tolist() == [[2.0, 1.0, 1.0]]  # every clear date in the offset
    state.check_before(D)  # a final day's state reaches after it on purpose
    one_sided = Reference.empty(shape)
    one_sided.update(late, m, D + dt.timedelta(days=4))
    with pytest.raises(DownscaleError, match="from the future"):
        one_sided.check_before(D)


def test_changed_inputs_name_new_gone_and_republished_items() -> None:
    before = {"hls": {"a": "2023-06-03T00:00:00Z"}, "modis": {"m1": "2023-06-02T00:00:00Z"}}
    now = {"hls": {"a": "2023-06-03T00:00:00Z", "b": ""},
           "modis": {"m1": "2023-06-09T00:00:00Z"}}  # fmt: skip
    assert changed_inputs(before, now) == ["hls: new b", "modis: republished m1"]
    assert changed_inputs(before, before) == []
    assert changed_inputs(before, {"hls": {}, "modis": before["modis"]}) == ["hls: gone a"]
    assert published(before) == dt.datetime(2023, 6, 3, tzinfo=dt.UTC)
    assert published({"era5": {"x": ""}}) is None


def test_a_remade_day_keeps_the_version_it_supersedes(tmp_path: Path) -> None:
    store = _store(tmp_path)
    day = dt.date(2023, 6, 1)
    first = {"id": "d", "properties": {"version": "1"},
             "links": [{"rel": "self", "href": "./2023-06-01.json"},
                       {"rel": "root", "href": "../../catalog.json"}]}  # fmt: skip
    store.write_day(_day(day, 1.0), {}, first, {"day": str(day), "mode": "nrt"})
    assert store.item_version(day) == 1 and store.done_mode(day) == "nrt"
    assert store.is_done(day, "nrt") and not store.is_done(day, "final")
    second = {"id": "d", "properties": {"version": "2"}, "links": []}
    store.write_day(_day(day, 2.0), {}, second, {"day": str(day), "mode": "final"})
    assert store.item_version(day) == 2 and store.is_done(day, "final")
    kept = json.loads(store.version_path(day, 1).read_text())
    assert kept["properties"]["deprecated"] is True
    links = {link["rel"]: link["href"] for link in kept["links"]}
    assert links["latest-version"] == "../2023-06-01.json"
    assert links["root"] == "../../../catalog.json"  # one folder deeper
    assert links["self"] == "./2023-06-01.v1.json"
    # Only the published items are the collection's; a version is not listed as a day.
    assert not list(store.item_path(day).parent.glob("????-??-??.v*.json"))


def test_a_final_day_reads_later_hls_only_with_the_nearest_reference() -> None:
    """``product.final_reference``: ``before`` (the default) keeps a final day's fusion
    reference to the dates before it (its MODIS still filled from both sides), ``nearest``
    lets it come from after it; a near-real-time day never reads ahead."""
    import dataclasses

    from unique_cube.config.pipeline import load_pipeline
    from unique_cube.product.modes import input_windows, two_sided_reference

    pipeline = load_pipeline(Path(__file__).parents[1] / "pipelines" / "demo.yaml")
    day, hls, modis = dt.date(2023, 6, 20), pipeline.gpp.landsat.source, "modis-sr"
    span = dt.timedelta(days=pipeline.downscale.reference_days)
    nearest = dataclasses.replace(pipeline, product=dataclasses.replace(
        pipeline.product, final_reference="nearest"))  # fmt: skip
    assert pipeline.product.final_reference == "before"
    assert not two_sided_reference(pipeline, "final")
    assert two_sided_reference(nearest, "final") and not two_sided_reference(nearest, "nrt")
    assert input_windows(nearest, day, "final", 16)[hls] == (day - span, day + span)
    assert input_windows(pipeline, day, "final", 16)[hls] == (day - span, day)
    assert input_windows(pipeline, day, "final", 16)[modis][1] == day + dt.timedelta(days=16)
    assert input_windows(pipeline, day, "nrt", 16)[modis][1] == day

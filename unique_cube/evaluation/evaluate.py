"""``unique-cube evaluate``: the downscalers and the daily product measured as they are used.

On the test period (``downscale.test``), written to ``<evaluation.output>/evaluation.json``:

* ``vs_gpp_l`` — every HLS date with enough of the region clear (:mod:`.clear_dates`):
  bilinear GPP_M, the fusion downscaler (``fusion``; its regression mean alone:
  ``fusion_mean``), S1, S2, the pure-pixel oracle; per date and pooled; ``ensemble``: the
  schemes' fair CRPS, rank histogram and spread/RMSE ratio with ``evaluation.members``
  members; ``by_reference_age``: every method by the age of the fusion reference;
* ``daily_vs_truth``, ``strata``, ``by_age`` — the product path's own days against the truth
  (:mod:`.daily`), every day or 1 in ``evaluation.daily_every``;
* ``spatial_holdout`` — the scheme trained on the west, scored on the east (:mod:`.holdout`);
* ``towers`` — the product days at the towers inside the region, held out of the GPP models'
  training (``flux.hold_out_region``): the product's ``evaluation.tower_window`` window and
  GPP_M's 480 m pixel against the tower GPP, per tower and pooled (:mod:`.towers`);
* ``gpp_l_vs_truth``, ``gpp_m_vs_truth`` — step 1's maps on the clear dates against the truth,
  pooled, by slope class and by season (:mod:`.gpp_truth`): a floor under every scheme;
* ``future_data`` — which of these figures use inputs observed after their day.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import dask
import numpy as np

from unique_cube.config.pipeline import Pipeline
from unique_cube.downscale.checkpoint import load_checkpoint
from unique_cube.downscale.fusion_train import reference_pairs
from unique_cube.downscale.pairs import cached_pairs, static_and_types
from unique_cube.downscale.pure_pixel import PurePixelModel
from unique_cube.downscale.regions import (
    aligned_layers,
    evaluation_windows,
    window_label,
    window_pipeline,
    window_static,
)
from unique_cube.errors import ConfigError, DownscaleError, EmptySearchError
from unique_cube.evaluation.clear_dates import (
    ClearDates,
    clear_dates,
    fusion_quicklook,
    quicklook,
    score_clear_dates,
)
from unique_cube.evaluation.daily import (
    Place,
    clear_history,
    compare_places,
    make_days,
    sample_days,
    score_places,
)
from unique_cube.evaluation.gpp_truth import pairs_vs_truth
from unique_cube.evaluation.holdout import spatial_holdout
from unique_cube.evaluation.strata import Strata
from unique_cube.evaluation.towers import held_out_towers, validate_at_towers
from unique_cube.evaluation.truth import open_truth
from unique_cube.files import sha256_file, write_json
from unique_cube.grid import Window
from unique_cube.inputs.search import open_catalog
from unique_cube.inputs.static import TERRAIN_LAYERS, vegetation_types

__all__ = ["OLD_NAMES", "check_periods", "evaluate", "evaluate_downscaler"]

log = logging.getLogger(__name__)

#: What each figure's inputs may include from after its day.
FUTURE_DATA = {
    "vs_gpp_l": "GPP_M of a date is interpolated in time across cloudy MODIS days on both "
                "sides (up to the GPP model's gap_fill_days ahead)",
    "daily_vs_truth": "the final days: MODIS gaps filled from both sides (up to "
                      "product.max_gap_days ahead); with product.final_reference nearest "
                      "also the nearest 30 m reference on either side: not a near-real-time "
                      "figure",
    "daily_vs_truth_nrt": "none: the near-real-time days read nothing after their day",
    "nrt_vs_final": "its NRT half none, its final half as daily_vs_truth",
    "strata": "as daily_vs_truth",
    "by_age": "as daily_vs_truth (the age itself counts only clear dates up to the day)",
    "spatial_holdout": "as vs_gpp_l",
    "towers": "as daily_vs_truth",
    "gpp_l_vs_truth": "none: the date's own Landsat and weather",
    "gpp_m_vs_truth": "as vs_gpp_l",
    "pure_pixel_oracle": "reads the date's own Landsat: an oracle, not a daily product",
    "fusion": "its reference is GPP_L of HLS dates strictly before the date (never the date's "
              "own Landsat); the GPP_M it conditions on is gap-filled as vs_gpp_l says; in the "
              "daily product a day with a clear HLS overpass takes that day's GPP_L for its "
              "clear pixels (HLS is published 2-5 days after the overpass)",
}  # fmt: skip


def check_periods(pipeline: Pipeline) -> None:
    """The test period must not overlap the downscaler's training period (its pairs come from
    ``downscale.train``, by default ``gpp.train``)."""
    spec = pipeline.downscale
    train, key = (spec.train, "downscale.train") if spec.train else (pipeline.gpp.train,
                                                                     "gpp.train")  # fmt: skip
    test = spec.test
    if test.start <= train.end and train.start <= test.end:
        raise ConfigError(
            f"{pipeline.path or pipeline.name}: downscale.test {test.start}..{test.end} "
            f"overlaps {key} {train.start}..{train.end}, which the downscaler trains on: "
            "scores on its own training dates say nothing of new days"
        )


def evaluate(pipeline: Pipeline, *, full: bool = False,
             say: Callable[[str], None] = log.info) -> dict:  # fmt: skip
    """Run the evaluation (``full``: every day of the test period, whatever
    ``evaluation.daily_every`` says); writes and returns ``evaluation.json``."""
    pipeline.require("grid", "downscale", "product", "evaluation",
                     command="unique-cube evaluate")  # fmt: skip
    check_periods(pipeline)
    spec, evaluation, product = pipeline.downscale, pipeline.evaluation, pipeline.product
    truth = open_truth(pipeline)  # checked before anything is computed
    towers = held_out_towers(pipeline)  # their flux files too
    output = Path(evaluation.output)
    checkpoints, pure = trained_downscalers(pipeline)  # refused before any input is read
    if product.scheme != "bilinear" and product.scheme not in checkpoints:
        raise DownscaleError(f"no {product.scheme} checkpoint in {spec.output} (product.scheme):"
                             " run unique-cube train-downscaler first")  # fmt: skip
    output.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    began = time.perf_counter()
    with open_catalog(pipeline) as catalog, dask.config.set(num_workers=pipeline.gpp.threads):
        places = scored_places(pipeline, catalog, checkpoints, say)
        whole = places[0].whole
        try:
            dates, places = region_clear_dates(pipeline, catalog, places, checkpoints, say,
                                               members=evaluation.members,
                                               threads=evaluation.threads, pure=pure,
                                               min_clear=evaluation.min_clear_fraction)  # fmt: skip
        except (DownscaleError, EmptySearchError) as err:
            if isinstance(err, DownscaleError) and not str(err).startswith("no HLS date"):
                raise  # not about the period's dates
            raise ConfigError(
                f"{pipeline.path or pipeline.name}: downscale.test {spec.test.start}.."
                f"{spec.test.end}: {err}; nothing to score against GPP_L (evaluation."
                f"min_clear_fraction is {evaluation.min_clear_fraction:g})"
            ) from None
        first = spec.test.start - dt.timedelta(days=evaluation.history_days)
        histories = [clear_history(place.pipeline, catalog, first, spec.test.end)
                     for place in places]  # fmt: skip
        training = None
        if evaluation.holdout and whole and product.scheme == "fusion":
            training = reference_pairs(pipeline, catalog, spec.train or pipeline.gpp.train, say)
        elif evaluation.holdout and whole and product.scheme != "bilinear":
            training = cached_pairs(pipeline, catalog, spec.train or pipeline.gpp.train, say,
                                    types=places[0].types)  # fmt: skip
        classes = dict(catalog.source("worldcover").classes)
    result = score_clear_dates(dates)
    if not whole:
        result["windows"] = windows_table(pipeline, places)
    if dates.truth is not None:  # step 1's own floor: GPP_L and GPP_M against the truth
        result.update(pairs_vs_truth(dates.pairs, dates.truth, date_slopes(dates, places)))
    if dates.fusion is not None:
        fusion_quicklook(dates, output / "fusion_quicklook.png")
    timings["clear_dates"] = time.perf_counter() - began
    if training is not None:
        began = time.perf_counter()
        first_place = places[0]
        result["spatial_holdout"] = spatial_holdout(pipeline, training, first_place.raw,
                                                    first_place.names, dates, say)  # fmt: skip
        timings["spatial_holdout"] = time.perf_counter() - began
    every = 1 if full else evaluation.daily_every
    if truth is None:
        say("no truth store (downscale.truth): the daily figures need one; skipped")
    if truth is not None or towers.note is None:
        began = time.perf_counter()
        days = sample_days(spec.test, every)
        folder = _product_folder(pipeline, output / "product", say)
        nrt_folder = _product_folder(pipeline, output / "product-nrt", say)
        say(f"daily product: {len(days)} days (1 in {every}) of {spec.test.start}.."
            f"{spec.test.end} → {folder}")  # fmt: skip
        done = [make_days(place.pipeline, days, place.under(folder), say, mode="final")
                for place in places]  # fmt: skip
        timings["daily_product"] = time.perf_counter() - began
        began = time.perf_counter()
        say(f"daily product, near-real-time: the same {len(days)} days → {nrt_folder}")
        done_nrt = [make_days(place.pipeline, days, place.under(nrt_folder), say, mode="nrt")
                    for place in places]  # fmt: skip
        timings["daily_product_nrt"] = time.perf_counter() - began
        made = sorted(set().union(*map(set, done)))
        result["daily_sample"] = {"every": every, "days_asked": len(days),
                                  "days_scored": len(made)}  # fmt: skip
    if truth is not None:
        began = time.perf_counter()
        final_places, nrt_places, both = [], [], []
        for place, days_final, days_nrt, history in zip(places, done, done_nrt, histories,
                                                         strict=True):  # fmt: skip
            strata = Strata.of(place.types, classes, place.raw[place.names.index("slope")])
            truth_here = place.truth(pipeline)
            final_places.append(Place(place.under(folder), days_final, truth_here, strata,
                                      history))  # fmt: skip
            nrt_places.append(Place(place.under(nrt_folder), days_nrt, truth_here, strata,
                                    history))  # fmt: skip
            both.append((place.under(folder), place.under(nrt_folder),
                         sorted(set(days_final) & set(days_nrt)), truth_here))  # fmt: skip
        result.update(score_places(pipeline, final_places))
        result["daily_vs_truth_nrt"] = score_places(pipeline, nrt_places)["daily_vs_truth"]
        result["nrt_vs_final"] = compare_places(both, pipeline.product.scheme)
        modes = result["nrt_vs_final"]
        say(f"near-real-time vs final on {modes['n_days']} days: RMSE vs truth "
            f"{_num(modes['rmse_nrt'])} NRT, {_num(modes['rmse_final'])} final; "
            f"{_num(modes['rmse_between'])} between them")  # fmt: skip
        timings["daily_scores"] = time.perf_counter() - began
    if towers.note is None and whole:
        began = time.perf_counter()
        result["towers"] = validate_at_towers(towers, folder / "gpp.zarr", done[0],
                                              evaluation.tower_window)  # fmt: skip
        product_scores, gpp_m = result["towers"]["product"], result["towers"]["gpp_m"]
        say(f"towers: {product_scores['n_sites']} held-out towers inside the region, "
            f"{product_scores['n_days']} tower-days: RMSE product "
            f"{_num(product_scores['rmse'])}, GPP_M {_num(gpp_m['rmse'])}")  # fmt: skip
        timings["towers"] = time.perf_counter() - began
    else:
        note = towers.note or WINDOWS_TOWERS
        say(note)
        result["towers"] = {"note": note}
    result["future_data"] = FUTURE_DATA
    result["seconds"] = {k: round(v, 1) for k, v in timings.items()}
    write_json(output / "evaluation.json", result)
    return result


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def trained_downscalers(pipeline: Pipeline) -> tuple[dict, PurePixelModel | None]:
    """The S1, S2 and fusion checkpoints and the pure-pixel model in ``downscale.output``
    (those present), loaded safely (a file carrying code is refused before anything else is
    read)."""
    output = Path(pipeline.downscale.output)
    paths = {s: output / f"downscaler_{s}.pt" for s in ("s1", "s2", "fusion")}
    checkpoints = {s: load_checkpoint(p, s) for s, p in paths.items() if p.exists()}
    pure_path = output / "pure_pixel.pt"
    return checkpoints, PurePixelModel.load(pure_path) if pure_path.exists() else None


#: The evaluation's method names as ``evaluate-downscaler``'s tables have named them.
OLD_NAMES = {"s1": "ddpm_s1", "s2": "ddpm_s2", "pure_pixel_oracle": "pure_pixel"}


def evaluate_downscaler(pipeline: Pipeline, say: Callable[[str], None] = log.info) -> dict:
    """``unique-cube evaluate-downscaler``: a quick check of the trained downscalers on the
    test period's ``downscale.max_eval_dates`` clearest dates (``downscale.samples``
    members), against GPP_L and the truth; writes ``evaluation.json`` and ``quicklook.png``
    into ``downscale.output``. ``unique-cube evaluate`` is the full measurement."""
    pipeline.require("grid", "downscale", command="unique-cube evaluate-downscaler")
    spec = pipeline.downscale
    output = Path(spec.output)
    checkpoints, pure = trained_downscalers(pipeline)
    if not checkpoints:
        raise DownscaleError(f"no downscaler checkpoint in {output}; run train-downscaler first")
    open_truth(pipeline)  # checked before anything is computed
    with open_catalog(pipeline) as catalog, dask.config.set(num_workers=pipeline.gpp.threads):
        started = time.perf_counter()
        places = scored_places(pipeline, catalog, checkpoints, say)
        dates, places = region_clear_dates(pipeline, catalog, places, checkpoints, say,
                                           members=spec.samples, threads=spec.threads,
                                           pure=pure, clearest=spec.max_eval_dates)  # fmt: skip
    result = score_clear_dates(dates)
    if not places[0].whole:
        result["windows"] = windows_table(pipeline, places)
    if dates.truth is not None:  # step 1's own floor: GPP_L and GPP_M against the truth
        result.update(pairs_vs_truth(dates.pairs, dates.truth, date_slopes(dates, places)))
    result["table"] = {
        against: {OLD_NAMES.get(name, name): scores for name, scores in result[against].items()}
        for against in ("vs_gpp_l", "vs_truth") if against in result
    }  # fmt: skip
    result["seconds"] = round(time.perf_counter() - started, 1)
    write_json(output / "evaluation.json", result)
    quicklook(dates, output / "quicklook.png")
    return result


#: What the towers say in a windowed evaluation.
WINDOWS_TOWERS = ("towers are validated on a whole-grid evaluation only (this grid is scored on "
                  "windows)")  # fmt: skip


@dataclasses.dataclass
class ScoredPlace:
    """A grid the evaluation scores on: the pipeline's own (``whole``) or one of its windows,
    with the pipeline cut to it and its static layers."""

    window: Window
    pipeline: Pipeline
    raw: np.ndarray
    names: list[str]
    types: np.ndarray
    whole: bool

    @property
    def label(self) -> str:
        return window_label(self.window)

    def under(self, folder: Path) -> Path:
        """This place's product folder under the evaluation's ``folder``."""
        return folder if self.whole else folder / "windows" / self.label

    def truth(self, pipeline: Pipeline):
        return open_truth(pipeline, None if self.whole else self.window)


def scored_places(pipeline: Pipeline, catalog, checkpoints: dict,
                  say: Callable[[str], None]) -> list[ScoredPlace]:  # fmt: skip
    """The whole grid, or the evaluation windows of a large one
    (:func:`~unique_cube.downscale.regions.evaluation_windows`), each with its static layers
    in the order the checkpoints were trained with."""
    geobox = pipeline.grid.geobox
    windows = evaluation_windows(pipeline, catalog)
    whole = windows == [Window.covering(geobox.shape)]
    if whole:
        raw, names, types = static_and_types(catalog, geobox)
        return [ScoredPlace(windows[0], pipeline, raw, names, types, True)]
    say(f"evaluating on {len(windows)} windows of {pipeline.downscale.training_window} px "
        "(none a training window)")  # fmt: skip
    classes = catalog.source("worldcover").classes
    trained = trained_layers(checkpoints)
    places = []
    for window in windows:
        raw, names = window_static(catalog, geobox, window)
        types = vegetation_types(raw, names, classes)
        if trained is not None:
            raw, names = aligned_layers(raw, names, trained), trained
        places.append(ScoredPlace(window, window_pipeline(pipeline, window), raw, names, types,
                                  False))  # fmt: skip
    return places


def trained_layers(checkpoints: dict) -> list[str] | None:
    """The static layers the checkpoints were trained with, in their order (S2's, or the
    fusion's terrain and land-cover classes); ``None`` when neither is there."""
    if "s2" in checkpoints:
        return list(checkpoints["s2"].static["names"])
    if "fusion" in checkpoints:
        classes = [n for n in checkpoints["fusion"].fusion["features"] if n.startswith("lc_")]
        return [*TERRAIN_LAYERS, *classes]
    return None


def region_clear_dates(pipeline: Pipeline, catalog, places: list[ScoredPlace], checkpoints,
                       say, **options) -> tuple[ClearDates, list[ScoredPlace]]:  # fmt: skip
    """:func:`~.clear_dates.clear_dates` on every place (a window with no clear-enough date
    left out, and said), one after the other; the places kept."""
    if places[0].whole:
        place = places[0]
        return clear_dates(pipeline, catalog, checkpoints, place.raw, place.names, place.types,
                           place.truth(pipeline), say, **options), places  # fmt: skip
    found, kept, why = [], [], ""
    for k, place in enumerate(places):
        say(f"evaluation window {k + 1}/{len(places)}: {place.label}")
        try:
            dates = clear_dates(place.pipeline, catalog, checkpoints, place.raw, place.names,
                                place.types, place.truth(pipeline), say, **options)  # fmt: skip
        except DownscaleError as err:
            if not str(err).startswith("no HLS date"):
                raise
            say(f"evaluation window {place.label} left out: {err}")
            why = str(err)
            continue
        found.append((place.label, dates))
        kept.append(place)
    if not found:
        raise DownscaleError(f"{why} (in every one of the {len(places)} evaluation windows)")
    return ClearDates.concat(found), kept


def date_slopes(dates: ClearDates, places: list[ScoredPlace]) -> np.ndarray:
    """The slope (degrees) under each clear date's pixels: the grid's (H, W), or each date's
    window's (N, H, W)."""
    if places[0].whole:
        return places[0].raw[places[0].names.index("slope")]
    by_label = {p.label: p.raw[p.names.index("slope")] for p in places}
    return np.stack([by_label[label] for label in dates.windows])


def windows_table(pipeline: Pipeline, places: list[ScoredPlace]) -> dict:
    """Which windows a windowed evaluation scored: their rows, columns and size."""
    scored = {p.label: [p.window.y0, p.window.y1, p.window.x0, p.window.x1] for p in places}
    note = ("rows y0:y1, columns x0:x1 of the grid; none a training window, so the clear-date "
            "scores are a spatial hold-out (no west/east one is made)")  # fmt: skip
    return {"size_px": pipeline.downscale.training_window, "scored": scored, "note": note}


def _product_folder(pipeline: Pipeline, folder: Path, say) -> Path:
    """The evaluation's product folder, emptied when the models or the product settings it
    was made with changed (a stamp beside it says which)."""
    spec = pipeline.product
    models = [Path(pipeline.gpp.output) / f"gpp_{m}.model" for m in ("modis", "landsat")]
    if spec.scheme != "bilinear":
        models.append(Path(pipeline.downscale.output) / f"downscaler_{spec.scheme}.pt")
    settings = {k: v for k, v in dataclasses.asdict(spec).items() if k not in ("output", "period")}
    stamp = hashlib.sha256(
        json.dumps(
            [[sha256_file(p) for p in models], settings], default=str, sort_keys=True
        ).encode()
    ).hexdigest()
    stamp_path = folder.parent / "product.stamp"
    if folder.exists() and not (stamp_path.exists() and stamp_path.read_text() == stamp):
        say(f"the models or product settings changed: remaking {folder}")
        shutil.rmtree(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    stamp_path.write_text(stamp)
    return folder

"""``unique-cube run``: the daily 30 m GPP product, one day or a backfill.

For each block of days: GPP_M on the coarse grid (:mod:`unique_cube.product.coarse`); for
each day, under its lock: the day planned and made window by window
(:mod:`unique_cube.product.day`) into the store (:mod:`unique_cube.product.store`), its STAC
item (:mod:`unique_cube.product.stac`), then its completion marker. Downscaler tiles are
sampled by supervised, GPU-pinned Dask actors (:mod:`unique_cube.downscale.actors`).

A skipped day is recorded with its reason in the run log and the STAC collection; a failed day
never stops a backfill. A day is done only when its completion marker is written, so a run that
dies mid-day leaves it to the next run; the day lock keeps two runs of one day apart.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import re
import resource
import time
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from unique_cube.config.pipeline import Pipeline, ProductSpec
from unique_cube.downscale.cluster import dask_client
from unique_cube.downscale.pool import ActorPool
from unique_cube.errors import (
    ConfigError,
    LockBusyError,
    StoreError,
    UniqueCubeError,
)
from unique_cube.files import write_json
from unique_cube.grid import coarse_geobox, grid_latitude
from unique_cube.inputs.search import open_catalog
from unique_cube.product.coarse import CoarseDays, block_inputs, gpp_m_block
from unique_cube.product.coverage import check_coverage
from unique_cube.product.day import (
    DaySkipped,
    RunContext,
    Sampler,
    day_layout,
    gap_fill_span,
    make_windows,
    plan_day,
)
from unique_cube.product.metrics import MetricsOptions, RunMetrics
from unique_cube.product.models import ProductModels, check_models
from unique_cube.product.modes import day_inputs, day_modes, published, two_sided_reference
from unique_cube.product.reference import ReferenceStore, ensure_references
from unique_cube.product.stac import day_item
from unique_cube.product.static import StaticLayers, static_for
from unique_cube.product.store import (
    ProductStore,
    locked,
    marker_mode,
    read_marker,
    read_markers,
)
from unique_cube.redact import redact
from unique_cube.version import __version__

__all__ = ["DayResult", "parse_day", "product_days", "run"]


log = logging.getLogger(__name__)


def parse_day(text: str, time_zone: str = "UTC", option: str | None = None) -> dt.date:
    """``YYYY-MM-DD``, ``today`` or ``yesterday`` (in ``time_zone``, computed now); an error
    names ``option`` (``--date``) when given, and tells an impossible day (``2023-02-30``)
    from a date in another format."""
    today = dt.datetime.now(zoneinfo.ZoneInfo(time_zone)).date()
    if text == "today":
        return today
    if text == "yesterday":
        return today - dt.timedelta(days=1)
    try:
        return dt.date.fromisoformat(text)
    except ValueError as why:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):  # the form is right, the day is not
            where = f"{option} " if option else ""
            raise ConfigError(f"{where}{text}: no such day ({why})") from None
        where = f"{option}: " if option else ""
        raise ConfigError(
            f"{where}unknown date {text!r}: expected YYYY-MM-DD, 'today' or 'yesterday'"
        ) from None


def product_days(start: dt.date, end: dt.date) -> list[dt.date]:
    if end < start:
        raise ConfigError(f"--end {end} is before --start {start}")
    return [start + dt.timedelta(days=i) for i in range((end - start).days + 1)]


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rss_mb() -> float:
    """Resident memory now. For Dask workers: their ru_maxrss starts at the peak of the
    process they were forked from, so it says nothing of their own peak."""
    import psutil

    return psutil.Process().memory_info().rss / 2**20


@dataclass
class DayResult:
    day: dt.date
    status: str
    """``done``, ``already done``, ``skipped`` or ``failed``."""
    reason: str = ""
    seconds: float = 0.0
    details: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"day": self.day.isoformat(), "status": self.status, "reason": redact(self.reason),
                "seconds": round(self.seconds, 2), **self.details}  # fmt: skip


def run(
    pipeline: Pipeline,
    days: list[dt.date],
    *,
    force: bool = False,
    sampler: Sampler | None = None,
    say: Callable[[str], None] = log.info,
    mode: str = "auto",
    finalise: bool = False,
    today: dt.date | None = None,
    metrics: MetricsOptions | None = None,
) -> dict:
    """Produce ``days``; a done day is kept unless ``force``. Returns the run log (also
    written to ``<output>/runs/``): each day's status, reason and seconds. Its metrics
    (:mod:`~unique_cube.product.metrics`) follow it after each day.

    ``mode`` (:func:`~unique_cube.product.modes.day_modes`): ``auto`` makes a day final once
    ``product.final_after_days`` have passed, else near-real-time; an NRT day done is made
    again as final when asked for final. ``finalise``: also make final every NRT day of the
    store whose lag has passed (the daily job). ``today``: the day the run counts from
    (default: today in ``product.time_zone``; a replay of an earlier morning names it)."""
    pipeline.require("grid", "product", command="unique-cube run")
    spec = pipeline.product
    today = today or dt.datetime.now(zoneinfo.ZoneInfo(spec.time_zone)).date()
    future = [d for d in days if d >= today]
    if future:
        raise ConfigError(f"{future[0]} has not ended yet in {spec.time_zone}; its inputs "
                          "cannot exist (the latest day is yesterday)")  # fmt: skip
    span = (max(days) - min(days)).days + 1 if days else 0
    if span > spec.max_backfill_days:
        raise ConfigError(
            f"{pipeline.path or pipeline.name}: product.max_backfill_days: {min(days)}.."
            f"{max(days)} spans {span} days, more than the {spec.max_backfill_days} a run may "
            "make; run the backfill in parts (days already done are kept) or raise the limit"
        )
    modes = day_modes(days, mode, today, spec.final_after_days)
    if finalise:
        modes.update(_due_for_final(pipeline, today, modes))
        days = sorted(modes)
    models = check_models(pipeline)
    outside = _check_coverage(pipeline, modes, models, force)  # before anything is written
    geobox = pipeline.grid.geobox
    store = ProductStore(spec.output, geobox, coarse_geobox(geobox),
                         lock_timeout=spec.lock_timeout_s,
                         zarr_layout=spec.zarr_layout)  # fmt: skip
    started = dt.datetime.now(dt.UTC)
    log_path = store.root / "runs" / f"{started:%Y%m%dT%H%M%S}-{os.getpid()}.json"
    watch = RunMetrics(pipeline, store.root / "runs" / "metrics.prom", started, metrics, say)
    try:
        removed = store.clean_leftovers()
    except (OSError, LockBusyError) as err:  # a read-only folder fails its days below
        say(f"warning: the leftovers of earlier runs were not cleaned: {err}")
    else:
        if removed:
            say(f"removed {len(removed)} file(s) left by runs that were killed while writing")
            log.info("removed: %s", ", ".join(removed))
    results: list[DayResult] = []
    todo = [d for d in days if force or not store.is_done(d, modes[d])]
    results += [DayResult(d, "already done") for d in days if d not in todo]
    if results:
        say(f"{len(results)} of {len(days)} days already done (kept; --force redoes them)")
    with contextlib.ExitStack() as stack:
        stack.enter_context(watch)  # the metrics endpoint, while the days are made
        context = _prepare(stack, pipeline, models, store, todo, sampler, say, outside,
                           ahead=any(two_sided_reference(pipeline, modes[d])
                                     for d in todo))  # fmt: skip
        done = 0
        for block in _blocks(todo, modes, spec.block_days):
            block_mode = modes[block[0]]
            say(f"GPP_M for {block[0]}..{block[-1]} ({block_mode})")
            try:
                inputs = block_inputs(pipeline, context.catalog, block, context.gap_days,
                                      block_mode)  # fmt: skip
                coarse = gpp_m_block(pipeline, context.catalog, models.card_path, inputs)
                recorded = day_inputs(pipeline, context.catalog,
                                      {d: block_mode for d in block}, context.gap_days)  # fmt: skip
            except (UniqueCubeError, OSError) as err:  # the block's days fail; the backfill goes on
                log.debug("GPP_M for %s..%s failed", block[0], block[-1], exc_info=True)
                done += len(block)
                say(f"[{done}/{len(todo)}] {block[0]}..{block[-1]}: failed: {err}")
                results += [DayResult(d, "failed", f"GPP_M: {err}") for d in block]
                watch.update(_write_run_log(log_path, pipeline, started, results))
                continue
            for day in block:
                done += 1
                count = f"[{done}/{len(todo)}]"  # what the terminal's bar counts
                results.append(_one_day(context, store, coarse, day, force,
                                        lambda text, count=count: say(f"{count} {text}"),
                                        block_mode, recorded[day]))  # fmt: skip
                watch.update(_write_run_log(log_path, pipeline, started, results))
        client = getattr(context.sampler, "client", None)
        workers = client.run(_rss_mb) if client is not None else {}
    report = _write_run_log(log_path, pipeline, started, results, workers)
    watch.finish(report)
    counts = ", ".join(f"{v} {k}" for k, v in report["counts"].items())
    if "run_log_error" in report:
        say(f"error: the run log could not be written ({report['run_log_error']}); {counts}")
    else:
        say(f"run log: {log_path} ({counts})")
    return report


def _blocks(todo: list[dt.date], modes: dict[dt.date, str], size: int) -> list[list[dt.date]]:
    """The days to make in blocks of at most ``size`` days of one mode each."""
    blocks: list[list[dt.date]] = []
    for day in todo:
        if blocks and len(blocks[-1]) < size and modes[blocks[-1][0]] == modes[day]:
            blocks[-1].append(day)
        else:
            blocks.append([day])
    return blocks


def _due_for_final(pipeline: Pipeline, today: dt.date, asked: dict) -> dict[dt.date, str]:
    """The store's NRT days whose ``product.final_after_days`` have passed (not already asked
    for), within ``product.max_backfill_days`` of the latest day asked: made final now."""
    spec = pipeline.product
    lag = dt.timedelta(days=spec.final_after_days)
    newest = max(asked) if asked else today
    return {day: "final" for day, marker in read_markers(Path(spec.output)).items()
            if day not in asked and today - day >= lag and marker_mode(marker) == "nrt"
            and (newest - day).days < spec.max_backfill_days}  # fmt: skip


def _prepare(stack, pipeline: Pipeline, models: ProductModels, store: ProductStore,
             todo: list[dt.date], sampler: Sampler | None, say,
             outside: np.ndarray | None = None, ahead: bool = False) -> RunContext:  # fmt: skip
    """What every day of the run shares; the catalog, the cluster and the static layers only
    when there are days to make; ``outside``: the coarse pixels the days leave empty;
    ``ahead``: some days are final (their references reach after them)."""
    spec = pipeline.product
    static, catalog = StaticLayers({}, {}), None
    references, reference_error = None, None
    layout = day_layout(pipeline)
    if todo:  # else nothing to make: no catalog, no cluster
        if sampler is None and spec.scheme != "bilinear":
            sampler = _actor_sampler(stack, spec, models, say)
        catalog = stack.enter_context(open_catalog(pipeline))
        if spec.scheme in ("s2", "fusion"):
            static = static_for(catalog, pipeline.grid.geobox, layout.extents,
                                store.root / "cache" / "static", spec.read_retries)  # fmt: skip
        if spec.scheme == "fusion":
            references, reference_error = _references(pipeline, catalog, store, todo, models,
                                                      say, ahead)  # fmt: skip
    if static.problem:
        fallback = "S2, S1 or bilinear" if spec.scheme == "fusion" else "S1"
        say(f"warning: {static.problem}; days fall back to {fallback}")
    if outside is not None:
        say(f"warning: {outside.mean():.0%} of the grid is outside every "
            f"{pipeline.gpp.modis.source} item; its pixels are left empty")  # fmt: skip
    if len(layout.windows) > 1:
        say(f"each day in {len(layout.windows)} windows of at most {spec.window} px")
    return RunContext(pipeline, models, static, layout, sampler, catalog, outside, references,
                      reference_error, grid_latitude(pipeline.grid.geobox))  # fmt: skip


def _references(pipeline: Pipeline, catalog, store: ProductStore, todo: list[dt.date],
                models: ProductModels, say,
                ahead: bool = False) -> tuple[ReferenceStore, Exception | None]:  # fmt: skip
    """The reference state brought up to date for the days to make (the HLS dates of the
    ``downscale.reference_days`` before the first, in date order), under its lock; or the
    error that stopped it (the days then fail, or are left to the next run while another run
    holds the lock — never made without the reference they should have had)."""
    references = ReferenceStore(store.root, pipeline.grid.geobox)
    try:
        with locked(references.folder / ".lock", pipeline.product.lock_timeout_s):
            removed = references.clean_leftovers()
            if removed:
                log.info("removed partial reference dates: %s", ", ".join(removed))
            ensure_references(pipeline, catalog, references, todo, say,
                              models.hashes.get("gpp_landsat", ""), ahead)  # fmt: skip
    except (UniqueCubeError, OSError, KeyError, ValueError) as err:
        log.debug("the reference state was not updated", exc_info=True)
        say(f"warning: the reference state could not be updated: {err}")
        return references, err
    return references, None


def _actor_sampler(
    stack: contextlib.ExitStack, spec: ProductSpec, models: ProductModels, say
) -> Sampler:
    """Tiles sampled by GPU-pinned Dask actors (one per GPU worker, supervised): the cluster
    named by ``$DASK_SCHEDULER_ADDRESS``, or a local one (its dashboard link is said)."""
    client = stack.enter_context(dask_client(cpu_threads=spec.cpu_threads, say=say))
    pools: dict[str, ActorPool] = {}

    def sample(ckpt, requests: list) -> list[np.ndarray]:
        if ckpt.scheme not in pools:
            pools[ckpt.scheme] = stack.enter_context(
                ActorPool(client, models.paths[ckpt.scheme], torch_threads=spec.torch_threads)
            )
        return pools[ckpt.scheme].map(requests)

    sample.client = client  # type: ignore[attr-defined]
    return sample


def _check_coverage(
    pipeline: Pipeline, modes: dict[dt.date, str], models: ProductModels, force: bool
) -> np.ndarray | None:
    """A run whose first or last day to make the reanalysis does not cover, or whose grid is
    mostly outside the MODIS items, is a mistake, not bad days: a
    :class:`~unique_cube.errors.CatalogError` before the product folder is touched. Returns
    the coarse pixels outside every MODIS footprint, which the days leave empty (``None``
    when there is none, or no day to make)."""
    store = Path(pipeline.product.output)
    todo = [d for d, m in modes.items() if force or not _done_as(store, d, m)]
    if not todo:
        return None
    with open_catalog(pipeline) as catalog:
        return check_coverage(pipeline, catalog, todo, gap_fill_span(pipeline, models.card))


def _done_as(root: Path, day: dt.date, mode: str) -> bool:
    """:meth:`ProductStore.is_done` before the store is opened (nothing is written)."""
    marker = read_marker(root, day)
    return marker is not None and (mode == "nrt" or marker_mode(marker) == "final")


def _one_day(
    run: RunContext,
    store: ProductStore,
    coarse: CoarseDays,
    day: dt.date,
    force: bool,
    say,
    mode: str = "final",
    inputs: dict | None = None,
) -> DayResult:
    """Make one day under its lock (or say why not): never raises for a bad day. ``inputs``:
    the day's input items (:func:`~unique_cube.product.modes.day_inputs`), for its marker."""
    began = time.perf_counter()
    if day in coarse.skipped:
        return _skip(store, day, coarse.skipped[day], say)
    try:
        with store.day_lock(day):
            if store.is_done(day, mode) and not force:
                return DayResult(day, "already done", "finished by another run meanwhile")
            store.clean_day(day)  # a day made before stays until the new one is committed
            details = _make_day(run, store, coarse, day, began, mode, inputs or {})
    except DaySkipped as why:
        return _skip(store, day, str(why), say)
    except LockBusyError as err:
        return _skip(store, day, str(err), say, record=False)
    except (UniqueCubeError, OSError) as err:  # OSError: the day's lock or leftovers
        log.debug("%s failed", day, exc_info=True)  # the terminal has the message
        say(f"{day}: failed: {err}")
        return DayResult(day, "failed", str(err), time.perf_counter() - began)
    seconds = time.perf_counter() - began
    before, after = details["coarse_mismatch_before"], details["coarse_mismatch_after"]
    say(f"{day}: done in {seconds:.1f} s ({details['scheme']}; 480 m mismatch with GPP_M "
        f"{before:.3f} → {after:.3f} gC m-2 d-1)")  # fmt: skip
    keep = ("mode", "version", "scheme", "coarse_mismatch_before", "coarse_mismatch_after",
            "qa_fractions", "lost_inputs", "fallback", "reference", "tiles",
            "last_input_published", "written", "latency_hours", "input_lag_hours",
            "hours_after_day")  # fmt: skip
    return DayResult(day, "done", "", seconds, {k: details[k] for k in keep if k in details})


def _make_day(
    run: RunContext,
    store: ProductStore,
    coarse: CoarseDays,
    day: dt.date,
    began: float,
    mode: str = "final",
    inputs: dict | None = None,
) -> dict:
    """The day's maps and COGs, made beside the day's old ones (if any), then its item (a new
    version of it) and marker, and the day swapped in (:meth:`ProductStore.commit`; done once
    its marker is written); returns what the day's item and the run log say of it."""
    i = coarse.days.index(day)
    plan = plan_day(run, day, coarse.gpp[i], coarse.gap[i], coarse.out_of_range[i],
                    coarse.lost.get(day), mode)  # fmt: skip
    tags = {"date": day.isoformat(), "software": "unique-cube"}
    with store.open_day(day, tags) as writer:
        make_windows(run, plan, writer.write)
        cogs = writer.finish(plan.gpp_m)
        span = dt.timedelta(days=run.gap_days)
        ahead = span if mode == "final" else dt.timedelta(0)  # NRT: nothing after the day
        landsat = {}
        if plan.scheme == "fusion":  # the HLS items of its reference and its own clear pixels
            own = {day} if run.references.path(day).exists() else set()
            landsat = {run.pipeline.gpp.landsat.source:
                       run.references.items(plan.reference_dates | own)}  # fmt: skip
            plan.details["reference"] = _reference_note(plan)
        provenance = {
            run.pipeline.gpp.modis.source: sorted(
                iid for when, iid in coarse.modis_items if -span <= when - day <= ahead
            ),
            # the reanalysis items of the local day's hours (the block read more days)
            run.pipeline.gpp.weather: sorted(
                (inputs or {}).get(run.pipeline.gpp.weather) or coarse.weather_items
            ),
            **landsat,
            **run.static.items,
        }
        version = store.item_version(day) + 1
        item = day_item(run.pipeline, store, day, cogs, provenance, plan.details,
                        run.models.hashes, version)  # fmt: skip
        written = dt.datetime.now(dt.UTC)
        marker = {"day": day.isoformat(), "mode": mode, "version": version,
                  "seconds": round(time.perf_counter() - began, 2),
                  "finished": written.isoformat(),
                  "item": str(store.item_path(day).relative_to(store.root)),
                  "checksums": {k: a["file:checksum"] for k, a in item["assets"].items()
                                if "file:checksum" in a},
                  "inputs": inputs or {}}  # fmt: skip
        store.commit(writer, item, marker)
    return {
        **plan.details,
        "version": version,
        **_latency(day, inputs or {}, written, run.pipeline.gpp.utc_offset_hours),
    }


def _latency(day: dt.date, inputs: dict, written: dt.datetime, utc_offset: float) -> dict:
    """When the day's last input was published and when the day was written: the hours
    between them (``latency_hours``), the hours from the local day's end to the last input
    (``input_lag_hours``: the wait no run can shorten) and to the day written
    (``hours_after_day``: what a user of the NRT day waits)."""
    end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), dt.UTC)
    end -= dt.timedelta(hours=utc_offset)
    last = published(inputs)
    out = {"written": written.isoformat(timespec="seconds"),
           "hours_after_day": round((written - end).total_seconds() / 3600, 2)}  # fmt: skip
    if last is not None:
        out["last_input_published"] = last.isoformat(timespec="seconds")
        out["latency_hours"] = round((written - last).total_seconds() / 3600, 2)
        out["input_lag_hours"] = round((last - end).total_seconds() / 3600, 2)
    return out


def _reference_note(plan) -> dict:
    """What a fusion day's item says of its reference state."""
    dates = sorted(plan.reference_dates)
    pixels = max(plan.counts.get("pixels", 0), 1)
    return {"dates": [d.isoformat() for d in dates],
            "oldest_days": (plan.day - dates[0]).days if dates else None,
            "gpp_l_clear_fraction": plan.counts.get("gpp_l_clear", 0) / pixels,
            "no_reference_fraction": plan.counts.get("no_reference", 0) / pixels}  # fmt: skip


def _skip(store, day, reason: str, say, record: bool = True) -> DayResult:
    say(f"{day}: skipped: {reason}")
    if record:
        try:
            store.record_skip(day, reason)
        except StoreError as err:  # the skip is not in the collection: the run must say so
            say(f"{day}: failed: {err}")
            return DayResult(day, "failed", f"skipped ({reason}), and {err}")
    return DayResult(day, "skipped", reason)


def _write_run_log(
    path: Path, pipeline: Pipeline, started, results: list[DayResult], workers: dict | None = None
) -> dict:

    counts: dict[str, int] = {}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
    done = [r for r in results if r.status == "done"]
    report = {
        "pipeline": pipeline.path,
        "software": {"unique-cube": __version__},
        "started": started.isoformat(),
        "days": [r.as_dict() for r in sorted(results, key=lambda r: r.day)],
        "counts": counts,
        "seconds_per_day": round(float(np.mean([r.seconds for r in done])), 2) if done else None,
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "worker_rss_mb": {k: round(v, 1) for k, v in (workers or {}).items()},
    }
    try:
        write_json(path, report)
    except OSError as err:  # a full disk: the run goes on; the terminal and exit code say so
        log.error("run log %s not written: %s", path, err)
        report["run_log_error"] = f"{path}: {err}"
    return report

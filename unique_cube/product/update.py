"""``unique-cube update``: re-make the days whose inputs changed since they were made.

HLS items arrive days after the overpass and MODIS collections are reprocessed, so a day made
this morning may miss an input that exists tomorrow. Each day's marker records the input
items its mode may read (:func:`unique_cube.product.modes.day_inputs`: ids and their
``updated``/``created`` stamps); :func:`update` searches the catalog once per source for the
days of the last ``since`` days, compares, and re-makes exactly the days whose inputs differ —
through the reference windows, that includes the days whose reference state a late HLS item
changes. A day whose inputs did not change is not touched. A failing search stops the update
before anything is re-made.
"""

from __future__ import annotations

import datetime as dt
import logging
import zoneinfo
from collections.abc import Callable
from pathlib import Path

from unique_cube.config.pipeline import Pipeline
from unique_cube.errors import CatalogError, UniqueCubeError
from unique_cube.inputs.search import open_catalog
from unique_cube.product.day import Sampler, gap_fill_span
from unique_cube.product.models import check_models
from unique_cube.product.modes import changed_inputs, day_inputs
from unique_cube.product.run import run
from unique_cube.product.store import marker_mode, read_markers

__all__ = ["update"]

log = logging.getLogger(__name__)


def update(
    pipeline: Pipeline,
    since: int,
    *,
    today: dt.date | None = None,
    sampler: Sampler | None = None,
    say: Callable[[str], None] = log.info,
) -> dict:
    """Re-make the done days of the last ``since`` days (counted back from ``today``) whose
    input items changed; returns what was checked, what changed and the run log of the days
    re-made (``None`` when none was). A re-made day is made as ``unique-cube run`` would make
    it today: final once its lag has passed."""
    pipeline.require("grid", "product", command="unique-cube update")
    if since < 0:
        raise UniqueCubeError(f"--since {since}: expected a number of days (0 or more)")
    spec = pipeline.product
    today = today or dt.datetime.now(zoneinfo.ZoneInfo(spec.time_zone)).date()
    markers = {d: m for d, m in read_markers(Path(spec.output)).items()
               if 0 < (today - d).days <= since}  # fmt: skip
    unrecorded = sorted(d for d, m in markers.items() if "inputs" not in m)
    if unrecorded:
        say(f"{len(unrecorded)} day(s) made without a record of their inputs cannot be "
            f"checked ({unrecorded[0]}..{unrecorded[-1]}); `unique-cube run --force` remakes "
            "them")  # fmt: skip
    checked = {d: marker_mode(m) for d, m in markers.items() if "inputs" in m}
    report = {"checked": len(checked), "unrecorded": [d.isoformat() for d in unrecorded],
              "changed": {}, "run": None}  # fmt: skip
    if not checked:
        say(f"no day of the last {since} days to check in {spec.output}")
        return report
    models = check_models(pipeline)
    try:
        with open_catalog(pipeline) as catalog:
            now = day_inputs(pipeline, catalog, checked, gap_fill_span(pipeline, models.card))
    except (UniqueCubeError, OSError) as err:
        raise CatalogError(f"the check of {len(checked)} day(s) against the catalog "
                           f"failed: {err}; nothing was re-made (run the update "
                           "again)") from err  # fmt: skip
    changed = {d: changed_inputs(markers[d]["inputs"], now[d]) for d in sorted(checked)}
    changed = {d: c for d, c in changed.items() if c}
    report["changed"] = {d.isoformat(): c for d, c in changed.items()}
    say(f"{len(checked)} day(s) checked, {len(changed)} with changed inputs")
    for day, changes in changed.items():
        say(f"{day}: " + "; ".join(changes))
    if changed:
        report["run"] = run(pipeline, sorted(changed), force=True, sampler=sampler, say=say,
                            today=today)  # fmt: skip
    return report

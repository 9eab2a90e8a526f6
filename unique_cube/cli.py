"""The ``unique-cube`` command line: thin wrappers over the library, one exit code per failure kind.

Exit codes (one per kind of failure; the message on stderr names the file, key or item):

- 0 success
- 1 any other error of unique_cube
- 2 usage (argparse: an unknown command or option)
- 3 configuration or argument: malformed YAML, an unknown key, an impossible date, a wrong CRS,
  a missing or damaged model, an unusable flux file
- 4 STAC search: nothing found for the area or period, an API that keeps failing
- 5 load or store: items that cannot make a cube, an output that cannot be written
- 6 a product day (or the Dask cluster) failed
- 7 a model file that would run code when unpickled (refused; nothing in it ran)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import sys
import threading
import time
import traceback
import urllib.parse
from collections.abc import Sequence
from pathlib import Path

from unique_cube.config.catalog import CATALOG_DIR, load_catalog
from unique_cube.config.pipeline import Pipeline, load_pipeline, validate_pipeline
from unique_cube.demo.build import build_world
from unique_cube.demo.job import demo_pipeline, run_demo
from unique_cube.demo.serve import serve_world, served
from unique_cube.demo.world import SIZES
from unique_cube.downscale.fit import TrainingPaused
from unique_cube.downscale.train import train_downscaler
from unique_cube.errors import ConfigError, UniqueCubeError
from unique_cube.evaluation import evaluate, evaluate_downscaler
from unique_cube.gpp.train import train_gpp
from unique_cube.inputs.search import search
from unique_cube.inputs.stac_server import LocalStacServer
from unique_cube.product.metrics import JOB_ENV, PORT_ENV, PUSH_ENV, MetricsOptions
from unique_cube.product.run import parse_day, product_days, run
from unique_cube.product.update import update
from unique_cube.progress import progress_lines
from unique_cube.redact import install_redaction, redact
from unique_cube.version import __version__

__all__ = ["WORLD_SIZES", "main"]


log = logging.getLogger("unique_cube")

#: Exit code of a run stopped at its time limit with its state kept (EX_TEMPFAIL: try again).
EXIT_PAUSED = 75


#: The demo world's sizes (``--size``).
WORLD_SIZES = tuple(SIZES)


def _cmd_catalogs(args: argparse.Namespace) -> int:
    paths = args.files or sorted(str(p) for p in CATALOG_DIR.glob("*.yaml"))
    for path in paths:
        catalog = load_catalog(path)
        print(f"{catalog.name}: {catalog.stac_url} ({catalog.path})")
        for name, src in catalog.sources.items():
            roles = ", ".join(src.bands)
            resolution = f"{src.resolution:g} {src.resolution_units}"
            print(f"  {name:<14} {src.collection:<16} {src.type:<9} {resolution:<20} [{roles}]")
    return 0


def _cmd_search(args: argparse.Namespace) -> int:
    catalog = load_catalog(args.catalog)
    if args.stac_url:
        catalog = catalog.with_url(args.stac_url)
    items = search(
        args.source,
        args.bbox,
        args.datetime,
        catalog=catalog,
        max_cloud_cover=args.max_cloud_cover,
        method=args.method,
    )
    if args.json:
        # Hrefs are printed without their secrets: a signed asset URL carries a token, and the
        # root link is the --stac-url as given (user:password, a signed query).
        print(json.dumps([_unsigned(it.to_dict()) for it in items], indent=1))
    else:
        for item in items:
            cover = item.properties.get("eo:cloud_cover")
            cover_text = "" if cover is None else f"  cloud {cover:g}%"
            print(
                f"{item.datetime or item.properties.get('start_datetime')}  {item.id}{cover_text}"
            )
        print(f"{len(items)} item(s)", file=sys.stderr)
    return 0


def _unsigned(item: dict) -> dict:
    for entry in [*item.get("assets", {}).values(), *item.get("links", [])]:
        entry["href"] = _without_secrets(entry["href"])
    return item


def _without_secrets(url: str) -> str:
    """``url`` without user:password, query string and fragment."""
    parts = urllib.parse.urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


def _cmd_serve(args: argparse.Namespace) -> int:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with LocalStacServer(args.files, port=args.port) as server:
        print(f"STAC API at {server.url} (Ctrl-C to stop)", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()
    return 0


def _cmd_demo_world(args: argparse.Namespace) -> int:
    manifest = build_world(
        args.out,
        args.size,
        args.seed,
        workers=args.workers,
        reuse=not args.force,
        progress=_progress,
    )
    print(json.dumps({k: manifest[k] for k in ("size", "seed", "items", "bytes", "seconds")}))
    return 0


#: The running command's ``say`` (:func:`unique_cube.progress.progress_lines`).
_SAY: list = []


def _progress(text: str) -> None:
    if _SAY:
        _SAY[-1](text)
    else:
        print(text, file=sys.stderr, flush=True)


def _cmd_serve_catalog(args: argparse.Namespace) -> int:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with serve_world(args.world, port=args.port) as server:
        print(f"STAC API of the demo world in {args.world} at {server.url} (Ctrl-C to stop)")
        print(f"search it with: unique-cube search hls-l30 --stac-url {server.url} ...", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()
    return 0


def _pipeline(args: argparse.Namespace, *sections: str) -> Pipeline:
    """The command's pipeline, with the sections it needs."""
    pipeline = load_pipeline(args.pipeline)
    pipeline.require(*sections, command=f"unique-cube {args.command}")
    return pipeline


def _cmd_train_gpp(args: argparse.Namespace) -> int:
    with served(_pipeline(args)) as pipeline:
        report = train_gpp(pipeline, say=_progress)
    summary = {k: {"learner": v["learner"], **v["cv"]["overall"]} for k, v in report.items()}
    print(json.dumps(summary, indent=1))
    return 0


def _cmd_train_downscaler(args: argparse.Namespace) -> int:
    limit = None if args.max_minutes is None else 60 * args.max_minutes
    with served(_pipeline(args, "grid", "downscale")) as pipeline:
        try:
            path = train_downscaler(pipeline, args.scheme, say=_progress, max_seconds=limit)
        except TrainingPaused as paused:
            print(f"unique-cube train-downscaler: {paused}", file=sys.stderr)
            return EXIT_PAUSED
    print(path)
    return 0


def _cmd_evaluate_downscaler(args: argparse.Namespace) -> int:
    with served(_pipeline(args, "grid", "downscale")) as pipeline:
        report = evaluate_downscaler(pipeline, say=_progress)
    print(json.dumps({"table": report["table"], "ensemble": report["ensemble"]}, indent=1))
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    with served(_pipeline(args, "grid", "downscale", "product", "evaluation")) as pipeline:
        result = evaluate(pipeline, full=args.full, say=_progress)
    keys = ("vs_gpp_l", "daily_vs_truth", "spatial_holdout", "ensemble", "seconds")
    print(json.dumps({k: result[k] for k in keys if k in result}, indent=1))
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    if args.end and not args.start:  # --date with --end would silently make one day
        raise ConfigError("--end needs --start (a backfill); give --date D, or --start S and "
                          "--end E")  # fmt: skip
    metrics = MetricsOptions.from_environment(args.metrics_port, args.metrics_push,
                                              args.metrics_job)  # fmt: skip
    pipeline = _pipeline(args, "grid", "product")
    zone = pipeline.product.time_zone
    if args.date:
        days = [parse_day(args.date, zone, "--date")]
    elif args.start and args.end:
        days = product_days(parse_day(args.start, zone, "--start"),
                            parse_day(args.end, zone, "--end"))  # fmt: skip
    else:
        raise ConfigError("give --date D, or --start S and --end E")
    today = parse_day(args.as_of, zone, "--as-of") if args.as_of else None
    with served(pipeline) as running:
        if args.update_since is not None:  # days whose inputs came late, before the new ones
            update(running, args.update_since, today=today, say=_progress)
        report = run(running, days, force=args.force, say=_progress, mode=args.mode,
                     finalise=args.finalise, today=today, metrics=metrics)  # fmt: skip
    workers = report["worker_rss_mb"]
    print(json.dumps({"counts": report["counts"], "seconds_per_day": report["seconds_per_day"],
                      "peak_rss_mb": report["peak_rss_mb"],
                      "workers_rss_mb": round(sum(workers.values()), 1)}))  # fmt: skip
    if report["counts"].get("failed"):
        return 6
    return 5 if "run_log_error" in report else 0


def _cmd_update(args: argparse.Namespace) -> int:
    pipeline = _pipeline(args, "grid", "product")
    zone = pipeline.product.time_zone
    today = parse_day(args.as_of, zone, "--as-of") if args.as_of else None
    with served(pipeline) as running:
        report = update(running, args.since, today=today, say=_progress)
    made = report["run"] or {"counts": {}}
    print(json.dumps({"checked": report["checked"], "changed": sorted(report["changed"]),
                      "unrecorded": len(report["unrecorded"]),
                      "counts": made["counts"]}))  # fmt: skip
    return 6 if made["counts"].get("failed") else 0


def _cmd_validate(args: argparse.Namespace) -> int:
    for line in validate_pipeline(args.pipeline):
        print(line)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    began = time.perf_counter()
    _progress(f"[1/6] demo world ({args.size}, seed {args.seed}) in {args.world}")
    manifest = build_world(args.world, args.size, args.seed, workers=args.workers,
                           progress=_progress)  # fmt: skip
    pipeline = demo_pipeline(args.pipeline, args.world, args.output)
    pipeline.require("grid", "downscale", "product", "evaluation", command="unique-cube demo")
    left, bottom, right, top = manifest["region"]["bbox"]
    g_left, g_bottom, g_right, g_top = pipeline.grid.bounds
    if g_left < left or g_bottom < bottom or g_right > right or g_top > top:
        raise ConfigError(
            f"{args.pipeline}: grid.bounds {list(pipeline.grid.bounds)} are not inside the "
            f"{args.size} world's region {manifest['region']['bbox']}; give a pipeline made for "
            "it with --pipeline"
        )
    with served(pipeline) as running:
        result = run_demo(running, manifest, _progress)
    summary = {
        "gpp_models": result["gpp_models"],
        "downscaling_vs_truth_rmse": {
            k: round(v["rmse"], 3) for k, v in result["downscaling"].get("vs_truth", {}).items()
        },
        "daily_vs_truth_rmse": {
            k: v["rmse"] and round(v["rmse"], 3)
            for k, v in result["evaluation"].get("daily_vs_truth", {}).items()
        },
        "product": result["product"],
    }
    print(json.dumps(summary, indent=1))
    _progress(f"demo done in {time.perf_counter() - began:.0f} s: open "
              f"{Path(pipeline.product.output).parent / 'report' / 'report.html'}")  # fmt: skip
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unique-cube",
        description=(
            "Daily 30 m GPP maps from STAC datacubes "
            "(UNIQUE: LightGBM GPP + diffusion downscaling)."
        ),
    )
    parser.add_argument("--version", action="version", version=f"unique-cube {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_stac_commands(sub)
    _add_pipeline_commands(sub)
    return parser


def _add_stac_commands(sub) -> None:
    """Commands on catalogs and STAC APIs, and the demo world's."""
    p = sub.add_parser(
        "catalogs", help="validate and list catalog files (default: the shipped ones)"
    )
    p.add_argument("files", nargs="*", help="catalog YAML files")
    p.set_defaults(func=_cmd_catalogs)

    p = sub.add_parser("search", help="search a source of a catalog and list the items")
    p.add_argument("source", help="source name in the catalog (hls-l30, modis-sr, dem …)")
    p.add_argument("--catalog", default="demo", help="catalog name or YAML path (default: demo)")
    p.add_argument("--stac-url", help="override the catalog's STAC API URL")
    p.add_argument("--bbox", nargs=4, type=float, required=True, metavar=("W", "S", "E", "N"))
    p.add_argument("--datetime", required=True, help="YYYY-MM-DD or START/END")
    p.add_argument("--max-cloud-cover", type=float, help="percent; default the source's limit")
    p.add_argument("--method", choices=["GET", "POST"], help="HTTP method of the search")
    p.add_argument("--json", action="store_true", help="print the items as JSON")
    p.set_defaults(func=_cmd_search)

    p = sub.add_parser("serve", help="serve STAC item collections with a local STAC API (rustac)")
    p.add_argument("files", nargs="+", help="item collection / collection JSON files")
    p.add_argument("--port", type=int, default=7822, help="port on 127.0.0.1 (default 7822)")
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser(
        "demo-world", help="generate the demo world (COGs, STAC items, towers, truth) into a folder"
    )
    p.add_argument("--out", required=True, help="folder to write (reused if already complete)")
    p.add_argument("--size", choices=WORLD_SIZES, default="compact")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2, help="processes writing COGs (default 2)")
    p.add_argument("--force", action="store_true", help="rebuild even if a complete world exists")
    p.set_defaults(func=_cmd_demo_world)

    p = sub.add_parser("serve-catalog", help="serve a demo world with a local STAC API (rustac)")
    p.add_argument("world", help="folder written by `unique-cube demo-world`")
    p.add_argument("--port", type=int, default=7822, help="port on 127.0.0.1 (default 7822)")
    p.set_defaults(func=_cmd_serve_catalog)


def _add_pipeline_commands(sub) -> None:
    """Commands that run a pipeline's stages."""
    p = sub.add_parser(
        "train-gpp", help="train the MODIS and Landsat GPP models of a pipeline (spatial CV)"
    )
    p.add_argument("pipeline", help="pipeline YAML (e.g. pipelines/demo.yaml)")
    p.set_defaults(func=_cmd_train_gpp)

    p = sub.add_parser(
        "train-downscaler",
        help="train the fusion downscaler, the paper's S1/S2 or the pure-pixel DNN",
    )
    p.add_argument("pipeline", help="pipeline YAML with grid and downscale sections")
    p.add_argument("--scheme", choices=["fusion", "s1", "s2", "pure_pixel"], required=True)
    p.add_argument("--max-minutes", type=float, default=None,
                   help="stop the diffusion training after this long and keep its state; the "
                        f"same command goes on from there (exit code {EXIT_PAUSED} until "
                        "done)")  # fmt: skip
    p.set_defaults(func=_cmd_train_downscaler)

    p = sub.add_parser(
        "evaluate-downscaler",
        help="bilinear vs pure-pixel vs S1 vs S2 on the test period (JSON + PNG)",
    )
    p.add_argument("pipeline", help="pipeline YAML with grid and downscale sections")
    p.set_defaults(func=_cmd_evaluate_downscaler)

    p = sub.add_parser(
        "evaluate",
        help="the downscalers on every clear test date and the daily product on every day "
        "(or 1 in evaluation.daily_every), by stratum, with a spatial hold-out",
    )
    p.add_argument(
        "pipeline", help="pipeline YAML with grid, downscale, product and evaluation sections"
    )
    p.add_argument(
        "--full",
        action="store_true",
        help="every day of the test period, whatever evaluation.daily_every says",
    )
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("run", help="produce the daily 30 m GPP product for a day or a backfill")
    p.add_argument("pipeline", help="pipeline YAML with grid, downscale and product sections")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--date", help="YYYY-MM-DD, 'yesterday' or 'today' (product.time_zone)")
    when.add_argument("--start", help="first day of a backfill (YYYY-MM-DD)")
    p.add_argument("--end", help="last day of a backfill (inclusive)")
    p.add_argument("--force", action="store_true", help="redo days that are already done")
    p.add_argument("--mode", choices=("auto", "nrt", "final"), default="auto",
                   help="nrt: inputs up to each day only; final: both sides, once "
                        "product.final_after_days have passed; auto (default): final when "
                        "the lag has passed, else nrt")  # fmt: skip
    p.add_argument("--finalise", action="store_true",
                   help="also make final every NRT day of the product whose lag has passed "
                        "(the daily job)")  # fmt: skip
    p.add_argument("--update-since", type=int, metavar="N",
                   help="first re-make the done days of the last N days whose input items "
                        "changed (as `unique-cube update --since N`)")  # fmt: skip
    p.add_argument("--as-of", help="count from this day instead of today (a replay)")
    p.add_argument("--metrics-port", metavar="[HOST:]PORT",
                   help="serve Prometheus metrics on /metrics while the run lasts (default "
                        f"${PORT_ENV}, else none; 0: any free port)")  # fmt: skip
    p.add_argument("--metrics-push", metavar="URL",
                   help="push the metrics to this Pushgateway after each day and at the end "
                        f"(default ${PUSH_ENV})")  # fmt: skip
    p.add_argument("--metrics-job", metavar="NAME",
                   help=f"job label of the pushed metrics (default ${JOB_ENV} or "
                        "unique-cube)")  # fmt: skip
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("update", help="re-make the days whose input items changed (late HLS, "
                                      "reprocessed MODIS)")  # fmt: skip
    p.add_argument("pipeline", help="pipeline YAML with grid and product sections")
    p.add_argument("--since", type=int, required=True,
                   help="check the days of the last N days (before today)")  # fmt: skip
    p.add_argument("--as-of", help="count from this day instead of today (a replay)")
    p.set_defaults(func=_cmd_update)

    p = sub.add_parser("validate", help="check a pipeline file: keys, catalog, models, output")
    p.add_argument("pipeline", help="pipeline YAML")
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("demo", help="run the main job on the embedded demo world")
    p.add_argument("--world", default="demo-world", help="demo world folder (default demo-world)")
    p.add_argument("--size", choices=WORLD_SIZES, default="compact")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument(
        "--pipeline",
        default="pipelines/demo.yaml",
        help="pipeline YAML whose "
        "demo-world/ and demo-output/ paths are moved to --world and --output",
    )
    p.add_argument("--output", default="demo-output", help="output folder (default demo-output)")
    p.set_defaults(func=_cmd_demo)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``unique-cube`` console script; returns the exit code."""
    args = _parser().parse_args(argv)
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # distributed sets its loggers to INFO when it is first imported (later, by a stage):
    # its config says the level it sets, and the logger is set too in case it was imported.
    import dask

    dask.config.set({"logging.distributed": logging.getLevelName(level).lower()})
    logging.getLogger("distributed").setLevel(level)
    install_redaction()
    try:
        with progress_lines() as say:
            _SAY.append(say)
            try:
                return args.func(args)
            finally:
                _SAY.pop()
    except UniqueCubeError as err:
        print(f"unique-cube {args.command}: error: {redact(err)}", file=sys.stderr)
        return err.exit_code
    except OSError as err:  # a file that cannot be read or written outside a day's outputs
        print(f"unique-cube {args.command}: error: {redact(err)}", file=sys.stderr)
        return 5
    except Exception as err:  # a bug or an unforeseen failure: its traceback, redacted
        # (it may quote a URL with its token), and exit 1 as an uncaught exception gives.
        trace = "".join(traceback.format_exception(err))
        print(redact(trace), end="", file=sys.stderr)
        print(f"unique-cube {args.command}: error: unexpected {type(err).__name__}: "
              f"{redact(err)}", file=sys.stderr)  # fmt: skip
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""Screenshots of the Dask dashboard while a product day is sampled (headless Chromium).

Not a timing: the record that the downscaler's tiles show on the dashboard (task stream,
and progress under ``unique-cube-tile``) while a day is made. Runs ``unique-cube run``
on a pipeline (its days forced), waits until the day's tiles are being sampled (the
``[k/n]`` lines say which day; tiles start after the day's GPP_M), and takes a screenshot of
each named page every ``--every`` seconds until the run ends::

    python benchmarks/dashboard_screenshot.py --pipeline /tmp/d22-out/pipeline.yaml \\
        --date 2023-06-17 --out /tmp/dashboard

Needs ``chromium`` (Debian: ``apt-get install chromium``), Playwright beside it to wait for
the plots (any Python: ``python -m venv /tmp/pw && /tmp/pw/bin/pip install playwright``, then
run this file with that Python and ``--unique-cube .venv/bin/unique-cube``; it imports nothing
of the package), and a pipeline whose scheme samples tiles (fusion, s1 or s2). The run's own
output goes to ``<out>/run.log``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

#: The pages shot (``groups``, the task-group graph, is left out: distributed 2026.8's own
#: code fails on it with a KeyError while arrays are computed, logged into the run's output).
PAGES = ("status", "tasks")


def screenshot(chromium: str, url: str, path: Path, size: str, wait: float) -> bool:
    """One page as a PNG once it has drawn (False when the browser failed). The dashboard's
    pages are Bokeh documents that fill in over a websocket after the page loads, so the
    browser is driven by Playwright (``pip install playwright``, no browser download: it drives
    the Chromium given) and the shot is taken ``wait`` seconds after the load; without
    Playwright, Chromium's own ``--screenshot`` (which shoots before the plots are drawn)."""
    width, height = (int(v) for v in size.split(","))
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        done = subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             f"--window-size={size}", f"--screenshot={path}", url],
            capture_output=True, timeout=120, check=False,
        )  # fmt: skip
        return done.returncode == 0 and path.exists()
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.goto(url, wait_until="load", timeout=60_000)
            page.wait_for_timeout(wait * 1000)
            page.screenshot(path=str(path))
        finally:
            browser.close()
    return path.exists()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", required=True)
    parser.add_argument("--date", required=True, help="the day to make (forced)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--every", type=float, default=8.0, help="seconds between shots")
    parser.add_argument("--shots", type=int, default=4, help="screenshots of each page")
    parser.add_argument("--size", default="1600,1000")
    parser.add_argument("--wait", type=float, default=4.0,
                        help="seconds a page is given to draw its plots")  # fmt: skip
    parser.add_argument("--unique-cube", default=shutil.which("unique-cube"),
                        help="the command (default: the one on PATH)")  # fmt: skip
    args = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("no chromium on PATH (Debian: apt-get install chromium)")
    args.out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "UNIQUE_CUBE_DASHBOARD_ADDRESS": "127.0.0.1:8787"}
    if args.unique_cube is None:
        sys.exit("no unique-cube command on PATH: name it with --unique-cube")
    command = [args.unique_cube, "run", args.pipeline, "--date", args.date, "--force"]
    log = (args.out / "run.log").open("w")
    run = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=log, text=True, env=env)
    dashboard, sampling = None, threading.Event()

    def follow() -> None:
        nonlocal dashboard
        for line in run.stderr:
            log.write(line)
            log.flush()
            if "dashboard http" in line:
                dashboard = line.rsplit("dashboard ", 1)[1].strip().removesuffix("/status")
            if "GPP_M for" in line or "reference state" in line:
                sampling.set()  # the day's tiles come next

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    taken = []
    sampling.wait(timeout=1800)
    time.sleep(args.every)
    for shot in range(args.shots):
        if run.poll() is not None or dashboard is None:
            break
        for page in PAGES:
            path = args.out / f"{page}-{shot}.png"
            try:
                if screenshot(chromium, f"{dashboard}/{page}", path, args.size, args.wait):
                    taken.append(str(path))
            except Exception as err:  # the run ended meanwhile: its dashboard is gone
                print(f"{page}: no screenshot ({err})", file=sys.stderr)
        time.sleep(args.every)
    code = run.wait()
    reader.join(timeout=10)
    print(json.dumps({"run_exit": code, "dashboard": dashboard, "screenshots": taken,
                      "command": " ".join(command)}, indent=1))  # fmt: skip
    return 0 if taken else 1


if __name__ == "__main__":
    sys.exit(main())

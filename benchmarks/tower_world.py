"""The tower test bed of the scaling benchmark: towers spread over a hemisphere's land band.

``--towers`` places spread uniformly over the area of 20-70 N, 170 W-170 E (dozens of UTM
zones and MODIS sinusoidal tiles), each with a 64 x 64-pixel HLS L30-like tile of its own in
its UTM zone seen on 3 of 6 days (staggered), and MOD09GA-like items of every sinusoidal tile
holding towers on 2 days, published and servable like the demo world
(:func:`unique_cube.demo.tower_bed.build_tower_bed`; a bed of the same inputs is reused).

    .venv/bin/python benchmarks/tower_world.py --towers 320 --out /tmp/tower-bed
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import tempfile
from pathlib import Path

#: The bed's days: HLS on every other one at each tile, MODIS on the first two.
HLS_DATES = [dt.date(2023, 6, 1) + dt.timedelta(days=i) for i in range(6)]
MODIS_DATES = HLS_DATES[:2]
#: Where the benchmark keeps its bed between runs.
DEFAULT_BED = Path(tempfile.gettempdir()) / "unique-cube-tower-bed"


def build_bed(out: Path, towers: int, seed: int = 0, workers: int = 2) -> dict:
    """Build (or reuse) the bed of ``towers`` spread towers in ``out``; its manifest."""
    from unique_cube.demo.tower_bed import build_tower_bed, spread_sites

    sites = spread_sites(towers, seed=seed)
    return build_tower_bed(out, sites, HLS_DATES, MODIS_DATES, hls_every=2, seed=seed,
                           workers=workers)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--towers", type=int, default=320)
    parser.add_argument("--out", type=Path, default=DEFAULT_BED)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    print(json.dumps(build_bed(args.out, args.towers, args.seed, args.workers), indent=1))


if __name__ == "__main__":
    main()

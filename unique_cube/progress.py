"""What the command line says while a long stage runs: one line per event, and on a terminal a
live status line below them (the stage's last event, a bar where it counts ``k/n``, the time).

When stderr is not a terminal (a log file, a pod, a pipe) the lines are written as before and
nothing else: logs read the same with or without a bar.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

__all__ = ["progress_lines"]

#: "step 40/200", "day 3/31", "[2/6]": the count a bar is drawn from.
_COUNT = re.compile(r"(\d+)\s*/\s*(\d+)")


@contextmanager
def progress_lines(stream: TextIO | None = None) -> Iterator[Callable[[str], None]]:
    """A ``say`` for the stages: each line is written to ``stream`` (default stderr); on a
    terminal a live line under them shows the last one with its elapsed time and, when it
    counts ``k/n``, a bar."""
    stream = sys.stderr if stream is None else stream
    if not stream.isatty():

        def say(text: str) -> None:
            print(text, file=stream, flush=True)

        yield say
        return

    from rich.console import Console
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    console = Console(file=stream)
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
               TimeElapsedColumn())  # fmt: skip
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("", total=None)

        def say(text: str) -> None:
            bar.console.print(text, markup=False, highlight=False)
            count = _COUNT.search(text)
            done, total = (int(count[1]), int(count[2])) if count else (None, None)
            if total:
                bar.update(task, description=text[:60], completed=done, total=total)
            else:
                bar.update(task, description=text[:60], total=None)

        yield say

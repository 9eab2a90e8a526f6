"""The local STAC API dies with the process that started it, however it dies, and the next
start removes the temporary folder that process left."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest
import requests

from unique_cube.demo.serve import remove_stale_folders, serve_world
from unique_cube.inputs.stac_server import LocalStacServer

# Starting Python and rustac takes seconds on a busy CI machine.
DEADLINE_S = 60.0


def tiny_world(root: Path) -> Path:
    """A world that serve_world accepts: a manifest, one collection and one item."""
    (root / "stac").mkdir(parents=True)
    (root / "world.json").write_text("{}")
    collection = {
        "type": "Collection", "stac_version": "1.0.0", "id": "tiny", "description": "tiny",
        "license": "CC0-1.0", "links": [],
        "extent": {"spatial": {"bbox": [[127.0, 37.0, 127.1, 37.1]]},
                   "temporal": {"interval": [["2023-01-01T00:00:00Z", None]]}},
    }  # fmt: skip
    item = {
        "type": "Feature", "stac_version": "1.0.0", "id": "tiny-1", "collection": "tiny",
        "geometry": {"type": "Point", "coordinates": [127.05, 37.05]},
        "bbox": [127.05, 37.05, 127.05, 37.05], "links": [],
        "properties": {"datetime": "2023-05-01T00:00:00Z"},
        "assets": {"data": {"href": "cogs/data.tif"}},
    }  # fmt: skip
    (root / "stac" / "collections.json").write_text(json.dumps([collection]))
    (root / "stac" / "tiny.json").write_text(
        json.dumps({"type": "FeatureCollection", "features": [item]})
    )
    return root


def until(condition, what: str, deadline_s: float = DEADLINE_S):
    """Poll ``condition()`` until it is truthy (returned) or the deadline passes (failure)."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"{what} within {deadline_s} s")


def gone(pid: int) -> bool:
    """The process has ended (a zombie waiting for init to reap it has ended too)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


SERVE = textwrap.dedent("""\
    import json, os, sys, time
    from unique_cube.inputs import stac_server
    from unique_cube.demo.serve import serve_world
    stac_server._PDEATHSIG = sys.argv[3] == "pdeathsig"
    with serve_world(sys.argv[1]) as server:
        watchdog = server._watchdog.pid if server._watchdog else None
        info = {"server": server.pid, "watchdog": watchdog, "files": server.hrefs}
        partial = sys.argv[2] + ".partial"
        with open(partial, "w") as out:
            json.dump(info, out)
        os.replace(partial, sys.argv[2])
        time.sleep(600)
""")


@pytest.mark.integration
@pytest.mark.parametrize("mode", ["pdeathsig", "watchdog"])
def test_a_killed_parent_takes_its_server_and_the_next_start_removes_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    if mode == "pdeathsig" and not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux's")
    world = tiny_world(tmp_path / "world")
    temp = tmp_path / "tmp"
    temp.mkdir()
    said = tmp_path / "server.json"
    parent = subprocess.Popen(
        [sys.executable, "-c", SERVE, str(world), str(said), mode],
        env={**os.environ, "TMPDIR": str(temp)},
    )
    try:
        until(lambda: said.exists() or parent.poll() is not None, "the server started")
        assert parent.poll() is None, f"the serving process exited with {parent.returncode}"
        info = json.loads(said.read_text())
        server = psutil.Process(info["server"])
        assert "serve" in server.cmdline() and server.ppid() == parent.pid
        folder = Path(info["files"][0]).parent
        assert folder.parent == temp and folder.name.startswith(f"unique-cube-stac-{parent.pid}.")
    finally:
        parent.kill()  # SIGKILL: no Python code of the parent runs
        parent.wait()
    until(lambda: gone(info["server"]), "the server died with its parent")
    if info["watchdog"] is not None:
        until(lambda: gone(info["watchdog"]), "the watchdog ended")
    assert folder.is_dir()  # nothing could remove it: the next start does

    # Beside it: the folder of a process that runs, and one of another host: both kept.
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"]) as alive:
        try:
            host = folder.name.split(".")[1].split("-")[0]  # this machine's tag
            running = temp / f"unique-cube-stac-{alive.pid}.{host}-x"
            other_host = temp / f"unique-cube-stac-{parent.pid}.00000000-x"
            running.mkdir()
            other_host.mkdir()
            monkeypatch.setattr(tempfile, "tempdir", str(temp))
            with serve_world(world) as again:
                assert requests.get(f"{again.url}/collections/tiny", timeout=10).ok
                assert not folder.exists()
                assert running.is_dir() and other_host.is_dir()
                own = Path(again.hrefs[0]).parent
                assert own.name.startswith(f"unique-cube-stac-{os.getpid()}.") and own.is_dir()
                assert remove_stale_folders(temp) == []  # its own folder is never stale
        finally:
            alive.kill()
    assert not own.exists()  # removed by its own exit, as before


@pytest.mark.integration
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_server_outlives_the_thread_that_started_it(tmp_path: Path) -> None:
    """PR_SET_PDEATHSIG fires when the forking *thread* ends: servers are forked by a thread
    that lives as long as the process, so a server started from a short-lived thread stays."""
    world = tiny_world(tmp_path / "world")
    files = [world / "stac" / "collections.json", world / "stac" / "tiny.json"]
    collections = json.loads(files[0].read_text())
    (world / "stac" / "collection.json").write_text(json.dumps(collections[0]))
    server = LocalStacServer([world / "stac" / "collection.json", files[1]])
    failed: list[BaseException] = []
    starter = threading.Thread(target=lambda: _start(server, failed))
    starter.start()
    starter.join()
    native = starter.native_id
    try:
        assert not failed and server.pid is not None
        until(lambda: not Path(f"/proc/self/task/{native}").exists(), "the thread ended")
        assert requests.get(f"{server.url}/collections/tiny/items", timeout=10).ok
        assert not gone(server.pid)
    finally:
        server.stop()


def test_folders_named_before_their_owner_are_removed_once_a_day_old(tmp_path: Path) -> None:
    old, new = tmp_path / "unique-cube-stac-k2j_9x1a", tmp_path / "unique-cube-stac-p0q8z7_w"
    for folder in (old, new):
        folder.mkdir()
        (folder / "hls2-l30.json").write_text("{}")
    two_days_ago = time.time() - 2 * 24 * 3600
    os.utime(old, (two_days_ago, two_days_ago))
    unrelated = tmp_path / "other-folder"
    unrelated.mkdir()
    os.utime(unrelated, (two_days_ago, two_days_ago))

    assert remove_stale_folders(tmp_path) == [old]
    assert not old.exists() and new.is_dir() and unrelated.is_dir()


def _start(server: LocalStacServer, failed: list[BaseException]) -> None:
    try:
        server.start()
    except BaseException as err:  # told to the test's thread
        failed.append(err)

"""Run a command with the release's Dask workers scaled up, and scale them to zero after it.

The chart mounts this file in the runner pod in operator mode with ``dask.scaleToZero``:

    python /opt/unique-cube/dask_workers.py \\
        --scale daskclusters/<cluster>=2 --scale daskworkergroups/<cluster>-gpu=1 \\
        --runners <label selector of the release's runner pods> --wait 900 \\
        -- unique-cube run /etc/unique-cube/pipeline.yaml --date yesterday

It patches the ``scale`` subresource of each Dask resource (the operator then starts the
worker pods), waits until that many workers joined the scheduler (``$DASK_SCHEDULER_ADDRESS``),
runs the command, and patches the replicas back to 0 when the command ends, fails or is
stopped (SIGTERM is passed on to it first) — unless another runner pod of the release is
still pending or running: that one scales them down when it ends. Standard library only
(and ``distributed``, which the image has), talking to the API server with the pod's
ServiceAccount token; the chart's Role allows exactly these calls.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import ssl
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence

ACCOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
DASK_API = "/apis/kubernetes.dask.org/v1"

Request = Callable[[str, str, dict | None], dict]


def api_request(method: str, path: str, body: dict | None = None) -> dict:
    """One call to the API server from inside a pod (its ServiceAccount token and CA)."""
    host = os.environ["KUBERNETES_SERVICE_HOST"]
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    with open(f"{ACCOUNT}/token") as token:
        headers = {"Authorization": f"Bearer {token.read().strip()}"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/merge-patch+json"
    request = urllib.request.Request(
        f"https://{host}:{port}{path}", data=data, headers=headers, method=method
    )
    context = ssl.create_default_context(cafile=f"{ACCOUNT}/ca.crt")
    with urllib.request.urlopen(request, context=context, timeout=30) as response:
        return json.loads(response.read() or b"{}")


def scale(request: Request, namespace: str, target: str, replicas: int) -> None:
    """``target``: ``daskclusters/<name>`` or ``daskworkergroups/<name>``."""
    resource, name = target.split("/", 1)
    path = f"{DASK_API}/namespaces/{namespace}/{resource}/{name}/scale"
    request("PATCH", path, {"spec": {"replicas": replicas}})


def other_runners(request: Request, namespace: str, selector: str, me: str) -> list[str]:
    """Runner pods of the release other than this one that are pending or running."""
    query = urllib.parse.urlencode({"labelSelector": selector})
    pods = request("GET", f"/api/v1/namespaces/{namespace}/pods?{query}", None)
    return [
        pod["metadata"]["name"]
        for pod in pods.get("items", [])
        if pod["metadata"]["name"] != me
        and pod.get("status", {}).get("phase") in ("Pending", "Running")
    ]


def wait_for_workers(count: int, timeout: float) -> None:
    """Until ``count`` workers joined the scheduler; a warning after ``timeout`` seconds."""
    from distributed import Client

    address = os.environ["DASK_SCHEDULER_ADDRESS"]
    try:
        with Client(address, timeout=60) as client:
            client.wait_for_workers(count, timeout=timeout)
    except (OSError, TimeoutError) as err:
        say(f"warning: {count} Dask workers did not join {address} in {timeout:g} s ({err}); "
            "starting anyway")  # fmt: skip


def say(line: str) -> None:
    print(f"dask_workers: {line}", file=sys.stderr, flush=True)


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="dask_workers.py", description=__doc__.split("\n")[0])
    parser.add_argument("--scale", action="append", default=[], metavar="RESOURCE/NAME=N")
    parser.add_argument("--runners", required=True, help="label selector of the runner pods")
    parser.add_argument("--wait", type=float, default=900.0, help="seconds to wait for workers")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.command[:1] == ["--"]:
        args.command = args.command[1:]
    if not args.command:
        parser.error("no command after --")
    args.targets = {}
    for item in args.scale:
        target, _, replicas = item.rpartition("=")
        if not target or not replicas.isdigit():
            parser.error(f"--scale {item}: expected RESOURCE/NAME=N")
        args.targets[target] = int(replicas)
    return args


def main(
    argv: Sequence[str] | None = None,
    *,
    request: Request = api_request,
    wait: Callable[[int, float], None] = wait_for_workers,
    start: Callable[[list[str]], subprocess.Popen] = subprocess.Popen,
) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    if os.path.exists(f"{ACCOUNT}/namespace"):
        with open(f"{ACCOUNT}/namespace") as file:
            namespace = file.read().strip()
    else:
        namespace = os.environ["POD_NAMESPACE"]
    me = os.environ.get("HOSTNAME", "")  # the pod's name
    for target, replicas in args.targets.items():
        say(f"scaling {target} to {replicas}")
        scale(request, namespace, target, replicas)
    try:
        wait(sum(args.targets.values()), args.wait)
        child = start(args.command)
        # Stopped at activeDeadlineSeconds or deleted: stop the run, then scale down.
        signal.signal(signal.SIGTERM, lambda signum, frame: child.send_signal(signum))
        code = child.wait()
    finally:
        running = other_runners(request, namespace, args.runners, me)
        if running:
            say(f"leaving the workers up for {', '.join(running)}")
        else:
            for target in args.targets:
                say(f"scaling {target} to 0")
                scale(request, namespace, target, 0)
    return code


if __name__ == "__main__":
    sys.exit(main())

"""A multi-node Ray cluster on one machine: a head and worker nodes, each its own `ray start --block`.

What the cluster tests and the scaling benchmark run against, and a way to try cluster mode (`RAY_ADDRESS`,
`ray job submit`) without Kubernetes. Each node runs in its own process session, so one node can be
killed whole (raylet and its workers) as a lost machine would be, without touching any other Ray on
the machine (`ray stop` would stop them all).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))
# Token authentication is for clusters reachable by others; this one listens on one machine only.
ENV = {"RAY_AUTH_MODE": "disabled", "RAY_DEDUP_LOGS": "1", "RAY_USAGE_STATS_ENABLED": "0"}
_RESOURCES = "cluster resources: "  # marks the line `resources` reads among whatever else a driver prints


def printed_resources(stdout: str) -> dict:
    """The resources a `resources` driver printed, found by their line's mark: Ray may print its own lines
    around it (on a busy machine: "raylet has lagging heartbeats ..."); {} when there is none."""
    found = [line[len(_RESOURCES):] for line in stdout.splitlines() if line.startswith(_RESOURCES)]
    return json.loads(found[-1]) if found else {}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalCluster:
    """`with LocalCluster(head_cpus=1) as c: c.add_node(cpus=1); ...` -- `c.address` for RAY_ADDRESS."""

    def __init__(self, head_cpus: int = 1, dashboard: bool = False, env: dict | None = None):
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.dashboard_port = _free_port() if dashboard else None
        self.env = {**os.environ, **ENV, **(env or {})}
        self.temp_dir = tempfile.mkdtemp(prefix="pmray-")  # short: Ray's socket paths must stay under 107 bytes
        self.nodes: list[subprocess.Popen] = []
        self.tags: dict[int, str] = {}  # a worker node's pid -> the resource only it has
        dash = [f"--include-dashboard=true", f"--dashboard-port={self.dashboard_port}"] if dashboard else ["--include-dashboard=false"]
        self._start(["--head", f"--port={self.port}", f"--temp-dir={self.temp_dir}", *dash], head_cpus, {}, "head")
        self.wait_for("memory")

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _start(self, args: list[str], cpus: int, resources: dict, name: str) -> subprocess.Popen:
        log = open(os.path.join(self.temp_dir, f"{name}-{len(self.nodes)}.log"), "wb")
        node = subprocess.Popen(
            [RAY, "start", "--block", f"--num-cpus={cpus}", f"--resources={json.dumps(resources)}", "--dashboard-agent-listen-port=0",
             "--disable-usage-stats", *args],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.nodes.append(node)
        return node

    def add_node(self, cpus: int = 1, resources: dict | None = None, wait: bool = True) -> subprocess.Popen:
        """Join a worker node with `cpus` CPUs (and custom `resources`) to the cluster; `wait`: until it is
        registered (found by a resource of its own: CPU totals still count a killed node for a while)."""
        tag = f"localcluster_node_{len(self.nodes)}"
        node = self._start([f"--address={self.address}"], cpus, {**(resources or {}), tag: 1}, "worker")
        self.tags[node.pid] = tag
        if wait:
            self.wait_for(tag)
        return node

    def kill(self, node: subprocess.Popen) -> None:
        """Kill a node whole (SIGKILL to its session: `ray start`, raylet, workers), as a lost machine."""
        try:
            os.killpg(node.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        node.wait(30)

    def resources(self) -> dict:
        """The cluster's resources now, asked from a separate driver (this process may run its own Ray)."""
        code = (f"import json, ray; ray.init(address={self.address!r}, logging_level='ERROR', log_to_driver=False); "
                f"print({_RESOURCES!r} + json.dumps(ray.cluster_resources()))")
        done = subprocess.run([sys.executable, "-c", code], env=self.env, capture_output=True, text=True, timeout=120)
        return printed_resources(done.stdout) if done.returncode == 0 else {}

    def wait_for(self, resource: str, timeout: float = 120.0) -> None:
        """Until the cluster lists `resource` (a node's own tag; "memory" for the head)."""
        deadline = time.monotonic() + timeout
        while resource not in self.resources():
            if time.monotonic() > deadline or self.nodes[0].poll() is not None:
                raise RuntimeError(f"the local Ray cluster did not show {resource}; logs in {self.temp_dir}")
            time.sleep(0.5)

    def stop(self) -> None:
        for node in reversed(self.nodes):
            self.kill(node)
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

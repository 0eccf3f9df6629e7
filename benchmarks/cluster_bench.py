"""Scaling over Ray nodes: the same Syn4Removal work on a local cluster of 1, then 2 worker nodes.

A real multi-node cluster on this machine (pipelines.local_cluster: `ray start --head` with 0 CPUs, as
on KubeRay, plus worker nodes joined to it, each pinned to its own core and given --cpus-per-node CPUs).
The CLI runs as a cluster client (RAY_ADDRESS), as a data engineer would launch it; after a warm-up job
on the bundled sample (workers started, imports done) it runs the same SA-1B-sized inputs as
syn4removal_bench.py. The bound, measured in the same run: the 1-node rate times the node count, i.e.
perfect scaling; the ratio printed is the per-node efficiency. On a 2-core machine the head's services
and the driver share the two workers' cores, so the efficiency here is a floor.

    .venv/bin/python benchmarks/cluster_bench.py [--images 160] [--nodes 1 2] [--workdir /tmp/pairmine-bench]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from syn4removal_bench import make_inputs

from pairmine import dataset
from pairmine.pipelines.local_cluster import LocalCluster

VENV_BIN = Path(sys.executable).parent
SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "sa1b"


def cli(cluster: LocalCluster, inputs: Path, output: Path) -> dict:
    """One pipeline run through the CLI against the cluster; its summary (from _SUCCESS)."""
    shutil.rmtree(output, ignore_errors=True)
    args = [str(VENV_BIN / "pairmine"), "syn4removal", "--input", str(inputs), "--output", str(output), "--no-progress",
            "--set", "shards.max_samples=100"]
    subprocess.run(args, env={**cluster.env, "RAY_ADDRESS": cluster.address}, check=True, capture_output=True, timeout=3600)
    return dataset.read_success(str(output))


def on_nodes(nodes: int, cpus: int, inputs: Path, workdir: Path) -> dict:
    cores = sorted(os.sched_getaffinity(0))
    with LocalCluster(head_cpus=0, env={"PATH": f"{VENV_BIN}:{os.environ['PATH']}"}) as cluster:
        for i in range(nodes):
            os.sched_setaffinity(0, [cores[i % len(cores)]])  # the node's processes inherit it
            try:
                cluster.add_node(cpus=cpus)
            finally:
                os.sched_setaffinity(0, cores)
        cli(cluster, SAMPLE, workdir / f"warmup-{nodes}")
        summary = cli(cluster, inputs, workdir / f"out-{nodes}")
    return {"samples": summary["written"]["samples"], "wall_s": summary["wall_seconds"],
            "samples_per_s": round(summary["written"]["samples"] / summary["wall_seconds"], 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=160)
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--cpus-per-node", type=int, default=1)
    parser.add_argument("--workdir", default="/tmp/pairmine-bench")
    args = parser.parse_args()
    workdir = Path(args.workdir)
    inputs = make_inputs(workdir, args.images)
    results = {n: on_nodes(n, args.cpus_per_node, inputs, workdir) for n in args.nodes}
    base = results[args.nodes[0]]
    assert len({r["samples"] for r in results.values()}) == 1, f"runs disagree: {results}"
    print(json.dumps(results, indent=2))
    for n, r in results.items():
        bound = base["samples_per_s"] * n / args.nodes[0]
        print(f"{n} node(s) x {args.cpus_per_node} CPU: {r['samples_per_s']:.2f} triplets/s; perfect scaling {bound:.2f}/s; "
              f"per-node efficiency {r['samples_per_s'] / bound:.2f}")


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    print(f"({time.perf_counter() - start:.0f} s)")

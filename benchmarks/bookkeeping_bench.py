"""The cost of incremental bookkeeping, and of `pairmine report`, on a large output.

An output whose manifest lists --done shards (one SA-1B tar each) and an input folder of --done + --new
tars: the situation of a scheduled run after new data landed. Measured, on local disk or (--s3) on a
moto S3 server on 127.0.0.1:

- bookkeeping: what a run does before its first task can start: discover the inputs, read the manifest
  and plan the pending units (`prepare_run`, as `--dry-run` does), and look for a killed run's orphans
  (`remove_orphans`);
- its bound, measured in the same run: listing the input and manifest folders and reading every manifest
  file's bytes, what a plan over this output would read without the `_index/` cache; printed as a ratio;
- `pairmine report` on the same output (manifest, rejects, runs, and the sampled members only).

The shards are copies of one real shard written by Syn4Removal on the bundled sample (samples/sa1b); the
inputs are not read before the first task, so they are small placeholder tars.

    .venv/bin/python benchmarks/bookkeeping_bench.py [--done 10000] [--new 1000] [--s3]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import io
import os
import shutil
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa

from pairmine import dataset, storage
from pairmine.pipelines.report import collect, render
from pairmine.pipelines.run import prepare_run, run
from pairmine.pipelines.syn4removal import SYN4REMOVAL
from pairmine.pipelines.writer import remove_orphans

SAMPLES = Path(__file__).resolve().parents[1] / "samples" / "sa1b"


@contextlib.contextmanager
def s3_root(enabled: bool, workdir: Path):
    """Where the output and inputs go: a folder, or a bucket on a moto server started here."""
    if not enabled:
        shutil.rmtree(workdir / "big", ignore_errors=True)
        yield str(workdir / "big")
        return
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update(AWS_ENDPOINT_URL=f"http://{host}:{port}", AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_REGION="us-east-1")
    boto3.client("s3").create_bucket(Bucket="bench")
    try:
        yield "s3://bench/big"
    finally:
        server.stop()


def seed_shard(workdir: Path) -> tuple[bytes, dict, list[bytes]]:
    """One real shard (bytes), its manifest row and its rejects files, from a run on the bundled sample."""
    out = workdir / "seed"
    if not (out / dataset.SUCCESS).exists():
        shutil.rmtree(out, ignore_errors=True)
        run(SYN4REMOVAL, [str(SAMPLES)], str(out), progress_bars=False)
    row = max(dataset.read_manifest(str(out)).to_pylist(), key=lambda r: r["samples"])
    rejects = [p.read_bytes() for p in sorted((out / dataset.REJECTS).glob("*.parquet"))[:1]]
    return (out / row["shard"]).read_bytes(), row, rejects


def placeholder_tar(name: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo(f"{name}.json")
        tar.addfile(info, io.BytesIO(b""))
    return buffer.getvalue()


def build(root: str, done: int, new: int, shard: bytes, row: dict, rejects: list[bytes]) -> tuple[str, str]:
    """The inputs folder and the output: `done` committed shards covering the first `done` input tars."""
    inputs, output = storage.join(root, "inputs"), storage.join(root, "output")
    digest = row["config_hash"]
    created = datetime.datetime.now(datetime.timezone.utc)

    def one(i: int) -> None:
        unit = f"sa_{i:06d}.tar"
        storage.write_bytes(storage.join(inputs, unit), placeholder_tar(unit))
        if i >= done:
            return
        name = f"syn4removal-bench-{i:06d}"
        storage.write_bytes(storage.join(output, dataset.SHARDS, f"{name}.tar"), shard)
        manifest_row = row | {"shard": f"{dataset.SHARDS}/{name}.tar", "run": f"bench{i // 500:04d}", "created": created,
                              "keys": [f"{k}-{i}" for k in row["keys"]],
                              "inputs": [{"unit": unit, "ids": [f"{unit}/sa_{i}"]}], "unit_totals": [{"unit": unit, "total": 1}]}
        table = pa.Table.from_pylist([manifest_row], schema=dataset.MANIFEST_SCHEMA)
        storage.write_bytes(storage.join(output, dataset.MANIFEST, f"{name}.parquet"), dataset.to_parquet(table))
        for data in rejects:
            storage.write_bytes(storage.join(output, dataset.REJECTS, f"{name}.parquet"), data)

    with ThreadPoolExecutor(32) as pool:
        list(pool.map(one, range(done + new)))
    assert hashlib.sha256(shard).hexdigest() == row["sha256"]
    return inputs, output


def bound(inputs: str, output: str) -> float:
    """Seconds to list the inputs and the manifest and read every manifest file's bytes (32 threads)."""
    start = time.perf_counter()
    storage.list_dir(inputs)
    files = dataset.parquet_files(output, dataset.MANIFEST)
    with ThreadPoolExecutor(32) as pool:
        list(pool.map(storage.read_bytes, files))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--done", type=int, default=10_000, help="committed shards (one input tar each)")
    parser.add_argument("--new", type=int, default=1_000, help="input tars not yet in the manifest")
    parser.add_argument("--s3", action="store_true", help="inputs and output on a moto S3 server on 127.0.0.1")
    parser.add_argument("--workdir", default="/tmp/pairmine-bench")
    args = parser.parse_args()
    workdir = Path(args.workdir)
    shard, row, rejects = seed_shard(workdir)
    with s3_root(args.s3, workdir) as root:
        start = time.perf_counter()
        inputs, output = build(root, args.done, args.new, shard, row, rejects)
        print(f"built {args.done + args.new:,} input tars and {args.done:,} committed shards in {root} "
              f"({time.perf_counter() - start:.0f} s)")
        start = time.perf_counter()
        dataset.write_index(output)  # what the earlier runs' ends left: the manifest and rejects cached in _index/
        print(f"index of {args.done:,} manifest and rejects files written in {time.perf_counter() - start:.1f} s "
              "(each run's end adds only its own files)")
        bound_s = bound(inputs, output)
        start = time.perf_counter()
        _, _, units, progress, pending = prepare_run(SYN4REMOVAL, [inputs], output, None, [], create=False)
        plan_s = time.perf_counter() - start
        start = time.perf_counter()
        orphans = remove_orphans(output)
        orphans_s = time.perf_counter() - start
        assert len(units) == args.done + args.new and len(pending) == args.new and orphans == 0, (len(units), len(pending), orphans)
        start = time.perf_counter()
        page = render(collect(output))
        report_s = time.perf_counter() - start
    bookkeeping_s = plan_s + orphans_s
    print(f"bound (list inputs + manifest, read {args.done:,} manifest files): {bound_s:.2f} s")
    print(f"bookkeeping before the first task: {bookkeeping_s:.2f} s (discover + plan {plan_s:.2f} s, orphan check {orphans_s:.2f} s)"
          f" = {bookkeeping_s / bound_s:.2f}x the bound; {len(pending):,} of {len(units):,} units pending")
    print(f"pairmine report on {args.done:,} shards: {report_s:.2f} s ({len(page) / 2**20:.1f} MiB page)")


if __name__ == "__main__":
    main()

"""One run at a time per output: concurrent runs take turns (or stop with exit 3), a crashed run's lease is taken over."""

from __future__ import annotations

import json
import socket
import subprocess
import time

import pytest
from helpers import PAIRMINE, cli
from sample_inputs import TESTDATA, write_loose_sa1b

from pairmine import storage
from pairmine.dataset import Reject
from pairmine.pipelines import lease as lease_module
from pairmine.pipelines.lease import LEASE, Lease, LeaseLost, OutputBusy, pid_space
from pairmine.pipelines.run import plan_only
from pairmine.pipelines.syn4removal import SYN4REMOVAL
from pairmine.pipelines.verify import verify


@pytest.fixture(params=["local", "s3"])
def output(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "out")
    return f"s3://{request.getfixturevalue('s3_bucket')}/out"


def test_a_held_lease_stops_a_second_holder_until_released(output, caplog):
    first = Lease(output, "run-a")
    first.acquire()
    holder = json.loads(storage.read_bytes(storage.join(output, LEASE)))
    assert holder["run"] == "run-a" and holder["heartbeat"] > 0
    with caplog.at_level("INFO", "pairmine"), pytest.raises(OutputBusy, match=r"is busy: run run-a on .* \(pid \d+\), last heartbeat"):
        Lease(output, "run-b").acquire(wait=0.5)
    assert [r.getMessage() for r in caplog.records if "waiting up to" in r.getMessage()], "--wait says whom it waits for"
    plan = plan_only(SYN4REMOVAL, [str(TESTDATA / "sa1b" / "sa_000000.tar")], output, None, [])
    assert plan["lease"]["run"] == "run-a", "a dry run says the output is held"
    first.release()
    assert not storage.exists(storage.join(output, LEASE))
    with Lease(output, "run-b") as second:
        second.acquire()
        assert json.loads(storage.read_bytes(storage.join(output, LEASE)))["run"] == "run-b"


def test_a_crashed_runs_lease_is_taken_over(output):
    stale = {"run": "crashed", "host": "elsewhere", "pid": 1, "token": "x", "heartbeat": time.time() - 600, "expires_after_s": 120}
    storage.write_bytes(storage.join(output, LEASE), json.dumps(stale).encode())
    with Lease(output, "fresh") as lease:
        lease.acquire()
        assert json.loads(storage.read_bytes(storage.join(output, LEASE)))["run"] == "fresh"


def test_two_waiters_taking_over_one_stale_lease_leave_the_first_its_lease(output, monkeypatch):
    """Both waiters find the crashed run's lease stale; the first takes it over before the second removes it. The
    second's removal is conditional on the stale version, so the first's fresh lease stays (it was deleted, and the
    first run then stopped at its next commit)."""
    uri = storage.join(output, LEASE)
    stale = {"run": "crashed", "host": "elsewhere", "pid": 1, "token": "x", "heartbeat": time.time() - 600, "expires_after_s": 120}
    storage.write_bytes(uri, json.dumps(stale).encode())
    first, real_delete_if = Lease(output, "first"), storage.delete_if

    def first_takes_over_meanwhile(uri, version, calls=[]):
        if not calls:
            calls.append(version)
            first.acquire()  # between the second's verdict on the stale lease and its removal
        return real_delete_if(uri, version)

    monkeypatch.setattr(lease_module.storage, "delete_if", first_takes_over_meanwhile)
    with pytest.raises(OutputBusy, match="is busy: run first"):
        Lease(output, "second").acquire()
    assert json.loads(storage.read_bytes(uri))["token"] == first.token
    first.release()
    assert not storage.exists(uri)


def test_a_stalled_run_neither_renews_nor_gives_back_a_lease_taken_over(output):
    """A run that missed its heartbeats while another took over (a frozen VM; a renewal that hung past the
    expiry) must not write its heartbeat over the taker's lease, nor delete it when it ends: its updates are
    compare-and-swap on the version it last wrote."""
    uri = storage.join(output, LEASE)
    stalled = Lease(output, "stalled", seconds=600)
    stalled.acquire()
    taker = {"run": "taker", "host": "elsewhere", "pid": 1, "token": "theirs", "heartbeat": time.time(), "expires_after_s": 120}
    storage.write_bytes(uri, json.dumps(taker).encode())  # taken over between two of the stalled run's renewals
    assert not stalled._swap(stalled._body())
    stalled.release()
    assert json.loads(storage.read_bytes(uri))["token"] == "theirs"
    with pytest.raises(LeaseLost, match="lost its lease to run taker"):
        lease_module.confirm(output, stalled.token)


def test_conditional_updates_compare_the_version(output):
    uri = storage.join(output, "obj")
    assert storage.read_versioned(uri) is None
    storage.write_bytes(uri, b"one")
    data, version = storage.read_versioned(uri)
    assert data == b"one"
    newer = storage.replace_if(uri, b"two", version)
    assert newer and newer != version and storage.read_bytes(uri) == b"two"
    assert storage.replace_if(uri, b"three", version) is None and storage.read_bytes(uri) == b"two", "an old version writes nothing"
    assert not storage.delete_if(uri, version) and storage.exists(uri), "nor deletes"
    assert storage.delete_if(uri, newer) and not storage.exists(uri)
    assert storage.delete_if(uri, newer), "gone already counts as deleted"
    assert storage.replace_if(uri, b"four", newer) is None and not storage.exists(uri), "a replace never creates"


def test_an_unreadable_lease_is_waited_for_while_young_and_taken_over_when_old(output):
    """A crash or a full disk between a lease's creation and its write leaves it empty: it must not block forever."""
    storage.write_bytes(storage.join(output, LEASE), b"")
    with pytest.raises(OutputBusy, match="unreadable _LEASE"):
        Lease(output, "early", seconds=120).acquire()  # young: it may be one being written now
    time.sleep(0.3)
    with Lease(output, "later", seconds=1.2) as lease:  # old for this expiry (0.1 s)
        lease.acquire()
        assert json.loads(storage.read_bytes(storage.join(output, LEASE)))["run"] == "later"


def test_a_lease_that_cannot_be_read_is_neither_taken_over_nor_lost(tmp_path, monkeypatch):
    """A failed read (the network, a permission, NFS's ESTALE) says nothing about the holder: a waiter must not
    delete a live run's lease for it, nor a committing run take it for lost."""
    import os

    out = tmp_path / "out"
    out.mkdir()
    (out / LEASE).write_text(json.dumps({"run": "live", "token": "theirs", "heartbeat": time.time(), "expires_after_s": 120}))
    os.utime(out / LEASE, (time.time() - 600, time.time() - 600))  # old by its mtime, as a lease renewed in place can look
    monkeypatch.setattr(lease_module.time, "sleep", lambda seconds: None)

    def refused(uri):
        raise PermissionError(13, "Permission denied", uri)

    monkeypatch.setattr(lease_module.storage, "read_bytes", refused)
    with pytest.raises(storage.StorageError, match="cannot read the lease"):
        Lease(str(out), "waiter", seconds=1.2).acquire()
    with pytest.raises(storage.StorageError, match="cannot read the lease"):
        lease_module.confirm(str(out), "theirs")
    assert json.loads((out / LEASE).read_text())["run"] == "live"


def test_a_run_that_lost_its_lease_commits_nothing_more(tmp_path, monkeypatch):
    """A run taken for crashed (it stalled past the expiry) finds another run's lease at its next commit: it stops
    there, and removes what it wrote for that commit, so the two never commit side by side."""
    import pyarrow as pa

    from pairmine.operators.stats import Stats
    from pairmine.errors import cause_of
    from pairmine.pipelines.config import ShardParams
    from pairmine.pipelines.writer import ShardSink, pack_group

    out = tmp_path / "out"
    (out / LEASE).parent.mkdir()
    (out / LEASE).write_text(json.dumps({"run": "taker", "host": "elsewhere", "token": "theirs"}))
    sink = ShardSink(str(out), "test", "r", "h", "0", ShardParams(), 1, lease="mine")
    row = pack_group("u", ["a"], 1, [{"__key__": "k", "txt": b"x"}], [Reject("u/b", "compose", "no_position", "d")], Stats())

    class Context:
        task_idx = 0

    with pytest.raises(LeaseLost, match="lost its lease to run taker") as lost:
        sink.write([pa.Table.from_pylist([row])], Context())
    assert lost.value.exit_code == 3 and len(str(lost.value).splitlines()) == 1
    assert not [p for p in out.rglob("*") if p.is_file() and p.name != LEASE], "nothing of the lost commit stays"
    (out / LEASE).write_text(json.dumps({"run": "r", "token": "mine"}))  # its own again: the commit goes through
    sink.write([pa.Table.from_pylist([row])], Context())
    assert len(list((out / "manifest").glob("*.parquet"))) == 1
    committed = {p for p in out.rglob("*") if p.is_file()}

    def taken_after_the_upload(output, token, calls=[]):  # the lease goes while the shard and rejects upload
        calls.append(token)
        if len(calls) > 1:
            raise LeaseLost("lost its lease to run taker")

    class NextTask:
        task_idx = 1

    monkeypatch.setattr(lease_module, "confirm", taken_after_the_upload)
    with pytest.raises(LeaseLost):
        sink.write([pa.Table.from_pylist([row])], NextTask())
    assert {p for p in out.rglob("*") if p.is_file()} == committed, "the shard and rejects of the lost commit are removed"
    wrapped = type("RayTaskError(LeaseLost)", (Exception,), {"cause": lost.value})("ray::Write() traceback ...")
    assert cause_of(wrapped) is lost.value  # raised in a Ray task: the CLI prints the error, not Ray's traceback


def test_a_killed_process_on_this_host_frees_its_lease_at_once(tmp_path):
    """A gone pid frees a fresh lease only when it was a pid of this host's pid space: another container with the
    same hostname (another pid namespace), or a lease that does not say, waits for the expiry."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    alive = subprocess.Popen(["sleep", "30"])
    here = pid_space()
    assert here and here.count("/") == 1
    try:
        for pid, space, free in ((gone.pid, here, True), (alive.pid, here, False), (gone.pid, here.split("/")[0] + "/pid:[1]", False), (gone.pid, None, False)):
            holder = {"run": "killed", "host": socket.gethostname(), "pid_space": space, "pid": pid, "token": "x", "heartbeat": time.time(), "expires_after_s": 120}
            (tmp_path / LEASE).write_text(json.dumps(holder))
            lease = Lease(str(tmp_path), "rerun")
            if free:
                lease.acquire()
                assert json.loads((tmp_path / LEASE).read_text())["run"] == "rerun"
                lease.release()
            else:
                with pytest.raises(OutputBusy, match="run killed"):
                    lease.acquire()
    finally:
        alive.kill()


def test_the_lease_is_renewed_while_held(tmp_path):
    lease = Lease(str(tmp_path), "beating", seconds=0.4)
    lease.acquire()
    first = json.loads((tmp_path / LEASE).read_text())["heartbeat"]
    time.sleep(0.35)
    assert json.loads((tmp_path / LEASE).read_text())["heartbeat"] > first
    lease.release()


def test_two_runs_at_once_take_turns_and_nothing_is_lost_or_written_twice(tmp_path):
    loose = tmp_path / "loose"
    write_loose_sa1b(loose, 8)
    out = tmp_path / "out"
    args = ["syn4removal", "--input", str(loose), "--output", str(out), "--no-progress", "--set", "group_size=2"]
    runs = [subprocess.Popen([PAIRMINE, *args, "--wait", "600"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outcomes = [(r.wait(600), r.stdout.read()) for r in runs]
    assert [code for code, _ in outcomes] == [0, 0], outcomes
    assert sorted("nothing to do" in text for _, text in outcomes) == [False, True], "the second found the first's work done"
    report = verify(str(out), [str(loose)])
    assert not report.problems and report.inputs["ids"] == 8
    busy_holder = subprocess.Popen([PAIRMINE, *args, "--set", "seed=1", "--output", str(tmp_path / "other")], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (tmp_path / "other" / LEASE).exists() and busy_holder.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    refused = cli(*args, "--set", "seed=1", "--output", str(tmp_path / "other"), check=False, timeout=120)
    busy_holder.wait(600)
    assert refused.returncode == 3 and "is busy: run" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    assert len(list((tmp_path / "other" / "logs").glob("*.log"))) == 1, "a run turned away leaves no log (a retrying scheduler piled them up)"

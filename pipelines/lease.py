"""One run at a time per output: a lease object ``_LEASE`` with its owner, a heartbeat and an expiry.

A run takes the lease before it touches the output (it removes orphans, plans against the manifest and
writes shards), renews it every ``LEASE_SECONDS / 4`` from a driver thread, and gives it back at the
end. A second run on the same output finds the lease held and waits (``--wait``) or stops with exit
code 3 ("output busy": a scheduler retries later); a lease whose heartbeat is older than its expiry
belongs to a crashed run and is taken over (at once when that run's process, on this host and in this
pid namespace, is gone). So concurrent runs never delete or duplicate each other's work: they take turns,
each doing only what the manifest says is left. A run taken for crashed that is in fact alive (it stalled)
learns so at its next commit (``confirm``) and stops, its uncommitted work left to the run that took over.
Every update after the creation (renewal, takeover, release) is compare-and-swap on the lease's version
(``storage.replace_if`` / ``delete_if``), so no run writes over or removes a lease it did not last see.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time

import pyarrow.fs as pafs

from .. import storage
from ..errors import UserError

log = logging.getLogger("pairmine")
LEASE = "_LEASE"
LEASE_SECONDS = 120.0  # a lease not renewed for this long is a crashed run's
NO_VERSION = '"' + "0" * 32 + '"'  # an S3 ETag no object has: a put conditional on it must be refused


class OutputBusy(UserError):
    """Another live run holds the output; exit code 3 (retry later)."""

    exit_code = 3


class LeaseLost(OutputBusy):
    """This run was taken for crashed and another took the output over: it stops committing; exit code 3."""


class _Unreadable(dict):
    """The content of a lease object that holds no JSON object (empty: a crash between its creation and its write)."""


def _read(uri: str, attempts: int = 4) -> tuple[dict | None, str | None]:
    """A lease's content and version (``storage.read_versioned``); (None, None) when there is none; an empty
    `_Unreadable` when it holds no JSON object. A read that fails (the network, a permission, NFS's ESTALE) is
    retried, then raised: it is never a verdict on the lease, so neither taken for a dead run's nor for a lost one."""
    for attempt in range(attempts):
        try:
            found = storage.read_versioned(uri)
            break
        except FileNotFoundError:
            return None, None
        except OSError as exc:
            if attempt == attempts - 1:
                raise storage.StorageError(f"cannot read the lease {uri}: {storage.first_line(exc)}") from None
            time.sleep(0.5 * 2**attempt)
    if found is None:
        return None, None
    data, version = found
    try:
        doc = json.loads(data)
    except ValueError:
        return _Unreadable(), version
    return (doc if isinstance(doc, dict) else _Unreadable()), version


def confirm(output: str, token: str) -> None:
    """Raise LeaseLost unless the run of `token` still holds the output's lease. The writer checks this before
    each commit, so a run that stalled past its expiry (a frozen VM, a partition) never commits beside the run
    that took over: each commit of the two is then under a lease its run held when it checked."""
    holder, _ = _read(storage.join(output, LEASE))
    if not holder or holder.get("token") != token:
        taker = f"run {holder.get('run')} on {holder.get('host')}" if holder else "no run (the lease is gone or unreadable)"
        raise LeaseLost(f"{output}: this run lost its lease to {taker}, having missed its heartbeats; it stopped committing, "
                        "and a rerun continues from what was committed")


def holder_of(output: str) -> dict | None:
    """Who holds the output's lease now (its run, host, pid, last heartbeat), or None; for ``--dry-run``."""
    holder, _ = _read(storage.join(output, LEASE))
    return None if holder is None else {k: holder.get(k) for k in ("run", "host", "pid", "heartbeat")}


def _unreadable_stale(uri: str, seconds: float) -> str | None:
    """Why an unreadable lease (empty, not JSON: a crash or a full disk between its creation and its write) is
    dead, or None while it may be one being written now: it is judged by its age."""
    found = storage.info(uri)
    if found.mtime is None or found.type == pafs.FileType.NotFound:
        return None
    age = time.time() - found.mtime.timestamp()
    return f"it is unreadable (empty or not JSON) and {age:.0f} s old" if age > seconds / 12 else None


def _stale(holder: dict, seconds: float) -> str | None:
    """Why the holder's lease is a crashed run's, or None while it may be alive."""
    if _dead_here(holder):
        return "its process is gone"
    silent = time.time() - holder.get("heartbeat", 0)
    return f"no heartbeat for {silent:.0f} s" if silent > holder.get("expires_after_s", seconds) else None


def pid_space() -> str:
    """Which processes this one's pids name: the kernel's boot id and this pid namespace. Two containers may share a
    hostname (or run `--network host`) while a pid means a different process in each. "" where Linux's /proc is not
    (macOS: no pid namespaces, so the hostname tells)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as boot:
            return f"{boot.read().strip()}/{os.readlink('/proc/self/ns/pid')}"
    except OSError:
        return ""


def _dead_here(holder: dict) -> bool:
    """The holder ran in this host's pid space and its process is gone (killed): its lease is stale now, not after
    expiry. A holder elsewhere (another hostname or pid space, or one that did not say), or an unknown or live pid,
    waits for the expiry."""
    here = (socket.gethostname(), pid_space())
    if (holder.get("host"), holder.get("pid_space")) != here or not isinstance(holder.get("pid"), int) or holder["pid"] == os.getpid():
        return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists but is not ours to signal
        return False
    return False


class Lease:
    def __init__(self, output: str, run_id: str, seconds: float = LEASE_SECONDS):
        self.output, self.uri = output, storage.join(output, LEASE)
        self.seconds = seconds
        self.owner = {"run": run_id, "host": socket.gethostname(), "pid_space": pid_space(), "pid": os.getpid(), "token": secrets.token_hex(8)}
        self._version: str | None = None  # of the lease as this run last wrote it: what its updates compare against
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def token(self) -> str:
        """What the writer's commits check (``confirm``)."""
        return self.owner["token"]

    def _body(self) -> bytes:
        return json.dumps(self.owner | {"heartbeat": time.time(), "expires_after_s": self.seconds}).encode()

    def _holder(self) -> dict | None:
        return _read(self.uri)[0]

    def acquire(self, wait: float = 0.0) -> None:
        """Take the lease, waiting up to `wait` seconds for a live holder to finish; OutputBusy otherwise."""
        deadline, said = time.monotonic() + wait, False
        while True:
            storage.create_exclusive(self.uri, self._body())
            holder, version = _read(self.uri)  # ours: created now, or by a first attempt whose answer was lost and retried
            if holder is None:
                continue  # given back between our create and our read
            if holder.get("token") == self.owner["token"]:
                self._version = version
                break
            why = _unreadable_stale(self.uri, self.seconds) if isinstance(holder, _Unreadable) else _stale(holder, self.seconds)
            if why:
                log.warning("taking over the lease of run %s (%s pid %s): %s", holder.get("run"), holder.get("host"), holder.get("pid"), why)
                storage.delete_if(self.uri, version)  # only that stale version: a waiter that took it over first keeps its lease
                continue
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(holder.get("heartbeat", 0))) if holder else "?"
            who = (f"run {holder.get('run')} on {holder.get('host')} (pid {holder.get('pid')}), last heartbeat {since} UTC" if holder
                   else f"a lease being written, or an unreadable {LEASE} (taken over when {self.seconds / 12:.0f} s old)")
            if time.monotonic() >= deadline:
                raise OutputBusy(f"{self.output} is busy: {who}; retry later, or pass --wait SECONDS")
            if not said:
                log.info("%s is busy: %s; waiting up to %.0f s", self.output, who, deadline - time.monotonic())
                said = True
            time.sleep(min(2.0, max(0.1, deadline - time.monotonic())))
        if storage.is_s3(self.uri):
            self._check_conditional_writes()
        self._thread = threading.Thread(target=self._renew, name="pairmine-lease", daemon=True)
        self._thread.start()

    def _check_conditional_writes(self) -> None:
        """Warn when the S3 store ignores conditional writes (S3-compatible stores that predate them), tried on a
        probe object of this run's beside the lease: a second create-if-absent and a put conditional on a version it
        never had must both be refused. Without them two runs can both take the lease, and only the writer's check
        before each commit keeps them from committing side by side."""
        probe = f"{self.uri}.probe-{self.token}"
        try:
            storage.create_exclusive(probe, b"1")
            ignored = [header for header, refused in (("If-None-Match", not storage.create_exclusive(probe, b"2")),
                                                      ("If-Match", storage.replace_if(probe, b"3", NO_VERSION) is None)) if not refused]
            storage.delete(probe)
        except (OSError, storage.StorageError) as exc:  # the lease's own updates will meet it too, and say so
            log.warning("could not test whether the S3 store of %s honours conditional writes: %s", self.output, storage.first_line(exc))
            return
        if ignored:
            log.warning("the S3 store of %s ignores conditional writes (%s): two runs started together can both take its lease, "
                        "and are then kept apart only by the check before each commit; do not start overlapping runs on it",
                        self.output, " and ".join(ignored))

    def _swap(self, data: bytes | None) -> bool:
        """Write `data` (None: delete) only over this run's own lease, compare-and-swap on its version: a run that
        took the lease over in the meantime keeps it. False when the lease is another run's, or gone."""
        for _ in range(2):
            if data is None and storage.delete_if(self.uri, self._version):
                return True
            if data is not None and (version := storage.replace_if(self.uri, data, self._version)):
                self._version = version
                return True
            holder, version = _read(self.uri)  # changed: by a taker, or by our own write whose answer was lost
            if not holder or holder.get("token") != self.owner["token"]:
                return False
            self._version = version
        return True  # twice our own write whose answer was lost: the lease is this run's, as last read

    def _renew(self) -> None:
        while not self._stop.wait(self.seconds / 4):
            try:
                if not self._swap(self._body()):
                    holder = self._holder()
                    log.error("lost the lease of %s to %s (this run missed its heartbeats for %.0f s)", self.output,
                              f"run {holder.get('run')}" if holder else "no run", self.seconds)
                    return
            except (OSError, storage.StorageError) as exc:
                log.warning("could not renew the lease %s: %s", self.uri, storage.first_line(exc))

    def release(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(5)
        if self._version is None:
            return
        try:
            self._swap(None)
        except (OSError, storage.StorageError) as exc:  # left to expire: a later run takes it over after LEASE_SECONDS
            log.warning("could not give back the lease %s: %s", self.uri, storage.first_line(exc))

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.release()

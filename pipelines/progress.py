"""What a person sees while a job runs: one progress display in the user's units.

Tasks that know the user's units (the shard writer: inputs accounted for, pairs, rejects, shards;
the trainer's rank 0: step and loss) send counters to a ``Board`` actor through a ``Reporter`` that
batches them (one small message a second per task). The driver's ``Display`` polls the board: on a
terminal, a live line per stage with rate and ETA; elsewhere (CI, cron) a plain line a minute.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import Counter

import ray

log = logging.getLogger("pairmine")


@ray.remote(num_cpus=0)
class Board:
    """Counters of one job: `add` sums, `put` keeps the latest value; per-unit input accounting."""

    def __init__(self, done_before: dict[str, int] | None = None):
        self.sums: Counter = Counter()
        self.latest: dict = {}
        self.consumed: Counter = Counter(done_before or {})
        self.totals: dict[str, int] = {}

    def add(self, counts: dict, units: dict[str, tuple[int, int]] | None = None) -> None:
        self.sums.update(counts)
        for unit, (ids, total) in (units or {}).items():
            self.consumed[unit] += ids
            if total >= 0:
                self.totals[unit] = total

    def put(self, values: dict) -> None:
        if "step" in values and "first_step" not in self.latest:  # where this run's rate is measured from
            self.latest |= {"first_step": values["step"], "first_time": time.time()}
        self.latest.update(values)

    def failed(self, where: str) -> None:
        """A task or worker failed (and will be retried): kept for the driver to report."""
        self.latest.setdefault("failures", []).append(where)

    def read(self) -> dict:
        done = sum(1 for unit, total in self.totals.items() if self.consumed[unit] >= total)
        return {**self.sums, **self.latest, "units_done": done}


def new_board(*args) -> "ray.actor.ActorHandle":
    """A `Board` on the driver's node (soft), so losing a worker node does not lose the display's counters."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
    return Board.options(scheduling_strategy=here).remote(*args)


def read_board(board, timeout: float) -> dict:
    """The board's counters, or {} when it does not answer: the board is best effort, a slow or lost
    actor must not stop the job."""
    try:
        return ray.get(board.read.remote(), timeout=timeout)
    except Exception:
        return {}


class Reporter:
    """Batches counters for a `Board` from inside a task: `add` often, one message per `every` seconds."""

    def __init__(self, board, every: float = 1.0):
        self.board, self.every = board, every
        self.counts: Counter = Counter()
        self.units: dict[str, list[int]] = {}
        self.sent = time.monotonic()

    def add(self, unit: str | None = None, ids: int = 0, unit_total: int = -1, **counts: int) -> None:
        if self.board is None:
            return
        self.counts.update(counts, ids=ids)
        if unit is not None:
            entry = self.units.setdefault(unit, [0, -1])
            entry[0] += ids
            entry[1] = max(entry[1], unit_total)
        if time.monotonic() - self.sent >= self.every:
            self.flush()

    def flush(self) -> None:
        if self.board is not None and (self.counts or self.units):
            self.board.add.remote(dict(self.counts), {u: tuple(v) for u, v in self.units.items()})
            self.counts, self.units = Counter(), {}
        self.sent = time.monotonic()


def _eta(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds < 0:
        return "–"
    return time.strftime("%H:%M:%S" if seconds >= 3600 else "%M:%S", time.gmtime(seconds))


def pipeline_lines(state: dict, elapsed: float, units_planned: int) -> list[str]:
    """The display's lines for a pipeline run, from the board's counters."""
    done = state.get("units_done", 0)
    eta = elapsed / done * (units_planned - done) if done and units_planned > done else (0.0 if done >= units_planned else None)
    rate = lambda n: f"{n / elapsed:,.1f}/s" if elapsed > 0 else "–"  # noqa: E731
    return [
        f"inputs   {done:,}/{units_planned:,} units, {state.get('ids', 0):,} records or segments ({rate(state.get('ids', 0))}), ETA {_eta(eta)}",
        f"pairs    {state.get('pairs', 0):,} made ({rate(state.get('pairs', 0))}), {state.get('written', 0):,} in "
        f"{state.get('shards', 0):,} committed shards",
        f"rejects  {state.get('rejects', 0):,}",
    ]


def train_lines(state: dict, elapsed: float, max_steps: int) -> list[str]:
    """The display's lines for a training run."""
    step, first = state.get("step"), state.get("first_step")
    if step is None:
        return ["training: starting workers and the data stream"]
    rate = (step - first) / (time.time() - state["first_time"]) if step > first and state.get("first_time") else None
    eta = (max_steps - step) / rate if rate else None
    return [f"step     {step:,}/{max_steps:,} · loss {state.get('loss', float('nan')):.4f} · "
            f"{state.get('samples_per_s', 0):.1f} samples/s · ETA {_eta(eta)}"]


class Display:
    """Polls a board while a job runs: a live block on a terminal, a plain line every `plain_every` s otherwise."""

    def __init__(self, board, lines, enabled: bool = True, plain_every: float = 60.0):
        self.board, self.lines, self.plain_every = board, lines, plain_every
        self.live = enabled and sys.stderr.isatty()
        self.enabled = enabled
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="pairmine-progress", daemon=True)
        self.started = time.perf_counter()

    def _state(self) -> dict:
        return read_board(self.board, timeout=5)

    def _loop(self) -> None:
        if self.live:
            from rich.console import Console
            from rich.live import Live

            with Live(console=Console(stderr=True), refresh_per_second=2, transient=False) as live:
                while not self._stop.wait(0.5):
                    live.update("\n".join(self.lines(self._state(), time.perf_counter() - self.started)))
                live.update("\n".join(self.lines(self._state(), time.perf_counter() - self.started)))
            return
        while not self._stop.wait(self.plain_every):
            log.info("progress: %s", " | ".join(" ".join(l.split()) for l in self.lines(self._state(), time.perf_counter() - self.started)))

    def __enter__(self):
        if self.enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)

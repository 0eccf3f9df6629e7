"""Logging of the CLI: text or JSON lines on stderr, and a run's log file in the run's folder.

``configure`` sets the console format once per process (``--log-format text|json``, ``-v``).
``run_log`` captures a run: every pairmine line, and Ray's own lines (its loggers do not propagate,
so they get the file handler directly), go to ``<folder>/logs/<run>.log``; unless verbose, Ray's lines
go only there, so a terminal shows pairmine's progress and summary, not Ray's internals (with ``-v`` they
reach the terminal too, in the console's format; Ray's workers' output is printed by Ray as it is). On S3
the log is written locally, copied up every ``UPLOAD_EVERY`` seconds (a killed run's log is not lost with
its machine) and uploaded when the run ends.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import sys
import tempfile
import threading
from typing import Iterator

from . import storage
from .errors import cause_of

RAY_LOGGERS = ("ray", "ray.data")  # Ray's loggers with their own console handlers (they do not propagate)
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
_state = {"verbose": False, "format": "text"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and any `extra=` fields."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        line |= {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def formatter() -> logging.Formatter:
    if _state["format"] == "json":
        return JsonFormatter()
    return logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")


def _in_our_format(handler: logging.Handler) -> logging.Handler:
    """`handler` with the console's formatter, kept: ``ray.init`` sets its own on every handler of the "ray"
    logger (``ray._private.ray_logging.setup_logger``), which would turn a run's log, JSON lines included,
    into Ray's format from Ray's start on."""
    handler.setFormatter(formatter())
    handler.setFormatter = lambda fmt: None
    return handler


def configure(verbose: bool = False, fmt: str = "text") -> None:
    """The console: pairmine at INFO (DEBUG with -v), libraries at WARNING, in `fmt` (text or json)."""
    _state.update(verbose=verbose, format=fmt)
    handler = _in_our_format(logging.StreamHandler(sys.stderr))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, handlers=[handler], force=True)
    logging.getLogger("pairmine").setLevel(logging.DEBUG if verbose else logging.INFO)


def verbose() -> bool:
    return _state["verbose"]


@contextlib.contextmanager
def run_log(folder: str, run_id: str) -> Iterator[str]:
    """Log the run to ``<folder>/logs/<run_id>.log`` (see the module note); yields the log's URI."""
    uri = storage.join(folder, "logs", f"{run_id}.log")
    local = uri if not storage.is_s3(uri) else os.path.join(tempfile.mkdtemp(prefix="pairmine-log-"), f"{run_id}.log")
    os.makedirs(os.path.dirname(os.path.abspath(local)), exist_ok=True)
    handler = _in_our_format(logging.FileHandler(local, encoding="utf-8"))
    handler.setLevel(logging.DEBUG if verbose() else logging.INFO)
    # with -v, Ray's lines also reach the terminal, through a console handler of ours: in the console's format
    # (one JSON object per line with --log-format json), not in Ray's own
    console = [_in_our_format(logging.StreamHandler(sys.stderr))] if verbose() else []
    saved = {name: list(logging.getLogger(name).handlers) for name in RAY_LOGGERS}
    logging.getLogger().addHandler(handler)
    for name, handlers in saved.items():
        logging.getLogger(name).handlers = [*(h for h in handlers if not _is_console(h)), *console, handler]
    stop = threading.Event()
    copier = threading.Thread(target=_upload_copies, args=(handler, local, uri, stop), name="pairmine-log", daemon=True)
    if local != uri:  # on S3, a copy every UPLOAD_EVERY seconds: a killed run's log is not only on its machine
        copier.start()
    try:
        yield uri
    except BaseException as exc:  # the run's own log says why it stopped (the terminal got the one line already)
        logger = logging.getLogger("pairmine")
        handler.handle(logger.makeRecord(logger.name, logging.ERROR, __file__, 0, "the run stopped: %s: %s",
                                         (type(exc).__name__, cause_of(exc)), (type(exc), exc, exc.__traceback__)))
        raise
    finally:
        stop.set()
        if copier.is_alive():
            copier.join(UPLOAD_EVERY)  # its last copy must not land after the final upload (bounded: S3 may hang)
        logging.getLogger().removeHandler(handler)
        for name, handlers in saved.items():
            logging.getLogger(name).handlers = handlers
        handler.close()
        if local != uri:
            with contextlib.suppress(OSError, storage.StorageError):
                storage.upload_file(local, uri)  # removes the local file, uploaded or not
            with contextlib.suppress(OSError):
                os.rmdir(os.path.dirname(local))


UPLOAD_EVERY = 30.0


def _upload_copies(handler: logging.Handler, local: str, uri: str, stop: threading.Event) -> None:
    copied = -1
    while not stop.wait(UPLOAD_EVERY):
        handler.flush()
        with contextlib.suppress(OSError, storage.StorageError):
            if os.path.getsize(local) != copied:  # a quiet run uploads nothing
                with open(local, "rb") as f:
                    data = f.read()
                storage.write_bytes(uri, data)
                copied = len(data)


def _is_console(handler: logging.Handler) -> bool:
    return isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)

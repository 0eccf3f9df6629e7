"""The base of every error that is the user's to fix: the CLI prints its one-line message and exits with 2; and how
a command stopped from outside (SIGTERM) unwinds."""

import signal
import sys


class UserError(Exception):
    """A config, an input, an output or a model file that cannot be used as given; the message is one line."""


def cause_of(exc: BaseException) -> BaseException:
    """The error itself when a Ray task raised it (Ray's wrapper is an instance of it, but prints a traceback)."""
    return getattr(exc, "cause", None) or exc


def exit_on_sigterm(signum, frame) -> None:
    """SIGTERM as ``sys.exit(15)``, so that a stopped command unwinds (its lease given back, its log closed). Once Ray
    runs, abseil's failure handler sees SIGTERM first and arms a 3-second alarm that aborts the process (exit -6)
    when unwinding takes longer, as it can on a busy machine: the alarm is cancelled here (ray-project/ray#64830)."""
    signal.alarm(0)
    sys.exit(signum)

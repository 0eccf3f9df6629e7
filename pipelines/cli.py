"""The ``pairmine`` command line: one registry of commands, each declared where it is implemented.

A command is a name, its help texts and two functions (add its arguments, run it). Pipelines get
theirs from their ``Pipeline`` declaration (``run.pipeline_command``); other commands (training,
erasing, reports) declare one directly. Adding a command is one line in ``COMMAND_MODULES``. A command
line that names a command imports only that command's module (``pairmine verify`` needs no Ray Data,
SciPy or torch): 1.8 s to start instead of 4.0. Any ``UserError`` a command raises becomes a one-line
message and exit code 2; an ``OSError`` (a full disk, a path under a file) one line and exit code 1.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import math
import os
import signal
import sys
from dataclasses import dataclass
from typing import Callable

from .. import __version__, logs, storage
from ..errors import UserError, cause_of, exit_on_sigterm

# each command's module (which defines it in COMMANDS), in the order `pairmine --help` lists them
COMMAND_MODULES = {
    "syn4removal": "pairmine.pipelines.syn4removal", "video4removal": "pairmine.pipelines.video4removal",
    "verify": "pairmine.pipelines.verify", "report": "pairmine.pipelines.report",
    "train": "pairmine.training.commands", "erase": "pairmine.training.commands", "evaluate": "pairmine.training.commands",
}
EXIT_CODES = "exit codes: 0 done, 1 failure, 2 bad arguments/config/inputs (nothing was run)."
PIPELINE_EXIT_CODES = ("exit codes: 0 done (_SUCCESS says how: done, done_with_rejects, nothing_to_do, incomplete), 1 failure,\n"
                       "2 bad arguments/config/inputs (nothing was run), 3 output busy with another run (retry later),\n"
                       "130 / 143 stopped by Ctrl-C / SIGTERM (what was committed stays; rerun to continue).")


@dataclass(frozen=True)
class Command:
    name: str
    help: str  # one line for `pairmine --help`
    description: str  # the paragraph above `pairmine NAME --help`
    examples: str  # the epilog of `pairmine NAME --help`
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]  # the exit code; raises UserError for the user's mistakes
    exit_codes: str = EXIT_CODES  # the last lines of `pairmine NAME --help`


def commands(names: list[str] | None = None) -> list[Command]:
    """The commands called `names` (default: all), importing only their modules."""
    names = list(COMMAND_MODULES) if names is None else names
    declared = {c.name: c for module in dict.fromkeys(COMMAND_MODULES[n] for n in names) for c in importlib.import_module(module).COMMANDS}
    return [declared[name] for name in names]


def path_arg(value: str) -> str:
    """A path argument: not empty (an empty --output would be the current folder, or /); an s3:// URI in its one
    spelling (Arrow's S3 refuses an empty part, `s3://b/x//y`, with a traceback); valid UTF-8 (Arrow's file
    systems cannot name anything else: inside a folder such a file is an unreadable_name reject)."""
    if not value.strip():
        raise argparse.ArgumentTypeError("an empty path")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError(f"{os.fsencode(value).decode('utf-8', 'backslashreplace')}: the name is not valid UTF-8, "
                                         "which the file systems pairmine reads through cannot open; rename it") from None
    return storage.normalize(value) if storage.is_s3(value) else value


def _parsed(value: str, convert: Callable[[str], int | float], what: str) -> int | float:
    try:
        return convert(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not {what}: {value!r}") from None


def count_arg(value: str) -> int:
    """A whole number of at least 1."""
    number = _parsed(value, int, "a whole number")
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {number}")
    return number


def nonnegative_arg(value: str) -> float:
    """A finite number of at least 0."""
    number = _parsed(value, float, "a number")
    if not math.isfinite(number) or number < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number of at least 0, not {value}")
    return number


def fraction_arg(value: str) -> float:
    """A share in (0, 1]."""
    number = nonnegative_arg(value)
    if not 0 < number <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], not {value}")
    return number


def add_config_arguments(parser: argparse.ArgumentParser, config_help: str) -> None:
    """The options of every config-driven command: --config (`config_help` says what it defaults to), --set,
    --print-config, --dry-run."""
    parser.add_argument("--config", type=path_arg, metavar="FILE", help=f"YAML config, local or s3:// ({config_help})")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key, e.g. seed=3 (repeatable)")
    parser.add_argument("--dry-run", action="store_true", help="validate everything and print the plan without running")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and its hash, then exit")


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser of `argv`: when its first word names a command, with that command's subparser only."""
    words = [a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith("-")]
    parser = argparse.ArgumentParser(
        prog="pairmine",
        description="Mine (source, mask, target) training pairs for object-removal models as WebDataset shards, "
        "and train erasers on them.",
    )
    parser.add_argument("--version", action="version", version=f"pairmine {__version__}")
    subparsers = parser.add_subparsers(dest="command_name", required=True, metavar="COMMAND")
    for command in commands(words[:1] if words and words[0] in COMMAND_MODULES else None):
        sub = subparsers.add_parser(
            command.name, help=command.help, description=command.description,
            epilog=f"{command.examples.rstrip()}\n\n{command.exit_codes}\n", formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        command.add_arguments(sub)
        sub.add_argument("-v", "--verbose", action="store_true", help="debug logging (and, for a command that runs on Ray, Ray's own log lines and progress bars)")
        sub.add_argument("--log-format", choices=("text", "json"), default="text", help="log lines as text (default) or JSON objects")
        sub.set_defaults(command=command)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser(argv).parse_args(argv)
    logs.configure(args.verbose, args.log_format)
    # SIGTERM unwinds like Ray's own driver handler does once Ray starts: the lease is given back, the log closed;
    # SIGINT is Ctrl-C's KeyboardInterrupt even where the shell started us ignoring it (a background job)
    saved = signal.signal(signal.SIGTERM, exit_on_sigterm), signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return args.command.run(args)
    except KeyboardInterrupt:
        return _stopped("Ctrl-C", 130)
    except SystemExit as exc:
        if exc.code != signal.SIGTERM:  # Ray's driver turns SIGTERM into sys.exit(15)
            raise
        return _stopped("SIGTERM", 143)
    except UserError as exc:
        print(f"pairmine: error: {cause_of(exc)}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
    except OSError as exc:  # a file or the network failed mid-command (a full disk, a path under a file): one line
        logging.getLogger("pairmine").debug("the error in full", exc_info=True)
        print(f"pairmine: error: {cause_of(exc)}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, saved[0])
        signal.signal(signal.SIGINT, saved[1])


def _stopped(by: str, code: int) -> int:
    """A command stopped from outside: one line, not a traceback (the lease and the run log are already closed)."""
    print(f"pairmine: stopped by {by}; what was committed stays, and rerunning the same command continues", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())

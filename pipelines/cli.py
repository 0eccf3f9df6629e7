"""The ``pairmine`` command line: one registry of commands, each declared where it is implemented.

A command is a name, its help texts and two functions (add its arguments, run it). Pipelines get
theirs from their ``Pipeline`` declaration (``run.pipeline_command``); other commands (training,
erasing, reports) declare one directly. Adding a command is one line in ``COMMAND_MODULES``.
Any ``UserError`` a command raises becomes a one-line message and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass
from typing import Callable

from .. import __version__, logs
from ..errors import UserError

# modules that define COMMANDS, in the order `pairmine --help` lists them; imported lazily, cheap to import
COMMAND_MODULES = (
    "pairmine.pipelines.syn4removal", "pairmine.pipelines.video4removal", "pairmine.pipelines.verify", "pairmine.pipelines.report",
    "pairmine.training.commands",
)
EXIT_CODES = "exit codes: 0 done (_SUCCESS says how: done, done_with_rejects, nothing_to_do), 1 failure,\n2 bad arguments/config/inputs (nothing was run), 3 output busy with another run (retry later)."


@dataclass(frozen=True)
class Command:
    name: str
    help: str  # one line for `pairmine --help`
    description: str  # the paragraph above `pairmine NAME --help`
    examples: str  # the epilog of `pairmine NAME --help`
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]  # the exit code; raises UserError for the user's mistakes


def commands() -> list[Command]:
    return [command for module in COMMAND_MODULES for command in importlib.import_module(module).COMMANDS]


def add_config_arguments(parser: argparse.ArgumentParser, default_config: str) -> None:
    """The options of every config-driven command: --config, --set, --print-config, --dry-run, -v."""
    parser.add_argument("--config", metavar="FILE", help=f"YAML config, local or s3:// (default: the packaged defaults, see {default_config})")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key, e.g. seed=3 (repeatable)")
    parser.add_argument("--dry-run", action="store_true", help="validate everything and print the plan without running")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and its hash, then exit")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pairmine",
        description="Mine (source, mask, target) training pairs for object-removal models as WebDataset shards, "
        "and train erasers on them.",
    )
    parser.add_argument("--version", action="version", version=f"pairmine {__version__}")
    subparsers = parser.add_subparsers(dest="command_name", required=True, metavar="COMMAND")
    for command in commands():
        sub = subparsers.add_parser(
            command.name, help=command.help, description=command.description,
            epilog=f"{command.examples.rstrip()}\n\n{EXIT_CODES}\n", formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        command.add_arguments(sub)
        sub.add_argument("-v", "--verbose", action="store_true", help="debug logging, and Ray's own log lines and progress bars")
        sub.add_argument("--log-format", choices=("text", "json"), default="text", help="log lines as text (default) or JSON objects")
        sub.set_defaults(command=command)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.configure(args.verbose, args.log_format)
    try:
        return args.command.run(args)
    except UserError as exc:
        print(f"pairmine: error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)


if __name__ == "__main__":
    sys.exit(main())

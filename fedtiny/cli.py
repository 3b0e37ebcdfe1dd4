"""The `fedtiny` command: one subcommand per module.

Adding a subcommand: write a module with HELP (one line), add_arguments(parser) and
run_command(args) -> exit code, then add one line to SUBCOMMANDS below.
Errors: a bad argument or a ValueError from the library prints ONE line and exits with 2.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

# name -> module implementing HELP, add_arguments(parser), run_command(args)
SUBCOMMANDS: dict[str, str] = {
    "simulate": "fedtiny.simulate",
    "aggregate": "fedtiny.net.aggregator",
    "client": "fedtiny.net.client",
    "bridge": "fedtiny.net.bridge",
    "demo": "fedtiny.net.demo",
    "export": "fedtiny.tflite.export",
    "privacy": "fedtiny.privacy.plan",
    "keys": "fedtiny.net.keys",
    "fleet": "fedtiny.flower.fleet",
}


def _terminal_columns() -> int:
    """What shutil.get_terminal_size() gives for the width: $COLUMNS, else the terminal on stdout,
    else 80."""
    try:
        columns = int(os.environ.get("COLUMNS", 0))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns if columns > 0 else 80


class _Formatter(argparse.HelpFormatter):
    """Every option's default in --help, unless its help already states it."""

    def __init__(self, prog, indent_increment=2, max_help_position=24, width=None):
        # Left to argparse, the width comes from shutil, imported by every add_argument (a formatter
        # checks each argument): shutil brings zlib, bz2 and lzma, ~0.4 MB of a device's RSS.
        super().__init__(prog, indent_increment, max_help_position, _terminal_columns() - 2 if width is None else width)

    @staticmethod
    def _shows_default(action) -> bool:
        d = action.default
        return (bool(action.option_strings) and action.nargs != 0 and d is not None and d is not argparse.SUPPRESS
                and not isinstance(d, bool))

    def _format_action(self, action):
        if not action.help and self._shows_default(action):
            action.help = "(default %(default)s)"
        return super()._format_action(action)

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or not self._shows_default(action):
            return text
        return f"{text} (default %(default)s)"


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (no usage dump), exit code 2."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The full parser; given the command about to run, import only that command's module.

    A device runs `fedtiny client`: it must not pay for the simulation or the aggregator (RSS and
    start-up time), so the other subcommands are then registered by name only.
    """
    parser = _Parser(prog="fedtiny", description="Federated learning (FedAvg) for memory-limited edge boards.")
    from . import __version__
    parser.add_argument("--version", action="version", version=f"fedtiny {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, module_name in SUBCOMMANDS.items():
        if command is not None and name != command:
            sub.add_parser(name)
            continue
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run_command)
    return parser


def _command_named(argv: list[str]) -> str | None:
    first = next((a for a in argv if not a.startswith("-")), None)
    return first if first in SUBCOMMANDS else None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_command_named(argv))
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help(sys.stderr)
        return 2
    prog = f"fedtiny {args.command}"
    try:
        return int(args._run(args) or 0)
    except (ValueError, ImportError) as exc:  # ImportError: an optional extra is missing; it says which
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"{prog}: error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""The ``ssondo`` command: one argparse group, one module per subcommand.

Each module in :mod:`pyssondo.commands` defines ``HELP`` (one line), ``DESCRIPTION`` (usage
with examples), ``add_arguments(parser)`` and ``run(args) -> int``. Command modules import only
the standard library at module level; torch and the compiled core are imported inside ``run``,
so ``ssondo --help`` is instant.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
import warnings
from typing import List, Optional

# Order is the order shown by --help: the main job first, then its steps, then the rest.
COMMANDS = [
    "demo",
    "distill",
    "export",
    "embed",
    "eval",
    "teacher",
    "cache",
    "cluster",
    "students",
    "init",
    "merge",
    "adapt",
    "doctor",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ssondo",
        description="Distill a large audio embedding model (teacher) into a small, fast student "
        "using only the teacher's output embeddings, then export and evaluate it.",
        epilog="Run 'ssondo COMMAND --help' for a command's options and examples.",
    )
    parser.add_argument("--version", action="version", version=f"ssondo {_version()}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"pyssondo.commands.{name}")
        p = sub.add_parser(
            name,
            help=module.HELP,
            description=getattr(module, "DESCRIPTION", module.HELP),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def _version() -> str:
    from . import __version__

    return __version__


def main(argv: Optional[List[str]] = None) -> int:
    from .allocator import keep_freed_memory
    from .errors import MissingExtra

    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s: %(message)s",
    )
    logging.captureWarnings(True)
    # Warnings name their file in the message; the source line of the warn() call is noise.
    warnings.formatwarning = lambda message, category, *args, **kwargs: str(message)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    keep_freed_memory()
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("ssondo: interrupted; finished work is kept, run the same command to resume",
              file=sys.stderr)
        return 130
    except (ValueError, OSError, MissingExtra) as e:
        # Bad input or a full disk: one line naming the file and the problem, no traceback.
        from .errors import disk_full_message

        full = disk_full_message(e) if isinstance(e, OSError) else None
        if isinstance(e, OSError) and full is None and not isinstance(
                e, (FileNotFoundError, PermissionError, IsADirectoryError)):
            raise
        line = f"{full}; free space and run again" if full else str(e)
        if args.verbose:
            raise
        print(f"ssondo {args.command}: error: {line}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

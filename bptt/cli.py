"""The ``bptt`` command: ``bptt train``, ``bptt sample``, ``bptt info``, ...

Each subcommand lives in its own module, named in ``COMMANDS``, which defines
``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``. Modules
are imported only when their command runs, except for building ``--help``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

COMMANDS = {
    "train": "bptt.commands.train",
    "sample": "bptt.commands.sample",
    "gradcheck": "bptt.commands.gradcheck",
    "info": "bptt.commands.info",
    "bench": "bptt.commands.bench",
    "diagnose": "bptt.commands.diagnose",
    "evaluate": "bptt.commands.evaluate",
}


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="bptt", description="Train and sample RNNs with hand-derived BPTT."
    )
    parser.add_argument("--version", action="version", version=f"bptt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        command = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(command)
        command.set_defaults(run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. Whatever happens, one line and an exit status: a Ctrl-C before
    a command handles it itself (during start-up) is 130, a ``MemoryError`` anywhere is
    one ``error:`` line naming the size asked for, exit 2."""
    name = "bptt"
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        name = f"bptt {args.command}"
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
    except MemoryError as e:
        asked = str(e) or "an allocation failed (the size was not reported)"
        print(f"{name}: error: out of memory: {asked}; use smaller sizes", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""The ``bptt`` command: ``bptt train``, ``bptt sample``, ``bptt info``, ...

Each subcommand lives in its own module, named in ``COMMANDS``, which defines
``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``. Modules
are imported only when their command runs, except for building ``--help``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
from collections.abc import Sequence
from typing import Any

COMMANDS = {
    "train": "bptt.cli.train",
    "sample": "bptt.cli.sample",
    "gradcheck": "bptt.cli.gradcheck",
    "info": "bptt.cli.info",
    "bench": "bptt.cli.bench",
    "diagnose": "bptt.cli.diagnose",
    "evaluate": "bptt.cli.evaluate",
}


class _Parser(argparse.ArgumentParser):
    """argparse, remembering the last error it reported (for the other ranks of a job)."""

    last_error: str | None = None
    quiet = False  # parsing on a rank other than 0 of a job that trains: rank 0 says it

    def error(self, message: str) -> Any:  # type: ignore[override]
        _Parser.last_error = f"{self.prog}: error: {message}"
        if _Parser.quiet:
            self.exit(2)  # the other ranks are told (_tell_other_ranks); rank 0 prints it
        super().error(message)


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = _Parser(prog="bptt", description="Train and sample RNNs with hand-derived BPTT.")
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
    one ``error:`` line naming the size asked for, exit 2, and a ``FloatingPointError``
    (a score, loss or norm that came out NaN or infinite) one line naming it, exit 1."""
    from .._startup import uninstall
    from ._output import failure, guarded

    uninstall()  # from here on, KeyboardInterrupt is handled below
    name = "bptt"
    try:
        parser = build_parser()
        words = sys.argv[1:] if argv is None else list(argv)
        try:
            _Parser.quiet = _in_a_training_job(words) and _launched_rank() != 0
            args = parser.parse_args(argv)
        except SystemExit as e:  # an error, --version, --help: tell a job's other ranks
            if _in_a_training_job(words):
                _tell_other_ranks(e.code)
            raise
        finally:
            _Parser.quiet = False
        name = f"bptt {args.command}"
        with guarded():  # a reader that went away, a full disk: recorded, not raised
            code = int(args.run(args) or 0)
            failed = failure()
        if failed is not None and code == 0:  # the command did not say so itself
            with contextlib.suppress(OSError, ValueError):
                print(f"{name}: error: {failed}", file=sys.stderr)
            return 1
        return code
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
    except FloatingPointError as e:  # a score or norm that diverged: never reported as one
        print(f"{name}: error: {e}", file=sys.stderr)
        return 1
    except MemoryError as e:
        asked = str(e) or "an allocation failed (the size was not reported)"
        print(f"{name}: error: out of memory: {asked}; use smaller sizes", file=sys.stderr)
        return 2


def _in_a_training_job(argv: list[str]) -> bool:
    """Started by ``mpiexec`` with others, as ``bptt train`` or as no command at all
    (``--version``, a misspelt one): ranks may wait to train with this one. A command
    that never trains over MPI (``sample``, ``evaluate``, ...) has none waiting."""
    from ..train.distributed import launched_size

    command = next((a for a in argv if not a.startswith("-")), None)
    return launched_size() > 1 and (command not in COMMANDS or command == "train")


def _launched_rank() -> int:
    from ..train.distributed import launched_rank

    return launched_rank()


def _tell_other_ranks(code: Any) -> None:
    """Under ``mpiexec``, a process that exits before MPI starts (its options do not
    parse, ``--version``) tells the ranks waiting to train, which then refuse at once
    (:func:`bptt.train.distributed.report_exit`)."""
    from ..train.distributed import report_exit

    what = _Parser.last_error if code else None
    gone = f"it exited before starting (exit status {code or 0}: --version or --help)"
    report_exit(f"its command line was refused ({what})" if what else gone)


if __name__ == "__main__":
    sys.exit(main())

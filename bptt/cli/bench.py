"""``bptt bench``: run the step benchmark, ``benchmarks/bench_step.py``, from a source checkout.

The benchmark (torch and JAX contenders, the timing harness) is not part of the
installed package: it lives in the repository's ``benchmarks/`` folder. This
command finds that folder beside the package (an editable install or a source
tree) and runs the script with the same Python and every argument after
``bench``, unchanged::

    bptt bench --sizes S1 --dtypes float32      # = python benchmarks/bench_step.py ...
    bptt bench --help                           # the script's own options

From an installed wheel there is no checkout: the command says so and exits 2.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HELP = "time one training step against PyTorch and JAX (benchmarks/bench_step.py; source checkout)"
SCRIPT = Path("benchmarks") / "bench_step.py"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # Every argument goes to the script, options included: with no prefix characters
    # this parser reads "--sizes" (and "--help") as words for the one REMAINDER argument.
    parser.prefix_chars = "\0"
    parser.add_argument(
        "args", nargs=argparse.REMAINDER, help="arguments of benchmarks/bench_step.py"
    )


def find_script(package_dir: Path | None = None) -> Path | None:
    """``benchmarks/bench_step.py`` of the checkout holding ``package_dir`` (default:
    this ``bptt`` package), or None where there is none (an installed wheel)."""
    if package_dir is None:
        package_dir = Path(__file__).resolve().parents[1]
    script = package_dir.parent / SCRIPT
    return script if script.is_file() else None


def run(args: argparse.Namespace) -> int:
    script = find_script()
    if script is None:
        print(
            f"bptt bench: the benchmark ships in the source repository ({SCRIPT.as_posix()}), "
            "not in the installed package: run it from a checkout of bptt",
            file=sys.stderr,
        )
        return 2
    argv = args.args[1:] if args.args[:1] == ["--"] else args.args
    try:
        return subprocess.call([sys.executable, str(script), *argv])
    except KeyboardInterrupt:
        return 130

"""Time one training step against PyTorch: the same as ``bptt bench`` (see bptt/bench.py).

    python benchmarks/bench_step.py --sizes S1,S2,S3 --dtypes float32,float64 \\
        --markdown bench.md --json bench.json
"""

from __future__ import annotations

import sys

from bptt.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))

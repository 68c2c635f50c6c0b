"""``python -m bptt``: the same as the ``bptt`` command."""

import signal
import sys

from .cli import main

code = main()
signal.signal(signal.SIGINT, signal.SIG_IGN)  # done: a late Ctrl-C cannot replace the status
sys.exit(code)

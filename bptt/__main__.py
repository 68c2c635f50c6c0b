"""``python -m bptt``: the same as the ``bptt`` command."""

import sys

from .cli import main

sys.exit(main())

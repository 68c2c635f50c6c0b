"""Subcommands of the ``bptt`` command line; see :mod:`bptt.cli`."""

"""Subcommands of the ``famous`` command line, one module per area."""

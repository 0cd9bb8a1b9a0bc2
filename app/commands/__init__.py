"""Subcommands of the ``sparsemac`` command line, one module each."""

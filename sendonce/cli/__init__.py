"""The ``sendonce`` command line: the top floor.

Each command lives in a module that registers itself with ``add_cli(subparsers)``;
:mod:`sendonce.cli.main` only assembles them. Nothing below this package imports it.
"""

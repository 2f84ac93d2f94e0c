"""CLI subcommands: each module here defines ``register(subparsers)``; ``s3kit.cli`` finds them.

A command module is a thin wrapper over the Python API with the same names and defaults.
"""

"""Subcommands of the `esmpipe` CLI; each module exposes `register(subparsers)`."""

"""Subcommands of ``tappa-local``; each module exposes ``register(subparsers)``."""

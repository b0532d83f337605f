"""Subcommands of the `llavakit` command line (see llavakit.cli)."""

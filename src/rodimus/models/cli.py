"""`rodimus` subcommands of the models area."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this area's subcommands to the root app."""

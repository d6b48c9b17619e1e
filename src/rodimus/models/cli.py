"""`rodimus convert`: official checkpoint folders to ours and back."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def convert(
    src: Annotated[Path, typer.Argument(help="Model folder to read (official or our format).")],
    dst: Annotated[Path, typer.Argument(help="Folder to write (must not exist unless --force).")],
    to: Annotated[str, typer.Option(help="Target format: 'rodimus' (ours) or 'official'.")] = "rodimus",
    force: Annotated[bool, typer.Option(help="Replace DST if it exists.")] = False,
) -> None:
    """Validate a checkpoint folder and rewrite it in our format (or back to the official one)."""
    from rodimus.models.conversion import convert_checkpoint

    try:
        diff = convert_checkpoint(src, dst, to=to, overwrite=force)
    except (ValueError, FileExistsError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from e
    typer.echo(f"wrote {dst} ({to} format); parity check max |logit diff| = {diff:.1e}")


def register(app: typer.Typer) -> None:
    app.command("convert")(convert)

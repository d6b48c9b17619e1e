"""`rodimus prepare`: build a tokenized, packed dataset folder from text."""

from __future__ import annotations

from typing import Annotated

import typer

from rodimus.data.prepare import PrepareConfig, prepare, summary


def prepare_cmd(
    data: Annotated[
        list[str] | None,
        typer.Argument(
            help="Text files, folders, glob patterns or .jsonl files. None: the Python standard library's .py files.",
            show_default=False,
        ),
    ] = None,
    out: Annotated[str, typer.Option("--out", "-o", help="Output dataset folder.")] = "data/prepared",
    tokenizer: Annotated[
        str | None,
        typer.Option(help="tokenizer.json or a folder holding one; default: train a byte-level BPE."),
    ] = None,
    vocab_size: Annotated[int, typer.Option(help="Vocabulary size of the trained BPE.")] = 8192,
    eos_token: Annotated[str | None, typer.Option(help="End-of-document token (default <|endoftext|>).")] = None,
    jsonl_field: Annotated[str, typer.Option(help="Field of each JSONL object holding the text.")] = "text",
    ext: Annotated[
        list[str] | None,
        typer.Option(help="Only read files with this suffix from folders/globs (repeatable)."),
    ] = None,
    val_fraction: Annotated[float, typer.Option(help="Fraction of documents held out for validation.")] = 0.01,
    seed: Annotated[int, typer.Option(help="Seed of the document-hash split.")] = 0,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Tokenize text into train.bin / val.bin (memory-mapped, EOS between documents) plus a tokenizer."""
    cfg = PrepareConfig(
        out=out,
        inputs=list(data or []),
        tokenizer=tokenizer,
        vocab_size=vocab_size,
        eos_token=eos_token,
        jsonl_field=jsonl_field,
        extensions=ext or None,
        val_fraction=val_fraction,
        seed=seed,
        progress=progress,
    )
    try:
        meta = prepare(cfg)
    except ValueError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from e
    typer.echo(f"prepared {out}: {summary(meta)}")


def register(app: typer.Typer) -> None:
    """Add this area's subcommands to the root app."""
    app.command("prepare")(prepare_cmd)

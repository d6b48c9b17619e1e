"""`rodimus train`: presets or a config file, resume by pointing at the same --out, torchrun-aware."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from rodimus.train.config import (
    PRESETS,
    RESUMABLE_OVERRIDES,
    build_config,
    from_dict,
    load_config_file,
    parse_overrides,
    set_field,
    to_dict,
)


def _resolve_config(preset, config, explicit: dict[str, Any], out: str):
    """Fresh run: preset <- file <- flags. Existing run in --out: its saved config, plus allowed changes."""
    saved_file = Path(out) / "train_config.json"
    has_ckpt = (Path(out) / "checkpoints").is_dir() and any((Path(out) / "checkpoints").glob("step_*"))
    if not (saved_file.is_file() and has_ckpt):
        return build_config(preset, config, explicit)
    saved = json.loads(saved_file.read_text())
    requested = build_config(preset, config, explicit) if (preset or config) else None
    cfg = from_dict(saved)
    # values from a --config file count as asked-for too (flags win), so e.g. its max_steps applies
    file_values = {k: v for k, v in (load_config_file(config) if config else {}).items() if k != "preset"}
    for k, v in {**file_values, **explicit}.items():
        if k in RESUMABLE_OVERRIDES:
            set_field(cfg, k, v)
            continue
        if k == "out":
            continue
        trial = from_dict(saved)
        set_field(trial, k, v)
        if to_dict(trial) != to_dict(from_dict(saved)):
            raise ValueError(
                f"--out {out} holds a run with different {k} ({v!r} was asked for); "
                "resume with the same settings or use a new --out"
            )
    if requested is not None and requested.preset != cfg.preset:
        raise ValueError(f"--out {out} holds a run of preset {cfg.preset!r}, not {requested.preset!r}")
    cfg.validate()
    return cfg


def list_presets() -> None:
    """Print every preset with its parameter count (at the preset's default vocabulary size)."""
    import torch

    from rodimus import RodimusConfig, RodimusForCausalLM
    from rodimus.train.config import preset_config
    from rodimus.train.trainer import count_parameters

    for name in PRESETS:
        c = preset_config(name)
        with torch.device("meta"):
            m = RodimusForCausalLM(RodimusConfig(**c.model, vocab_size=c.vocab_size))
        total, non_emb = count_parameters(m)
        typer.echo(
            f"{name:20s} {c.model['block_type']:13s} d_model={c.model['d_model']:<5d} "
            f"n_layer={c.model['n_layer']:<3d} vocab={c.vocab_size:<6d} {total / 1e6:8.1f}M params "
            f"({non_emb / 1e6:.1f}M non-embedding)"
        )


def train_cmd(
    preset: Annotated[str | None, typer.Option(help=f"Model/training preset: {', '.join(PRESETS)}.")] = None,
    config: Annotated[str | None, typer.Option(help="JSON or TOML file of training fields (model.* inside).")] = None,
    data: Annotated[
        list[str] | None,
        typer.Option(
            help="Prepared dataset folder, or text files/folders/globs/JSONL to prepare (repeatable). "
            "Default: the Python standard library's .py files (prepared once and cached)."
        ),
    ] = None,
    out: Annotated[str | None, typer.Option(help="Run folder; an existing run there is resumed.")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Optimizer steps in total.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for init and data order.")] = None,
    tokenizer: Annotated[str | None, typer.Option(help="Tokenizer for raw --data (default: train a BPE).")] = None,
    vocab_size: Annotated[int | None, typer.Option(help="BPE vocabulary when a tokenizer is trained.")] = None,
    seq_len: Annotated[int | None, typer.Option(help="Tokens per training window.")] = None,
    micro_batch: Annotated[int | None, typer.Option(help="Windows per forward pass per rank.")] = None,
    grad_accum: Annotated[int | None, typer.Option(help="Micro-batches per optimizer step.")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate.")] = None,
    eval_every: Annotated[int | None, typer.Option(help="Validate every N steps.")] = None,
    ckpt_every: Annotated[int | None, typer.Option(help="Checkpoint every N steps.")] = None,
    parallel: Annotated[str | None, typer.Option(help="auto | ddp | fsdp | none (under torchrun).")] = None,
    precision: Annotated[str | None, typer.Option(help="auto | bf16 | fp32.")] = None,
    activation_checkpointing: Annotated[
        bool | None,
        typer.Option(
            "--activation-checkpointing/--no-activation-checkpointing",
            help="Recompute blocks in backward.",
            show_default=False,
        ),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Any config field as key=value (JSON value), e.g. model.d_model=256."),
    ] = None,
    list_presets_: Annotated[bool, typer.Option("--list-presets", help="Print presets with sizes and exit.")] = False,
    progress: Annotated[bool, typer.Option(help="Show the progress bar.")] = True,
) -> None:
    """Train a Rodimus / Rodimus+ model from scratch (single process, or under torchrun)."""
    from rodimus.train.checkpoint import CheckpointError

    if list_presets_:
        list_presets()
        return
    try:
        main(
            preset=preset,
            config=config,
            progress=progress,
            overrides=parse_overrides(set_ or []),
            values=dict(
                data=data,
                out=out,
                max_steps=max_steps,
                seed=seed,
                tokenizer=tokenizer,
                vocab_size=vocab_size,
                seq_len=seq_len,
                micro_batch=micro_batch,
                grad_accum=grad_accum,
                lr=lr,
                eval_every=eval_every,
                ckpt_every=ckpt_every,
                parallel=parallel,
                precision=precision,
                activation_checkpointing=activation_checkpointing,
            ),
        )
    except (CheckpointError, ValueError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from e


def main(
    preset: str | None = None,
    config: str | None = None,
    values: dict | None = None,
    overrides: dict | None = None,
    progress: bool = True,
) -> dict:
    """Resolve the config, join torchrun's process group if any, train, and report.

    Raises ValueError (bad settings) or CheckpointError (unreadable checkpoint); the command prints them."""
    from rodimus.train import distributed as D
    from rodimus.train.trainer import Trainer

    explicit = {k: v for k, v in (values or {}).items() if v is not None}
    explicit.update(overrides or {})
    explicit.pop("preset", None)
    out = explicit.get("out") or build_config(preset, config, explicit).out
    explicit["out"] = out
    cfg = _resolve_config(preset, config, explicit, out)
    info = D.init_distributed()
    try:
        return Trainer(cfg, info, progress=progress).fit()
    finally:
        D.shutdown(info)


def register(app: typer.Typer) -> None:
    """Add this area's subcommands to the root app."""
    app.command("train")(train_cmd)

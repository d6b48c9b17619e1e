"""`rodimus generate` (stream a completion to the terminal) and `rodimus serve` (OpenAI-compatible server)."""

from __future__ import annotations

import gc
import os
import sys
from pathlib import Path

import typer

DTYPES = ("float32", "bfloat16", "float16", "float64")


def load_model_and_tokenizer(
    model: str, tokenizer: str | None = None, dtype: str = "float32", device: str = "cpu"
):
    """A local checkpoint folder (safetensors) and its tokenizer (None when the folder has none)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import rodimus  # noqa: F401  (registers the rodimus model type)

    if dtype not in DTYPES:
        raise typer.BadParameter(f"--dtype must be one of {DTYPES}, got {dtype!r}")
    if not Path(model).is_dir():
        raise typer.BadParameter(f"MODEL must be a local checkpoint folder, got {model!r}")
    m = AutoModelForCausalLM.from_pretrained(model, dtype=getattr(torch, dtype), use_safetensors=True)
    m = m.to(device).eval()
    tok_path = tokenizer or model
    has_tok = any((Path(tok_path) / f).exists() for f in ("tokenizer.json", "tokenizer_config.json"))
    tok = AutoTokenizer.from_pretrained(tok_path) if (tokenizer or has_tok) else None
    return m, tok


def generate_cmd(
    model: str = typer.Argument(..., help="checkpoint folder (config.json + safetensors + tokenizer)"),
    prompt: str = typer.Argument(..., help="prompt text"),
    max_new_tokens: int = typer.Option(128, min=1, help="new tokens at most"),
    temperature: float = typer.Option(0.7, min=0.0, help="0 = greedy"),
    top_k: int = typer.Option(0, min=0, help="0 = off"),
    top_p: float = typer.Option(1.0, help="nucleus sampling mass in (0, 1]"),
    repetition_penalty: float = typer.Option(1.0, help="1 = off"),
    seed: int | None = typer.Option(None, help="seed for reproducible sampling"),
    stop: list[str] = typer.Option([], help="stop string (repeatable)"),
    chat: bool | None = typer.Option(
        None,
        help="wrap the prompt as a user message in the chat template (default: when the tokenizer has one)",
    ),
    tokenizer: str | None = typer.Option(None, help="tokenizer folder if not in MODEL"),
    dtype: str = typer.Option("float32", help=f"one of {DTYPES}"),
    device: str = typer.Option("cpu"),
) -> None:
    """Stream a completion to the terminal as it is produced."""
    from rodimus.serve.app import chat_prompt
    from rodimus.serve.engine import Engine, EngineConfig
    from rodimus.serve.sampling import SamplingParams

    try:
        params = SamplingParams(
            max_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            repetition_penalty=repetition_penalty,
            seed=seed,
            stop=tuple(stop),
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    m, tok = load_model_and_tokenizer(model, tokenizer, dtype, device)
    if tok is None:
        raise typer.BadParameter("MODEL has no tokenizer; pass --tokenizer")
    use_chat = bool(getattr(tok, "chat_template", None)) if chat is None else chat
    if use_chat:
        ids = tok(chat_prompt(tok, [{"role": "user", "content": prompt}]), add_special_tokens=False).input_ids
    else:
        ids = tok(prompt).input_ids
    engine = Engine(m, tok, EngineConfig(max_batch_size=1, prefix_cache_bytes=0)).start()
    try:
        for out in engine.submit(ids, params):
            sys.stdout.write(out.text)
            sys.stdout.flush()
            if out.finished:
                sys.stdout.write("\n")
                if out.error:
                    typer.echo(f"error: {out.error}", err=True)
                    raise typer.Exit(1)
    finally:
        engine.stop()


def serve_cmd(
    model: str = typer.Argument(..., help="checkpoint folder (config.json + safetensors + tokenizer)"),
    host: str = typer.Option(
        "127.0.0.1", help="interface to bind; 0.0.0.0 exposes the server to the network"
    ),
    port: int = typer.Option(8000, min=0, max=65535),
    api_key: str | None = typer.Option(
        None, envvar="RODIMUS_API_KEY", help="require 'Authorization: Bearer KEY' (or env RODIMUS_API_KEY)"
    ),
    model_name: str | None = typer.Option(None, help="model id clients must use (default: folder name)"),
    tokenizer: str | None = typer.Option(None, help="tokenizer folder if not in MODEL"),
    max_batch_size: int = typer.Option(64, min=1, help="requests decoded together"),
    max_queue: int = typer.Option(1024, min=1, help="waiting requests before 503"),
    prefix_cache_mb: float = typer.Option(256.0, min=0.0, help="state-snapshot LRU budget in MiB (0 = off)"),
    timeout: float = typer.Option(600.0, min=0.001, help="per-request timeout in seconds"),
    max_tokens_limit: int = typer.Option(4096, min=1, help="largest max_tokens accepted"),
    max_body_bytes: int = typer.Option(1 << 20, min=1, help="largest request body accepted"),
    dtype: str = typer.Option("float32", help=f"one of {DTYPES}"),
    device: str = typer.Option("cpu"),
    static_decode: bool | None = typer.Option(
        None,
        "--static-decode/--no-static-decode",
        help="Rodimus: decode through fixed-shape StaticDecoder buckets (CUDA graphs on GPU); default on",
    ),
) -> None:
    """OpenAI-compatible HTTP server with continuous batching and state snapshots."""
    import uvicorn

    from rodimus.serve.app import ServerConfig, create_app
    from rodimus.serve.engine import Engine, EngineConfig

    m, tok = load_model_and_tokenizer(model, tokenizer, dtype, device)
    ecfg = EngineConfig(
        max_batch_size=max_batch_size,
        max_queue=max_queue,
        prefix_cache_bytes=int(prefix_cache_mb * 2**20),
        static_decode=static_decode,
    )
    scfg = ServerConfig(
        model_name=model_name or os.path.basename(os.path.normpath(model)),
        api_key=api_key,
        max_body_bytes=max_body_bytes,
        request_timeout=timeout,
        max_tokens_limit=max_tokens_limit,
    )
    try:
        engine = Engine(m, tok, ecfg).start()
    except ValueError as exc:  # e.g. --static-decode with a non-Rodimus model
        raise typer.BadParameter(str(exc)) from exc
    typer.echo(
        f"serving {scfg.model_name!r} on http://{host}:{port} (auth {'on' if api_key else 'off'})", err=True
    )
    # Move everything allocated so far (model, tokenizer, libraries) out of the collector's view: a full
    # collection over it otherwise stalls a burst of requests by a few hundred milliseconds.
    gc.collect()
    gc.freeze()
    try:
        uvicorn.run(create_app(engine, tok, scfg), host=host, port=port, log_level="info")
    finally:
        engine.stop()
        gc.unfreeze()


def register(app: typer.Typer) -> None:
    """Add this area's subcommands to the root app."""
    app.command("generate")(generate_cmd)
    app.command("serve")(serve_cmd)

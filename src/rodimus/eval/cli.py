"""`rodimus eval {ppl, mqar, harness, needle}` and `rodimus bench`: thin wrappers over the eval modules."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import typer

T = TypeVar("T")

eval_app = typer.Typer(
    help="Evaluate models: perplexity, MQAR, lm-evaluation-harness, needle retrieval.", no_args_is_help=True
)


def _csv(text: str, kind: Callable[[str], T], name: str) -> list[T]:
    try:
        items = [kind(x.strip()) for x in text.split(",") if x.strip()]
    except ValueError as err:
        raise typer.BadParameter(f"{name}: expected a comma-separated list, got {text!r} ({err})") from err
    if not items:
        raise typer.BadParameter(f"{name}: empty list")
    return items


def _run(fn: Callable[[], Any]) -> Any:
    """Turn our ValueErrors (bad user input) into a clean CLI error instead of a traceback."""
    try:
        return fn()
    except ValueError as err:
        typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from err


def _done(paths: dict[str, Any], table: str | None = None) -> None:
    if table:
        typer.echo(table)
    for kind, path in paths.items():
        typer.echo(f"{kind}: {path}")


@eval_app.command("ppl")
def ppl_cmd(
    model: str = typer.Argument(..., help="Model folder (ours or any transformers causal LM)."),
    data: list[str] = typer.Option(
        ..., "--data", help="Text source: .txt/.jsonl file or folder (repeatable)."
    ),
    tokenizer: str | None = typer.Option(None, help="Tokenizer folder (default: the model folder)."),
    context: int = typer.Option(2048, help="Tokens per window."),
    stride: int | None = typer.Option(None, help="New tokens scored per window (default context // 2)."),
    glob: str = typer.Option("*.txt", help="File pattern inside folders, e.g. '*.py'."),
    text_field: str = typer.Option("text", help="jsonl field with the text."),
    max_docs: int | None = typer.Option(None, help="Stop after this many documents."),
    add_bos: bool = typer.Option(True, help="Prepend BOS so the first token is scored."),
    device: str = typer.Option("auto"),
    dtype: str = typer.Option("float32"),
    out: str = typer.Option("runs/eval/ppl", help="Output folder (ppl.json, ppl.md)."),
) -> None:
    """Loss, perplexity and bits per byte of MODEL on local text."""
    from rodimus.eval.ppl import PplConfig, run_ppl

    cfg = PplConfig(
        model=model,
        data=data,
        tokenizer=tokenizer,
        context=context,
        stride=stride,
        glob=glob,
        text_field=text_field,
        max_docs=max_docs,
        add_bos=add_bos,
        device=device,
        dtype=dtype,
        out=out,
    )
    _, json_path, md_path = _run(lambda: run_ppl(cfg))
    _done({"json": json_path, "markdown": md_path}, md_path.read_text())


@eval_app.command("mqar")
def mqar_cmd(
    archs: str = typer.Option("rodimus,rodimus_plus,llama,mamba2,gla", help="Comma-separated architectures."),
    d_models: str = typer.Option("64,128", help="Comma-separated model dimensions."),
    settings: str = typer.Option(
        "128:8", help="Comma-separated seq_len:num_kv_pairs, e.g. '64:4,128:8,256:16'."
    ),
    vocab_size: int = typer.Option(8192),
    n_layer: int = typer.Option(2),
    mem_size: int = typer.Option(16, help="Rodimus state rows; Mamba2 d_state and GLA key width match it."),
    window: int = typer.Option(32, help="Rodimus+ sliding window W."),
    lrs: str = typer.Option("1e-3", help="Comma-separated learning rates; the best is reported."),
    num_train: int = typer.Option(20000),
    num_test: int = typer.Option(1000),
    epochs: int = typer.Option(8),
    batch_size: int = typer.Option(64),
    seed: int = typer.Option(0),
    device: str = typer.Option("auto"),
    out: str = typer.Option("runs/eval/mqar", help="Output folder (mqar.json, mqar.md, mqar.png)."),
) -> None:
    """Train and test small models on multi-query associative recall (Zoology)."""
    from rodimus.eval.mqar import MqarConfig, run_mqar

    def pair(s: str) -> tuple[int, int]:
        a, b = s.split(":")
        return int(a), int(b)

    cfg = MqarConfig(
        archs=_csv(archs, str, "archs"),
        d_models=_csv(d_models, int, "d-models"),
        settings=_csv(settings, pair, "settings"),
        vocab_size=vocab_size,
        n_layer=n_layer,
        mem_size=mem_size,
        window=window,
        lrs=_csv(lrs, float, "lrs"),
        num_train=num_train,
        num_test=num_test,
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        device=device,
        out=out,
    )
    _, paths = _run(lambda: run_mqar(cfg))
    _done(paths, paths["markdown"].read_text())


@eval_app.command("harness")
def harness_cmd(
    model: str = typer.Argument(..., help="Model folder (ours or any transformers causal LM)."),
    tasks: str = typer.Option("rodimus_toy", help="Comma-separated tasks/tags/groups."),
    tokenizer: str | None = typer.Option(None),
    include_path: list[str] = typer.Option([], help="Extra folder of task YAMLs (repeatable)."),
    num_fewshot: int | None = typer.Option(None),
    batch_size: int = typer.Option(8),
    limit: float | None = typer.Option(None, help="Examples per task (or a fraction < 1)."),
    bootstrap_iters: int = typer.Option(1000),
    device: str = typer.Option("auto"),
    dtype: str = typer.Option("float32"),
    offline: bool = typer.Option(True, help="Forbid downloads; pass --no-offline for the hub's datasets."),
    out: str = typer.Option("runs/eval/harness", help="Output folder (harness.json, harness.md)."),
) -> None:
    """Run lm-evaluation-harness tasks on MODEL (bundled offline toy tasks by default)."""
    from rodimus.eval.harness import HarnessConfig, run_harness

    cfg = HarnessConfig(
        model=model,
        tasks=_csv(tasks, str, "tasks"),
        tokenizer=tokenizer,
        include_paths=include_path,
        num_fewshot=num_fewshot,
        batch_size=batch_size,
        limit=limit,
        bootstrap_iters=bootstrap_iters,
        device=device,
        dtype=dtype,
        offline=offline,
        out=out,
    )
    _, paths = _run(lambda: run_harness(cfg))
    _done(paths, paths["markdown"].read_text() if paths else None)


@eval_app.command("needle")
def needle_cmd(
    model: str = typer.Argument(..., help="Model folder (ours or any transformers causal LM)."),
    tokenizer: str | None = typer.Option(None),
    lengths: str = typer.Option("256,512,1024,2048", help="Comma-separated prompt lengths in tokens."),
    depths: str = typer.Option("0,0.25,0.5,0.75,1", help="Comma-separated needle depths in [0, 1]."),
    trials: int = typer.Option(5, help="Random keys per cell."),
    key_digits: int = typer.Option(5),
    haystack: str | None = typer.Option(None, help="Text file used as filler."),
    seed: int = typer.Option(0),
    device: str = typer.Option("auto"),
    dtype: str = typer.Option("float32"),
    out: str = typer.Option("runs/eval/needle", help="Output folder (needle.json, needle.md, needle.png)."),
) -> None:
    """Pass-key (needle-in-a-haystack) retrieval accuracy over context length and depth."""
    from rodimus.eval.needle import NeedleConfig, run_needle

    cfg = NeedleConfig(
        model=model,
        tokenizer=tokenizer,
        lengths=_csv(lengths, int, "lengths"),
        depths=_csv(depths, float, "depths"),
        trials=trials,
        key_digits=key_digits,
        haystack=haystack,
        seed=seed,
        device=device,
        dtype=dtype,
        out=out,
    )
    _, paths = _run(lambda: run_needle(cfg))
    _done(paths, paths["markdown"].read_text())


def bench_cmd(
    model: str = typer.Argument(..., help="Model folder to measure."),
    baseline: list[str] = typer.Option([], help="Baseline model folder (repeatable)."),
    contexts: str = typer.Option(
        "1024,2048,4096,8192,16384,32768,65536", help="Comma-separated context lengths."
    ),
    decode_tokens: int = typer.Option(16),
    prefill_chunk: int | None = typer.Option(None, help="Prefill in pieces of this many tokens."),
    max_seconds: float = typer.Option(600.0, help="Stop a model's curve after a point slower than this."),
    device: str = typer.Option("auto"),
    dtype: str = typer.Option("float32"),
    seed: int = typer.Option(0),
    out: str = typer.Option("runs/bench", help="Output folder (bench.json, bench.md, bench.png)."),
) -> None:
    """Generation-cache bytes, peak memory, prefill and decode tokens/s against context length."""
    from rodimus.eval.bench import BenchConfig, run_bench

    cfg = BenchConfig(
        model=model,
        baselines=baseline,
        contexts=_csv(contexts, int, "contexts"),
        decode_tokens=decode_tokens,
        prefill_chunk=prefill_chunk,
        max_seconds=max_seconds,
        device=device,
        dtype=dtype,
        seed=seed,
        out=out,
    )
    _, paths = _run(lambda: run_bench(cfg))
    _done(paths, paths["markdown"].read_text())


def register(app: typer.Typer) -> None:
    """Add this area's subcommands to the root app."""
    app.add_typer(eval_app, name="eval")
    app.command("bench")(bench_cmd)

"""Perplexity and bits per byte of any causal LM folder on a local text source.

Bits per byte divides the summed negative log-likelihood by the UTF-8 size of the text, so models with
different tokenizers are compared on the same footing. Texts longer than the context are scored with a
sliding window: each window re-reads ``context - stride`` tokens of history and scores only the new ones.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from rodimus.eval.common import load_causal_lm, load_tokenizer, pick_device, pick_dtype, write_report


@dataclass
class PplConfig:
    model: str  # model folder (ours or any transformers causal LM)
    data: list[str]  # .txt / .jsonl files or folders of them
    tokenizer: str | None = None  # tokenizer folder; None = the model folder
    context: int = 2048  # tokens per window
    stride: int | None = None  # new tokens scored per window; None = context // 2
    glob: str = "*.txt"  # file pattern inside folders
    text_field: str = "text"  # jsonl field holding the text
    max_docs: int | None = None  # stop after this many documents
    add_bos: bool = True  # prepend the tokenizer's BOS (when it has one) so the first token is scored too
    device: str = "auto"  # 'auto', 'cpu' or 'cuda[:N]'
    dtype: str = "float32"  # weights dtype: float32, bfloat16, float16
    out: str = "runs/eval/ppl"  # folder for ppl.json / ppl.md
    progress: bool = True  # tqdm bar over windows

    def validate(self) -> None:
        if self.context < 2:
            raise ValueError(f"context must be >= 2 tokens, got {self.context}")
        stride = self.stride if self.stride is not None else max(1, self.context // 2)
        if not 1 <= stride < self.context:
            raise ValueError(f"stride must be in [1, context - 1 = {self.context - 1}], got {self.stride}")
        if not self.data:
            raise ValueError("data must name at least one .txt/.jsonl file or folder")
        if self.max_docs is not None and self.max_docs < 1:
            raise ValueError(f"max_docs must be >= 1, got {self.max_docs}")


def iter_texts(sources: Sequence[str], glob: str = "*.txt", text_field: str = "text") -> Iterator[str]:
    """Yield documents: a .txt (or other) file is one document, each jsonl line another; folders recurse."""
    for src in sources:
        p = Path(src)
        if not p.exists():
            raise ValueError(f"data path {src!r} does not exist")
        files = sorted(f for f in p.rglob(glob) if f.is_file()) if p.is_dir() else [p]
        for f in files:
            if f.suffix == ".jsonl":
                with f.open(encoding="utf-8") as fh:
                    for i, line in enumerate(fh):
                        if line.strip():
                            rec = json.loads(line)
                            if text_field not in rec:
                                raise ValueError(f"{f}:{i + 1}: no field {text_field!r} (set --text-field)")
                            yield rec[text_field]
            else:
                yield f.read_text(encoding="utf-8", errors="replace")


def windows(n_tokens: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, n_new) per window: tokens [end - n_new, end) are scored with [begin, end) as input.

    Every token from position 1 on is scored exactly once (token 0 has nothing to be predicted from).
    """
    out, prev_end, begin = [], 0, 0
    while prev_end < n_tokens:
        end = min(begin + context, n_tokens)
        n_new = end - max(prev_end, 1)
        if n_new > 0:
            out.append((begin, end, n_new))
        prev_end = end
        begin += stride
    return out


@torch.no_grad()
def score_ids(
    model: torch.nn.Module,
    ids: list[int],
    context: int,
    stride: int,
    device: torch.device,
    bar: Any | None = None,
) -> tuple[float, int]:
    """Summed NLL (nats) and number of scored tokens of one token sequence."""
    nll, count = 0.0, 0
    for begin, end, n_new in windows(len(ids), context, stride):
        x = torch.tensor([ids[begin:end]], device=device)
        logits = model(input_ids=x).logits[0, :-1].float()  # predictions for tokens begin+1 .. end-1
        target = x[0, 1:]
        logp = F.log_softmax(logits[-n_new:], dim=-1)
        nll -= logp.gather(-1, target[-n_new:, None]).sum().item()
        count += n_new
        if bar is not None:
            bar.update(1)
    return nll, count


def evaluate_ppl(
    cfg: PplConfig, model: torch.nn.Module | None = None, tokenizer: Any = None
) -> dict[str, Any]:
    """Score every document; return loss (nats/token), ppl and bits per byte with the counts behind them."""
    cfg.validate()
    device = pick_device(cfg.device)
    stride = cfg.stride if cfg.stride is not None else max(1, cfg.context // 2)
    if model is None:
        model = load_causal_lm(cfg.model, device=device, dtype=pick_dtype(cfg.dtype))
    if tokenizer is None:
        tokenizer = load_tokenizer(cfg.tokenizer or cfg.model)
    bos = tokenizer.bos_token_id if cfg.add_bos else None

    docs: list[tuple[list[int], int]] = []
    for i, text in enumerate(iter_texts(cfg.data, cfg.glob, cfg.text_field)):
        if cfg.max_docs is not None and i >= cfg.max_docs:
            break
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        docs.append(([bos, *ids] if bos is not None else ids, len(text.encode("utf-8"))))
    if not docs:
        raise ValueError(f"no documents found in {cfg.data} (glob {cfg.glob!r})")

    n_windows = sum(len(windows(len(ids), cfg.context, stride)) for ids, _ in docs)
    t0 = time.perf_counter()
    nll, tokens, nbytes = 0.0, 0, 0
    with tqdm(total=n_windows, desc="ppl", unit="win", disable=not cfg.progress) as bar:
        for ids, b in docs:
            d_nll, d_count = score_ids(model, ids, cfg.context, stride, device, bar)
            nll, tokens, nbytes = nll + d_nll, tokens + d_count, nbytes + b
    if tokens == 0:
        raise ValueError("no token was scored: every document is shorter than 2 tokens")
    loss = nll / tokens
    return {
        "loss": loss,
        "ppl": math.exp(loss),
        "bits_per_byte": nll / math.log(2) / max(nbytes, 1),
        "tokens": tokens,
        "bytes": nbytes,
        "documents": len(docs),
        "windows": n_windows,
        "seconds": time.perf_counter() - t0,
        "context": cfg.context,
        "stride": stride,
    }


def run_ppl(cfg: PplConfig) -> tuple[dict[str, Any], Path, Path]:
    result = evaluate_ppl(cfg)
    row = {"model": cfg.model, **{k: result[k] for k in ("loss", "ppl", "bits_per_byte", "tokens", "bytes")}}
    json_path, md_path = write_report(
        cfg.out,
        "ppl",
        {"config": asdict(cfg), "result": result},
        [row],
        ["model", "loss", "ppl", "bits_per_byte", "tokens", "bytes"],
        "Perplexity",
    )
    return result, json_path, md_path

"""Needle in a haystack, generated locally: a pass key hidden at a chosen depth of filler text.

The prompt is built from token pieces (intro, haystack before, needle, haystack after, question), so its
length in tokens is exact. The model answers greedily; a trial counts when the decoded answer starts with
the key's digits.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from rodimus.eval.common import (
    atomic_write_text,
    forward_with_cache,
    load_causal_lm,
    load_tokenizer,
    markdown_table,
    pick_device,
    pick_dtype,
)

FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
INTRO = "There is a pass key hidden inside a lot of irrelevant text. Find it and remember it. "
NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key. "
QUESTION = "What is the pass key? The pass key is"


@dataclass
class NeedleConfig:
    model: str  # model folder (ours or any transformers causal LM)
    tokenizer: str | None = None  # tokenizer folder; None = the model folder
    lengths: list[int] = field(default_factory=lambda: [256, 512, 1024, 2048])  # prompt lengths in tokens
    depths: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])  # needle position, 0..1
    trials: int = 5  # random keys per (length, depth)
    key_digits: int = 5  # digits of the pass key
    haystack: str | None = None  # text file used as filler instead of the repeated sentences
    seed: int = 0  # key seed
    device: str = "auto"  # 'auto', 'cpu' or 'cuda[:N]'
    dtype: str = "float32"  # weights dtype
    out: str = "runs/eval/needle"  # folder for needle.json / needle.md / needle.png
    progress: bool = True  # tqdm bar over trials

    def validate(self) -> None:
        if not self.lengths or min(self.lengths) < 16:
            raise ValueError(f"lengths must be token counts >= 16, got {self.lengths}")
        if not self.depths or not all(0.0 <= d <= 1.0 for d in self.depths):
            raise ValueError(f"depths must lie in [0, 1], got {self.depths}")
        if self.trials < 1:
            raise ValueError(f"trials must be >= 1, got {self.trials}")
        if not 1 <= self.key_digits <= 12:
            raise ValueError(f"key_digits must be in [1, 12], got {self.key_digits}")
        if self.haystack is not None and not Path(self.haystack).is_file():
            raise ValueError(f"haystack must be a text file, got {self.haystack!r}")


def build_prompt(tokenizer: Any, length: int, depth: float, key: str, filler_ids: list[int]) -> list[int]:
    """Exactly ``length`` token ids; the needle starts ``depth`` of the way into the haystack."""

    def enc(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    intro, needle, question = enc(INTRO), enc(NEEDLE.format(key=key)), enc(QUESTION)
    n_hay = length - len(intro) - len(needle) - len(question)
    if n_hay < 0:
        raise ValueError(
            f"length {length} is shorter than the prompt without haystack ({length - n_hay} tokens)"
        )
    hay = (filler_ids * (n_hay // max(len(filler_ids), 1) + 1))[:n_hay]
    cut = round(depth * n_hay)
    return intro + hay[:cut] + needle + hay[cut:] + question


@torch.no_grad()
def greedy_answer(model: torch.nn.Module, ids: list[int], n_new: int, device: torch.device) -> list[int]:
    logits, cache = forward_with_cache(model, torch.tensor([ids], device=device), None)
    out = []
    for _ in range(n_new):
        nxt = int(logits[0, -1].argmax())
        out.append(nxt)
        logits, cache = forward_with_cache(model, torch.tensor([[nxt]], device=device), cache)
    return out


def run_needle(
    cfg: NeedleConfig, model: torch.nn.Module | None = None, tokenizer: Any = None
) -> tuple[dict[str, Any], dict[str, Path]]:
    cfg.validate()
    device = pick_device(cfg.device)
    if model is None:
        model = load_causal_lm(cfg.model, device=device, dtype=pick_dtype(cfg.dtype))
    if tokenizer is None:
        tokenizer = load_tokenizer(cfg.tokenizer or cfg.model)
    filler = Path(cfg.haystack).read_text(encoding="utf-8", errors="replace") if cfg.haystack else FILLER * 8
    filler_ids = tokenizer(filler, add_special_tokens=False)["input_ids"]
    rng = random.Random(cfg.seed)

    grid = [[0.0] * len(cfg.lengths) for _ in cfg.depths]
    rows: list[dict[str, Any]] = []
    with tqdm(
        total=len(cfg.lengths) * len(cfg.depths) * cfg.trials, desc="needle", disable=not cfg.progress
    ) as bar:
        for j, length in enumerate(cfg.lengths):
            for i, depth in enumerate(cfg.depths):
                hits, answers = 0, []
                for _ in range(cfg.trials):
                    key = str(rng.randrange(10 ** (cfg.key_digits - 1), 10**cfg.key_digits))
                    ids = build_prompt(tokenizer, length, depth, key, filler_ids)
                    n_new = len(tokenizer(" " + key, add_special_tokens=False)["input_ids"]) + 1
                    answer = tokenizer.decode(greedy_answer(model, ids, n_new, device)).strip()
                    hits += answer.startswith(key)
                    answers.append({"key": key, "answer": answer})
                    bar.update(1)
                grid[i][j] = hits / cfg.trials
                rows.append({"length": length, "depth": depth, "accuracy": grid[i][j], "trials": answers})

    out = Path(cfg.out)
    json_path = out / "needle.json"
    atomic_write_text(
        json_path,
        json.dumps(
            {
                "config": asdict(cfg),
                "lengths": cfg.lengths,
                "depths": cfg.depths,
                "accuracy": grid,
                "rows": rows,
            },
            indent=2,
        )
        + "\n",
    )
    table = [
        {"depth": f"{d:.0%}", **{str(n): grid[i][j] for j, n in enumerate(cfg.lengths)}}
        for i, d in enumerate(cfg.depths)
    ]
    md_path = out / "needle.md"
    atomic_write_text(
        md_path,
        "# Needle retrieval accuracy (rows: depth, columns: context tokens)\n\n"
        + markdown_table(table, ["depth", *map(str, cfg.lengths)]),
    )
    from rodimus.eval.plots import plot_needle

    png = plot_needle(
        grid, cfg.lengths, cfg.depths, out / "needle.png", f"pass-key retrieval: {Path(cfg.model).name}"
    )
    return {"accuracy": grid, "lengths": cfg.lengths, "depths": cfg.depths}, {
        "json": json_path,
        "markdown": md_path,
        "png": png,
    }

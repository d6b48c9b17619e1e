"""Helpers shared by the eval commands: loading any causal LM folder, cache calls, reports."""

from __future__ import annotations

import inspect
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device(device: str) -> torch.device:
    """'auto' means CUDA when present, so the same command runs on a laptop and on an H200."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.split(":")[0] not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}")
    return torch.device(device)


def pick_dtype(dtype: str) -> torch.dtype:
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def load_causal_lm(path: str | Path, *, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """Load our folders and any transformers causal LM folder through the same Auto class."""
    from transformers import AutoModelForCausalLM

    import rodimus  # noqa: F401  (registers model_type 'rodimus' with the Auto classes)

    if not Path(path).is_dir():
        raise ValueError(f"model must be a local model folder, got {str(path)!r} (not a directory)")
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    return model.to(device).eval()


def load_tokenizer(path: str | Path) -> Any:
    from transformers import AutoTokenizer

    if not Path(path).is_dir():
        raise ValueError(f"tokenizer must be a local folder, got {str(path)!r} (not a directory)")
    return AutoTokenizer.from_pretrained(str(path))


def _forward_params(model: torch.nn.Module) -> set[str]:
    return set(inspect.signature(model.forward).parameters)


def cache_kwarg(model: torch.nn.Module) -> str:
    """transformers 5.x calls the cache argument ``cache``; older code ``past_key_values``."""
    return "cache" if "cache" in _forward_params(model) else "past_key_values"


def forward_with_cache(
    model: torch.nn.Module, input_ids: torch.Tensor, cache: Any, *, last_logits_only: bool = True
) -> tuple[torch.Tensor, Any]:
    """One forward that extends ``cache``; returns (logits, cache). Only last logits when the model allows,
    so a long prefill doesn't materialise a [T, vocab] float32 tensor."""
    kwargs: dict[str, Any] = {cache_kwarg(model): cache, "use_cache": True}
    if last_logits_only and "logits_to_keep" in _forward_params(model):
        kwargs["logits_to_keep"] = 1
    out = model(input_ids=input_ids, **kwargs)
    new_cache = getattr(out, "cache", None)
    if new_cache is None:
        new_cache = getattr(out, "past_key_values", None)
    if new_cache is None:
        new_cache = getattr(out, "cache_params", None)
    return out.logits, new_cache


def tensors_nbytes(obj: Any, _seen: set[int] | None = None, _depth: int = 0) -> int:
    """Bytes of every distinct tensor reachable from ``obj`` (lists, dicts, object attributes)."""
    seen = set() if _seen is None else _seen
    if _depth > 6 or id(obj) in seen:
        return 0
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensors_nbytes(v, seen, _depth + 1) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensors_nbytes(v, seen, _depth + 1) for v in obj)
    if hasattr(obj, "__dict__") and not isinstance(obj, (torch.nn.Module, type)):
        return sum(tensors_nbytes(v, seen, _depth + 1) for v in vars(obj).values())
    return 0


def cache_nbytes(cache: Any) -> int:
    """Bytes held by a generation cache: ours through rodimus.models.cache, anything else by a tensor walk."""
    try:
        from rodimus.models.cache import cache_nbytes as ours

        return int(ours(cache))
    except Exception:  # a baseline's cache type the model-area helper does not know
        return tensors_nbytes(cache)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return "" if v is None else str(v)

    head = "| " + " | ".join(columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join([head, rule, *body]) + "\n"


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_report(
    out_dir: str | Path,
    name: str,
    payload: dict[str, Any],
    rows: Sequence[dict[str, Any]],
    columns: Sequence[str],
    title: str,
) -> tuple[Path, Path]:
    """Write ``name.json`` (payload + rows) and ``name.md`` (a table a person reads); return both paths."""
    out = Path(out_dir)
    json_path, md_path = out / f"{name}.json", out / f"{name}.md"
    atomic_write_text(json_path, json.dumps({**payload, "rows": list(rows)}, indent=2, default=str) + "\n")
    atomic_write_text(md_path, f"# {title}\n\n" + markdown_table(rows, columns))
    return json_path, md_path

"""Official checkpoint folders <-> our folders.

Our weights keep the official parameter names and our config keeps the official field names, so an
official folder loads directly with ``from_pretrained``. Conversion therefore only validates the folder
(every field and weight checked), drops what points at the official remote code (``auto_map``), adds our
run-time fields, and writes it atomically; ``--to official`` writes the official field set back. Each
conversion re-runs the converted model on the same tokens as the source and reports the largest logit
difference, so a broken conversion cannot pass silently.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from rodimus.models.configuration_rodimus import RodimusConfig
from rodimus.models.modeling_rodimus import RodimusForCausalLM
from rodimus.utils.io import atomic_dir

OUR_ONLY_FIELDS = ("kernel_backend", "chunk_size")
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
    "tokenizer.model", "generation_config.json", "chat_template.jinja",
)


def load_folder(src: str | Path) -> RodimusForCausalLM:
    """Strictly load an official or own-format folder (errors name bad fields and weights)."""
    src = Path(src)
    if not (src / "config.json").is_file():
        raise ValueError(f"{src} is not a model folder: config.json is missing")
    raw = json.loads((src / "config.json").read_text())
    if raw.get("model_type") != "rodimus":
        raise ValueError(f"{src}/config.json: model_type must be 'rodimus', got {raw.get('model_type')!r}")
    raw.pop("auto_map", None)
    config = RodimusConfig.from_dict(raw)
    return RodimusForCausalLM.from_pretrained(src, config=config, dtype=torch.float32)


def parity_check(a: RodimusForCausalLM, b: RodimusForCausalLM, seed: int = 0, length: int = 32) -> float:
    """Largest |logit difference| between two models on the same random tokens."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, a.config.vocab_size, (2, length), generator=g)
    with torch.no_grad():
        return (a(ids, use_cache=False).logits - b(ids, use_cache=False).logits).abs().max().item()


def convert_checkpoint(src: str | Path, dst: str | Path, to: str = "rodimus", overwrite: bool = False) -> float:
    """Rewrite ``src`` at ``dst`` in our format (``to='rodimus'``) or the official one (``'official'``).

    Returns the parity check's max |logit diff| between source and converted model (0.0 expected).
    """
    if to not in ("rodimus", "official"):
        raise ValueError(f"to must be 'rodimus' or 'official', got {to!r}")
    src, dst = Path(src), Path(dst)
    model = load_folder(src)
    with atomic_dir(dst, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp)
        for name in TOKENIZER_FILES:
            if (src / name).is_file() and not (tmp / name).exists():
                shutil.copy2(src / name, tmp / name)
        if to == "official":
            cfg = json.loads((tmp / "config.json").read_text())
            for f in OUR_ONLY_FIELDS:
                cfg.pop(f, None)
            cfg["architectures"] = ["RodimusForCausalLM"]
            (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        converted = load_folder(tmp)
        diff = parity_check(model, converted)
        if diff != 0.0:
            raise RuntimeError(f"conversion changed the model: max |logit diff| {diff:.3e}")
    return diff

"""Byte-level BPE training and tokenizer loading, on top of the `tokenizers` library."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

DEFAULT_EOS = "<|endoftext|>"
# Names tried, in order, when a given tokenizer does not say which token ends a document.
_EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "<|eos|>", "[SEP]")


def train_bpe(texts: Iterable[str], vocab_size: int, eos_token: str = DEFAULT_EOS) -> Tokenizer:
    """Train a byte-level BPE (GPT-2 style: every byte is representable, nothing is ever unknown)."""
    if not 257 <= vocab_size <= 1_000_000:
        raise ValueError(f"vocab_size must be in [257, 1000000] (256 bytes + EOS at least), got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[eos_token],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def load_tokenizer(path: str | Path, eos_token: str | None = None) -> tuple[Tokenizer, str]:
    """Load tokenizer.json (or a folder holding one) and find its end-of-document token.

    Returns (tokenizer, eos_token). The EOS is taken from `eos_token`, else the folder's
    tokenizer_config.json, else the first known name present in the vocabulary.
    """
    p = Path(path)
    file = p / "tokenizer.json" if p.is_dir() else p
    if not file.is_file():
        raise ValueError(f"tokenizer: {file} does not exist (give a tokenizer.json or a folder holding one)")
    try:
        tok = Tokenizer.from_file(str(file))
    except Exception as e:  # the library raises a bare Exception for malformed JSON
        raise ValueError(f"tokenizer: could not read {file}: {e}") from e
    if eos_token is None:
        cfg_file = file.parent / "tokenizer_config.json"
        if cfg_file.is_file():
            eos = json.loads(cfg_file.read_text()).get("eos_token")
            if isinstance(eos, dict):
                eos = eos.get("content")
            if isinstance(eos, str):
                eos_token = eos
    if eos_token is None:
        eos_token = next((c for c in _EOS_CANDIDATES if tok.token_to_id(c) is not None), None)
    if eos_token is None or tok.token_to_id(eos_token) is None:
        raise ValueError(
            f"tokenizer: {file} has no end-of-document token (tried {eos_token or list(_EOS_CANDIDATES)}); "
            "pass --eos-token with a token that is in its vocabulary"
        )
    return tok, eos_token


def save_hf_tokenizer(tok: Tokenizer, eos_token: str, out_dir: str | Path) -> None:
    """Write tokenizer.json + tokenizer_config.json so `AutoTokenizer.from_pretrained(out_dir)` works."""
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos_token, bos_token=eos_token, pad_token=eos_token)
    hf.save_pretrained(str(out_dir))


def load_hf_tokenizer(path: str | Path):
    """The saved tokenizer as a transformers tokenizer (for generation and the final model folder)."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(str(path))

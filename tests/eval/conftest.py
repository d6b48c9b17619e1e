"""Tiny model folders (ours and a Llama baseline) with a byte-level tokenizer, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

VOCAB = 320  # 256 byte tokens + 1 special, padded


def save_byte_tokenizer(folder: Path) -> None:
    """A byte-level tokenizer (no merges): every UTF-8 byte is one token, id 256 is BOS/EOS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|endoftext|>"])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    fast.save_pretrained(folder)


def _save(model: torch.nn.Module, folder: Path) -> Path:
    model.save_pretrained(folder)
    save_byte_tokenizer(folder)
    return folder


def _tiny_rodimus(folder: Path, block_type: str, **extra) -> Path:
    from rodimus import RodimusConfig, RodimusForCausalLM

    torch.manual_seed(0)
    cfg = RodimusConfig(
        block_type=block_type,
        d_model=32,
        n_layer=2,
        vocab_size=VOCAB,
        mixer_cfg=dict(mem_size=8),
        bos_token_id=256,
        eos_token_id=256,
        **extra,
    )
    return _save(RodimusForCausalLM(cfg), folder)


@pytest.fixture(scope="session")
def tiny_rodimus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny_rodimus(tmp_path_factory.mktemp("tiny_rodimus"), "rodimus")


@pytest.fixture(scope="session")
def tiny_rodimus_plus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny_rodimus(
        tmp_path_factory.mktemp("tiny_rodimus_plus"), "rodimus_plus", attn_cfg=dict(num_heads=2, window_size=32)
    )


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=4096,
        bos_token_id=256,
        eos_token_id=256,
        tie_word_embeddings=False,
    )
    return _save(LlamaForCausalLM(cfg), tmp_path_factory.mktemp("tiny_llama"))

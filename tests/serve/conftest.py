"""Tiny served models: a BPE tokenizer trained here on Python's own source, random-weight models."""

from __future__ import annotations

import sysconfig
from pathlib import Path

import pytest
import torch

SPECIAL = ["<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def _corpus() -> list[str]:
    lib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(lib.glob("*.py"))[:40]
    return [f.read_text(encoding="utf-8", errors="ignore").encode("ascii", "ignore").decode() for f in files]


def build_tokenizer(folder: Path, vocab_size: int = 384):
    """Byte-level BPE whose alphabet is ASCII only, so every token decodes to valid text on its own."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    byte_char = _bytes_to_unicode()
    alphabet = [byte_char[b] for b in [*range(32, 127), 10, 9]]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL,
        initial_alphabet=alphabet,
        limit_alphabet=len(alphabet),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", bos_token=None, additional_special_tokens=SPECIAL[1:]
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(folder)
    return fast


def _bytes_to_unicode() -> list[str]:
    """GPT-2's byte -> printable character table (what ByteLevel uses), in byte order."""
    bs = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    )
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    table = dict(zip(bs, cs, strict=True))
    return [chr(table[b]) for b in range(256)]


def _make(folder: Path, block_type: str, dtype=torch.float32) -> Path:
    from rodimus import RodimusConfig, RodimusForCausalLM

    tok = build_tokenizer(folder)
    torch.manual_seed(0)
    cfg = RodimusConfig(
        block_type=block_type,
        d_model=64,
        n_layer=2,
        vocab_size=len(tok),
        mixer_cfg=dict(mem_size=16),
        attn_cfg=dict(num_heads=2, window_size=16) if block_type == "rodimus_plus" else None,
        bos_token_id=None,
        eos_token_id=tok.eos_token_id,
    )
    RodimusForCausalLM(cfg).to(dtype).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def rodimus_dir(tmp_path_factory) -> Path:
    return _make(tmp_path_factory.mktemp("serve_rodimus"), "rodimus")


@pytest.fixture(scope="session")
def rodimus_plus_dir(tmp_path_factory) -> Path:
    return _make(tmp_path_factory.mktemp("serve_rodimus_plus"), "rodimus_plus")


def load(folder: Path, dtype=torch.float32):
    from rodimus.serve.cli import load_model_and_tokenizer

    return load_model_and_tokenizer(str(folder), dtype=str(dtype).removeprefix("torch."))


def offline_greedy(model, ids: list[int], n: int, eos: int) -> list[int]:
    """transformers' own greedy generation: the reference the server must reproduce token for token."""
    with torch.no_grad():
        out = model.generate(
            torch.tensor([ids]), max_new_tokens=n, do_sample=False, eos_token_id=eos, pad_token_id=eos
        )
    return out[0, len(ids) :].tolist()


@pytest.fixture(scope="module")
def served(rodimus_dir):
    """(engine, tokenizer, server) for the Rodimus model on an ephemeral loopback port."""
    from rodimus.serve.app import BackgroundServer, ServerConfig, create_app
    from rodimus.serve.engine import Engine, EngineConfig

    model, tok = load(rodimus_dir)
    engine = Engine(model, tok, EngineConfig(max_batch_size=32, prefix_cache_bytes=8 * 2**20)).start()
    app = create_app(
        engine,
        tok,
        ServerConfig(model_name="tiny", max_body_bytes=64 * 1024, max_tokens_limit=512, request_timeout=60),
    )
    with BackgroundServer(app) as server:
        yield engine, tok, server
    engine.stop()


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models: one intra-op thread avoids thread hand-off costs dominating (and noisy neighbours)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

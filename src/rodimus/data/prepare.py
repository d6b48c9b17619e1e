"""`rodimus prepare`: text in, a tokenized, packed, memory-mappable dataset out.

Output folder layout (all written to temporary names first; meta.json last marks it complete):
  train.bin, val.bin   flat token streams (uint16, or uint32 for vocabularies above 65535),
                       laid out as EOS doc EOS doc ... EOS: every document starts right after an EOS
  tokenizer/           tokenizer.json + tokenizer_config.json (loadable with AutoTokenizer)
  meta.json            dtype, EOS id, token/document counts, skipped-file counts, fingerprint
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from rodimus.data.sources import SourceStats, iter_documents, resolve_inputs, stdlib_files, stdlib_root
from rodimus.data.tokenizer import DEFAULT_EOS, load_tokenizer, save_hf_tokenizer, train_bpe

FORMAT_VERSION = 1


@dataclass
class PrepareConfig:
    """Options of `rodimus prepare` (and of the automatic preparation done by `rodimus train`)."""

    out: str  # output dataset folder
    inputs: list[str] = field(default_factory=list)  # files/folders/globs/JSONL; empty = stdlib .py files
    tokenizer: str | None = None  # tokenizer.json or folder to use; None = train a byte-level BPE
    vocab_size: int = 8192  # size of the trained BPE vocabulary (ignored with `tokenizer`)
    eos_token: str | None = None  # end-of-document token; None = <|endoftext|> or the tokenizer's own
    jsonl_field: str = "text"  # field of each JSONL object holding the document text
    extensions: list[str] | None = None  # only files with these suffixes from folders/globs (None = all)
    val_fraction: float = 0.01  # fraction of documents (by hashed id) held out for validation
    seed: int = 0  # salt of the document hash that decides the split
    tokenizer_train_bytes: int = 200_000_000  # at most this much text is used to train the tokenizer
    batch_docs: int = 256  # documents tokenized per batch (the library parallelises within a batch)
    progress: bool = True  # show tqdm bars

    def validate(self) -> None:
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.tokenizer is None and not 257 <= self.vocab_size <= 1_000_000:
            raise ValueError(f"vocab_size must be in [257, 1000000], got {self.vocab_size}")
        if self.batch_docs < 1:
            raise ValueError(f"batch_docs must be >= 1, got {self.batch_docs}")
        if self.tokenizer_train_bytes < 1:
            raise ValueError(f"tokenizer_train_bytes must be >= 1, got {self.tokenizer_train_bytes}")


def _doc_hash(seed: int, doc_id: str) -> float:
    h = hashlib.sha1(f"{seed}:{doc_id}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def _input_files(cfg: PrepareConfig) -> tuple[list[Path], Path | None, str]:
    if cfg.inputs:
        return resolve_inputs(cfg.inputs, cfg.extensions), None, "inputs: " + ", ".join(cfg.inputs)
    root = stdlib_root()
    return stdlib_files(), root, f"python stdlib .py files ({root}, Python {sys.version.split()[0]})"


def fingerprint(cfg: PrepareConfig) -> str:
    """Identifies what a prepared folder was built from, so a cached one is reused only if it matches."""
    files, _, _ = _input_files(cfg)
    h = hashlib.sha256()
    keys = (
        "inputs",
        "tokenizer",
        "vocab_size",
        "eos_token",
        "jsonl_field",
        "extensions",
        "val_fraction",
        "seed",
        "tokenizer_train_bytes",
    )
    h.update(json.dumps({k: getattr(cfg, k) for k in keys}, sort_keys=True).encode())
    for f in files:
        st = f.stat()
        h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    h.update(str(FORMAT_VERSION).encode())
    return h.hexdigest()[:16]


def _bar(cfg: PrepareConfig, total: int, desc: str):
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, disable=not cfg.progress, leave=False)


def _fsync_write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        json.dump(obj, fh, indent=2)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def prepare(cfg: PrepareConfig) -> dict:
    """Build the dataset folder; returns its meta.json content."""
    cfg.validate()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "meta.json").unlink(missing_ok=True)  # the folder is incomplete until meta.json is rewritten
    files, id_root, description = _input_files(cfg)
    total_bytes = sum(f.stat().st_size for f in files)

    # Pass 1: decide the split from document ids (and train the tokenizer on training documents only).
    min_doc: tuple[float, str] | None = None
    n_val = n_docs = 0
    scan_stats = SourceStats()
    bar = _bar(cfg, total_bytes, "scan" if cfg.tokenizer else "train tokenizer")

    def train_texts():
        nonlocal min_doc, n_val, n_docs
        used = 0
        for doc_id, text in iter_documents(files, scan_stats, cfg.jsonl_field, id_root, bar.update):
            h = _doc_hash(cfg.seed, doc_id)
            n_docs += 1
            if min_doc is None or h < min_doc[0]:
                min_doc = (h, doc_id)
            if h < cfg.val_fraction:
                n_val += 1
            elif used < cfg.tokenizer_train_bytes:
                used += len(text)
                yield text

    if cfg.tokenizer:
        tok, eos_token = load_tokenizer(cfg.tokenizer, cfg.eos_token)
        for _ in train_texts():
            pass
    else:
        eos_token = cfg.eos_token or DEFAULT_EOS
        tok = train_bpe(train_texts(), cfg.vocab_size, eos_token)
    bar.close()
    if n_docs < 2:
        raise ValueError(f"data: need at least 2 readable documents for a train/val split, found {n_docs}")
    forced_val = min_doc[1] if n_val == 0 else None  # tiny corpora: still hold one document out
    if n_val == n_docs:
        raise ValueError("data: every document fell into validation; lower val_fraction")

    eos_id = tok.token_to_id(eos_token)
    vocab_size = tok.get_vocab_size(with_added_tokens=True)
    dtype = np.uint16 if vocab_size <= 2**16 - 1 else np.uint32
    save_hf_tokenizer(tok, eos_token, out / "tokenizer")

    # Pass 2: tokenize and append to the two streams.
    stats = SourceStats()
    counts = {"train": [0, 0], "val": [0, 0]}  # tokens, documents
    handles = {s: open(out / f"{s}.bin.tmp{os.getpid()}", "wb") for s in counts}  # noqa: SIM115 (closed in finally)
    eos = np.array([eos_id], dtype=dtype)
    encode = getattr(tok, "encode_batch_fast", tok.encode_batch)

    def flush(batch: list[tuple[str, str]]) -> None:
        encs = encode([t for _, t in batch], add_special_tokens=False)
        for (split, _), enc in zip(batch, encs, strict=True):
            ids = np.asarray(enc.ids, dtype=dtype)
            handles[split].write(eos.tobytes())
            handles[split].write(ids.tobytes())
            counts[split][0] += len(ids) + 1
            counts[split][1] += 1

    bar = _bar(cfg, total_bytes, "tokenize")
    try:
        batch: list[tuple[str, str]] = []
        for doc_id, text in iter_documents(files, stats, cfg.jsonl_field, id_root, bar.update):
            val = _doc_hash(cfg.seed, doc_id) < cfg.val_fraction or doc_id == forced_val
            batch.append(("val" if val else "train", text))
            if len(batch) >= cfg.batch_docs:
                flush(batch)
                batch = []
        if batch:
            flush(batch)
        for split, fh in handles.items():  # a closing EOS so the last document also learns to end
            fh.write(eos.tobytes())
            counts[split][0] += 1
            fh.flush()
            os.fsync(fh.fileno())
    finally:
        for fh in handles.values():
            fh.close()
        bar.close()
    for split in counts:
        os.replace(out / f"{split}.bin.tmp{os.getpid()}", out / f"{split}.bin")

    meta = {
        "format": FORMAT_VERSION,
        "fingerprint": fingerprint(cfg),
        "source": description,
        "dtype": np.dtype(dtype).name,
        "eos_token": eos_token,
        "eos_id": eos_id,
        "vocab_size": vocab_size,
        "train_tokens": counts["train"][0],
        "val_tokens": counts["val"][0],
        "train_documents": counts["train"][1],
        "val_documents": counts["val"][1],
        "stats": asdict(stats),
        "config": asdict(cfg),
    }
    _fsync_write_json(out / "meta.json", meta)
    return meta


def is_prepared(out: str | Path, cfg: PrepareConfig | None = None) -> bool:
    """True if `out` holds a complete dataset (built from `cfg`'s inputs and options, when given)."""
    meta_file = Path(out) / "meta.json"
    if not meta_file.is_file():
        return False
    try:
        meta = json.loads(meta_file.read_text())
    except json.JSONDecodeError:
        return False
    if meta.get("format") != FORMAT_VERSION:
        return False
    return cfg is None or meta.get("fingerprint") == fingerprint(cfg)


def ensure_prepared(cfg: PrepareConfig) -> dict:
    """Reuse a matching prepared folder or build it: lets `rodimus train` cache its default corpus."""
    if is_prepared(cfg.out, cfg):
        return json.loads((Path(cfg.out) / "meta.json").read_text())
    return prepare(cfg)


def default_cache_dir() -> Path:
    """Where `rodimus train` keeps automatically prepared corpora ($RODIMUS_CACHE or ~/.cache/rodimus)."""
    base = os.environ.get("RODIMUS_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "rodimus")
    return Path(base) / "data"


def summary(meta: dict) -> str:
    s = meta["stats"]
    return (
        f"{meta['source']}\n"
        f"  documents: {meta['train_documents']} train / {meta['val_documents']} val; "
        f"tokens: {meta['train_tokens']:,} train / {meta['val_tokens']:,} val; vocab {meta['vocab_size']}\n"
        f"  skipped: {s['skipped_undecodable']} undecodable, {s['skipped_empty']} empty, "
        f"{s['skipped_bad_json']} bad JSON lines"
    )

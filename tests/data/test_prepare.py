"""`rodimus prepare` on a small generated corpus: sources, split, packing, tokenizer, loader."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from rodimus.data import BatchLoader, PackedDataset, PrepareConfig, pack_batch, prepare
from rodimus.data.prepare import ensure_prepared, is_prepared
from rodimus.data.tokenizer import load_hf_tokenizer, load_tokenizer

WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "zeta",
    "eta",
    "theta",
    "iota",
    "kappa",
    "lambda",
    "mu",
    "nu",
    "xi",
    "omicron",
    "pi",
    "rho",
]


def _doc(rng: random.Random, n: int) -> str:
    return "\n".join(" ".join(rng.choice(WORDS) for _ in range(8)) for _ in range(n))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    rng = random.Random(0)
    (root / "texts" / "sub").mkdir(parents=True)
    for i in range(30):
        (root / "texts" / f"doc{i:02d}.txt").write_text(_doc(rng, 20))
    for i in range(10):
        (root / "texts" / "sub" / f"more{i}.md").write_text(_doc(rng, 10))
    (root / "texts" / "latin1.txt").write_bytes("caf\xe9 na\xefve".encode("latin-1"))  # not UTF-8
    (root / "texts" / "blob.bin").write_bytes(bytes(range(256)) * 4)  # binary
    (root / "texts" / "empty.txt").write_text("   \n")
    with open(root / "rows.jsonl", "w") as fh:
        for i in range(20):
            fh.write(json.dumps({"id": i, "body": _doc(rng, 5)}) + "\n")
        fh.write("{not json\n")
        fh.write(json.dumps({"other": "x"}) + "\n")
    return root


def test_prepare_folder_glob_jsonl(corpus, tmp_path):
    cfg = PrepareConfig(
        out=str(tmp_path / "ds"),
        inputs=[str(corpus / "texts"), str(corpus / "rows.jsonl")],
        vocab_size=300,
        jsonl_field="body",
        val_fraction=0.1,
        progress=False,
    )
    meta = prepare(cfg)
    s = meta["stats"]
    assert s["skipped_undecodable"] == 2  # latin1.txt and blob.bin
    assert s["skipped_empty"] == 1
    assert s["skipped_bad_json"] == 2
    assert meta["train_documents"] + meta["val_documents"] == 40 + 20
    assert meta["val_documents"] >= 1 and meta["vocab_size"] == 300 and meta["dtype"] == "uint16"

    train = np.memmap(tmp_path / "ds" / "train.bin", dtype=np.uint16, mode="r")
    val = np.memmap(tmp_path / "ds" / "val.bin", dtype=np.uint16, mode="r")
    eos = meta["eos_id"]
    assert len(train) == meta["train_tokens"] and len(val) == meta["val_tokens"]
    # EOS before every document and one closing EOS: documents + 1 separators per split
    assert int((train == eos).sum()) == meta["train_documents"] + 1
    assert int((val == eos).sum()) == meta["val_documents"] + 1
    assert train[0] == eos and train[-1] == eos

    # the saved tokenizer decodes the stream back to the original documents
    tok = load_hf_tokenizer(tmp_path / "ds" / "tokenizer")
    docs = np.split(np.asarray(train), np.nonzero(np.asarray(train) == eos)[0])
    texts = {tok.decode(d[1:].tolist()) for d in docs if len(d) > 1}
    originals = {
        p.read_text()
        for p in (corpus / "texts").rglob("*")
        if p.suffix in (".txt", ".md") and p.name not in ("latin1.txt", "empty.txt")
    }
    originals |= {json.loads(line)["body"] for line in (corpus / "rows.jsonl").read_text().splitlines()[:20]}
    assert texts <= originals and len(texts) == meta["train_documents"]


def test_split_is_deterministic_and_by_document(corpus, tmp_path):
    metas = []
    for name in ("a", "b"):
        cfg = PrepareConfig(
            out=str(tmp_path / name),
            inputs=[str(corpus / "texts" / "*.txt")],
            vocab_size=280,
            val_fraction=0.2,
            progress=False,
        )
        metas.append(prepare(cfg))
    for split in ("train", "val"):
        a = (tmp_path / "a" / f"{split}.bin").read_bytes()
        assert a == (tmp_path / "b" / f"{split}.bin").read_bytes()
    assert metas[0]["val_documents"] >= 1
    # reuse: ensure_prepared does not rebuild a matching folder
    cfg = PrepareConfig(
        out=str(tmp_path / "a"),
        inputs=[str(corpus / "texts" / "*.txt")],
        vocab_size=280,
        val_fraction=0.2,
        progress=False,
    )
    assert is_prepared(tmp_path / "a", cfg)
    mtime = (tmp_path / "a" / "train.bin").stat().st_mtime_ns
    ensure_prepared(cfg)
    assert (tmp_path / "a" / "train.bin").stat().st_mtime_ns == mtime


def test_given_tokenizer_and_errors(corpus, tmp_path):
    first = PrepareConfig(out=str(tmp_path / "first"), inputs=[str(corpus / "texts")], vocab_size=300, progress=False)
    prepare(first)
    tok, eos = load_tokenizer(tmp_path / "first" / "tokenizer")
    assert eos == "<|endoftext|>"
    second = PrepareConfig(
        out=str(tmp_path / "second"),
        inputs=[str(corpus / "rows.jsonl")],
        jsonl_field="body",
        tokenizer=str(tmp_path / "first" / "tokenizer" / "tokenizer.json"),
        progress=False,
    )
    meta = prepare(second)
    assert meta["vocab_size"] == tok.get_vocab_size()
    with pytest.raises(ValueError, match="not a file, folder"):
        prepare(PrepareConfig(out=str(tmp_path / "x"), inputs=[str(tmp_path / "missing")], progress=False))
    with pytest.raises(ValueError, match="val_fraction"):
        prepare(PrepareConfig(out=str(tmp_path / "x"), inputs=[str(corpus / "texts")], val_fraction=1.5))


def test_pack_batch_boundaries():
    eos = 0
    w1 = np.array([5, 6, 0, 7, 8, 9], dtype=np.int64)
    w2 = np.array([1, 2, 3, 0, 4, 4], dtype=np.int64)
    b = pack_batch([w1, w2], eos)
    assert b["input_ids"].shape == (1, 12)
    assert b["cu_seqlens"].tolist() == [0, 2, 6, 9, 12]  # window starts and every EOS start a segment
    labels = b["labels"][0]
    assert labels[6] == -100 and (labels[:6] == torch.from_numpy(w1)).all()


def test_loader_shards_ranks_and_resumes(corpus, tmp_path):
    cfg = PrepareConfig(out=str(tmp_path / "ds"), inputs=[str(corpus / "texts")], vocab_size=300, progress=False)
    prepare(cfg)
    ds = PackedDataset(tmp_path / "ds", "train", 16)
    one = BatchLoader(ds, micro_batch=4, grad_accum=1, rank=0, world_size=1, seed=3)
    ranks = [BatchLoader(ds, micro_batch=2, grad_accum=1, rank=r, world_size=2, seed=3) for r in range(2)]
    for _ in range(5):
        full = one.next_step()[0]["input_ids"].reshape(4, 16)
        parts = torch.cat([r.next_step()[0]["input_ids"].reshape(2, 16) for r in ranks])
        assert torch.equal(full, parts)
    resumed = BatchLoader(ds, micro_batch=4, grad_accum=1, rank=0, world_size=1, seed=3)
    resumed.load_state_dict(one.state_dict())
    assert torch.equal(resumed.next_step()[0]["input_ids"], one.next_step()[0]["input_ids"])

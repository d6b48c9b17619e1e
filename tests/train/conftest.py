"""Shared fixtures: a small generated corpus prepared once, and a tiny-model config file."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from rodimus.data import PrepareConfig, prepare

WORDS = [
    "def",
    "class",
    "return",
    "self",
    "import",
    "for",
    "in",
    "if",
    "else",
    "while",
    "yield",
    "with",
    "as",
    "lambda",
    "print",
    "value",
    "items",
    "append",
    "list",
    "dict",
    "range",
    "len",
    "str",
    "int",
    "None",
    "True",
    "False",
]


def tiny_fields(data_dir: str, **extra) -> dict:
    """Training fields for a fast CPU run (d_model 32, 2 layers, vocab 320)."""
    fields = dict(
        preset="tiny",
        model=dict(block_type="rodimus", d_model=32, n_layer=2, mixer_cfg=dict(mem_size=8)),
        data=[data_dir],
        seq_len=32,
        micro_batch=4,
        max_steps=12,
        lr=3e-3,
        warmup_steps=3,
        eval_every=6,
        eval_windows=8,
        ckpt_every=6,
        sample_tokens=0,
        num_threads=1,
    )
    fields.update(extra)
    return fields


@pytest.fixture(scope="session")
def dataset_dir(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("train_corpus")
    rng = random.Random(1)
    src = root / "src"
    src.mkdir()
    for i in range(80):
        lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9))) for _ in range(rng.randint(3, 30))]
        (src / f"f{i:03d}.py").write_text("\n".join(lines) + "\n")
    out = root / "prepared"
    prepare(PrepareConfig(out=str(out), inputs=[str(src)], vocab_size=300, val_fraction=0.1, progress=False))
    return str(out)


def write_config(path: Path, fields: dict) -> str:
    path.write_text(json.dumps(fields))
    return str(path)


def cli_env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env.pop("WORLD_SIZE", None)
    return env


def run_cli(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rodimus", *args],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def read_metrics(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]

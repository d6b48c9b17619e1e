"""Fault tolerance: SIGKILL + resume is exact; corrupt checkpoints fail loudly and name the file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rodimus.train.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint
from rodimus.train.cli import main

from .conftest import cli_env, read_metrics, run_cli, tiny_fields, write_config

N = 30  # total steps
K = 6  # kill once a checkpoint at or after this step exists


def _train(out: Path, fields: dict) -> dict:
    """`rodimus train` in process, into `out`, with the tiny fields (the preset is implied by them)."""
    return main(values=dict(out=str(out)), overrides={k: v for k, v in fields.items() if k != "preset"}, progress=False)


def test_sigkill_then_resume_matches_uninterrupted(dataset_dir, tmp_path):
    cfg = write_config(
        tmp_path / "cfg.json",
        tiny_fields(
            dataset_dir,
            max_steps=N,
            ckpt_every=3,
            eval_every=10,
            seq_len=64,
            micro_batch=8,
            model=dict(block_type="rodimus", d_model=64, n_layer=2, mixer_cfg=dict(mem_size=8)),
        ),
    )
    full, broken = tmp_path / "full", tmp_path / "broken"
    r = run_cli(["train", "--config", cfg, "--out", str(full), "--no-progress"])
    assert r.returncode == 0, r.stderr

    proc = subprocess.Popen(
        [sys.executable, "-m", "rodimus", "train", "--config", cfg, "--out", str(broken), "--no-progress"],
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 240
    killed_at = None
    while time.time() < deadline and proc.poll() is None:
        try:
            ckpt = latest_checkpoint(broken / "checkpoints")
        except CheckpointError:
            ckpt = None
        if ckpt is not None and int(ckpt.name.split("_")[1]) >= K:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            killed_at = ckpt.name
            break
        time.sleep(0.005)
    assert killed_at is not None, f"run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    assert proc.returncode == -signal.SIGKILL
    assert not (broken / "final").exists()
    lines = (broken / "metrics.jsonl").read_text().splitlines()
    assert len(lines) < N  # killed mid-run (the last line may be cut short by the kill)

    r = run_cli(["train", "--config", cfg, "--out", str(broken), "--no-progress"])
    assert r.returncode == 0, r.stderr
    assert "resumed from" in r.stdout
    a, b = read_metrics(full), read_metrics(broken)
    assert [row["step"] for row in b] == list(range(1, N + 1))  # no duplicated or missing rows
    assert a[-1]["loss"] == b[-1]["loss"]  # bit-exact, not approximately
    assert a[-1]["val_loss"] == b[-1]["val_loss"]
    assert [row["loss"] for row in a] == [row["loss"] for row in b]
    wa, wb = (
        load_file(str(full / "final" / "model.safetensors")),
        load_file(str(broken / "final" / "model.safetensors")),
    )
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_corrupt_checkpoint_names_the_file(dataset_dir, tmp_path):
    out = tmp_path / "run"
    fields = tiny_fields(dataset_dir, max_steps=4, ckpt_every=2, eval_every=4)
    _train(out, fields)
    ckpt = latest_checkpoint(out / "checkpoints")
    assert ckpt.name == "step_00000004" and (out / "checkpoints" / "step_00000002").is_dir()
    load_checkpoint(ckpt)  # intact

    model_file = ckpt / "model.safetensors"
    data = model_file.read_bytes()
    model_file.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(CheckpointError, match=str(model_file)):
        load_checkpoint(ckpt)
    fields["max_steps"] = 6
    with pytest.raises(CheckpointError, match="truncated") as e:
        _train(out, fields)
    assert str(model_file) in str(e.value)

    model_file.write_bytes(data[:-8] + b"\x00" * 8)  # same size, flipped bytes
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(ckpt)
    model_file.write_bytes(data)
    (ckpt / "state.json").write_text('{"step": 4, "fil')
    with pytest.raises(CheckpointError, match="state.json"):
        load_checkpoint(ckpt)


def test_interrupted_write_leaves_previous_checkpoint(dataset_dir, tmp_path):
    out = tmp_path / "run"
    fields = tiny_fields(dataset_dir, max_steps=2, ckpt_every=2, eval_every=2)
    _train(out, fields)
    # what a kill in the middle of writing step 4 leaves behind: a temp folder with a partial file
    partial = out / "checkpoints" / ".tmp-step_00000004-999"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"\x00" * 100)
    assert latest_checkpoint(out / "checkpoints").name == "step_00000002"
    fields["max_steps"] = 4
    res = _train(out, fields)
    assert res["step"] == 4 and not partial.exists()
    assert latest_checkpoint(out / "checkpoints").name == "step_00000004"


def test_resume_refuses_changed_settings(dataset_dir, tmp_path):
    out = tmp_path / "run"
    fields = tiny_fields(dataset_dir, max_steps=2, ckpt_every=2, eval_every=2)
    _train(out, fields)
    fields["lr"] = 1e-2
    with pytest.raises(ValueError, match="different lr"):
        _train(out, fields)
    assert Path(out / "final").is_dir()

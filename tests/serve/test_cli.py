from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import httpx
import pytest
from typer.testing import CliRunner

from rodimus.cli import app
from tests.serve.conftest import load, offline_greedy


def test_generate_streams_greedy_completion(rodimus_dir):
    model, tok = load(rodimus_dir)
    r = CliRunner().invoke(
        app,
        [
            "generate",
            str(rodimus_dir),
            "def f(x):",
            "--max-new-tokens",
            "12",
            "--temperature",
            "0",
            "--no-chat",
        ],
    )
    assert r.exit_code == 0, r.output
    ref = tok.decode(
        offline_greedy(model, tok("def f(x):").input_ids, 12, tok.eos_token_id), skip_special_tokens=True
    )
    assert r.stdout == ref + "\n"
    # with the tokenizer's chat template (the default when it has one)
    ids = tok(
        tok.apply_chat_template(
            [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
        ),
        add_special_tokens=False,
    ).input_ids
    r = CliRunner().invoke(
        app, ["generate", str(rodimus_dir), "hi", "--max-new-tokens", "8", "--temperature", "0"]
    )
    assert r.exit_code == 0, r.output
    assert (
        r.stdout
        == tok.decode(offline_greedy(model, ids, 8, tok.eos_token_id), skip_special_tokens=True) + "\n"
    )


def test_generate_rejects_bad_options(rodimus_dir):
    r = CliRunner().invoke(app, ["generate", str(rodimus_dir), "x", "--top-p", "1.5"])
    assert r.exit_code != 0 and "top_p" in r.output


@pytest.mark.parametrize("flag", [None, "--static-decode", "--no-static-decode"])
def test_serve_static_decode_flag(rodimus_dir, monkeypatch, flag):
    import uvicorn

    import rodimus.serve.app as app_mod
    from rodimus.serve.static_state import StaticBackend

    seen, real_create = {}, app_mod.create_app

    def create_app(engine, *args):
        seen["engine"] = engine
        return real_create(engine, *args)

    monkeypatch.setattr(app_mod, "create_app", create_app)
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: None)
    r = CliRunner().invoke(app, ["serve", str(rodimus_dir), *([flag] if flag else [])])
    assert r.exit_code == 0, r.output
    engine = seen["engine"]
    assert engine.config.static_decode is {None: None, "--static-decode": True, "--no-static-decode": False}[flag]
    assert isinstance(engine.backend, StaticBackend) == (flag != "--no-static-decode")


@pytest.mark.slow
def test_serve_command_end_to_end(rodimus_dir):
    """`rodimus serve` as a real process: loopback bind, API key from the environment, a completion."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "RODIMUS_API_KEY": "k"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rodimus",
            "serve",
            str(rodimus_dir),
            "--port",
            str(port),
            "--model-name",
            "tiny",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 60
        while True:
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            except httpx.TransportError:
                assert time.time() < deadline and proc.poll() is None, "server did not come up"
                time.sleep(0.2)
        assert httpx.post(f"{url}/v1/completions", json={"model": "tiny", "prompt": "a"}).status_code == 401
        r = httpx.post(
            f"{url}/v1/completions",
            json={"model": "tiny", "prompt": "a", "max_tokens": 4},
            headers={"authorization": "Bearer k"},
        )
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1
    finally:
        proc.terminate()
        proc.wait(timeout=30)

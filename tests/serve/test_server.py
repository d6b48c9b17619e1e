from __future__ import annotations

import asyncio
import json
import random
import time

import httpx
import openai
import pytest

from rodimus.serve.app import BackgroundServer, ServerConfig, create_app
from tests.serve.conftest import offline_greedy


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def test_health_and_models(served):
    _, _, server = served
    assert httpx.get(f"{server.url}/health").json()["status"] == "ok"
    assert [m["id"] for m in httpx.get(f"{server.url}/v1/models").json()["data"]] == ["tiny"]


def test_openai_client_streaming_and_not(served):
    engine, tok, server = served
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    prompt = "def hello(name):\n    "
    ref = tok.decode(
        offline_greedy(engine.model, tok(prompt).input_ids, 20, tok.eos_token_id), skip_special_tokens=True
    )
    r = client.completions.create(model="tiny", prompt=prompt, max_tokens=20, temperature=0)
    assert r.choices[0].text == ref and r.usage.completion_tokens >= 1
    chunks = list(
        client.completions.create(model="tiny", prompt=prompt, max_tokens=20, temperature=0, stream=True)
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == ref
    assert chunks[-1].choices[0].finish_reason in ("length", "stop")

    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi there"}]
    chat_ids = tok(
        tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True), add_special_tokens=False
    ).input_ids
    chat_ref = tok.decode(
        offline_greedy(engine.model, chat_ids, 16, tok.eos_token_id), skip_special_tokens=True
    )
    c = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=16, temperature=0)
    assert c.choices[0].message.content == chat_ref and c.choices[0].message.role == "assistant"
    stream = client.chat.completions.create(
        model="tiny",
        messages=msgs,
        max_tokens=16,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    parts, usage = [], None
    for ch in stream:
        if ch.choices:
            parts.append(ch.choices[0].delta.content or "")
        if ch.usage:
            usage = ch.usage
    assert "".join(parts) == chat_ref and usage.prompt_tokens == len(chat_ids)
    # seeded sampling is reproducible through the API
    a, b = (
        client.completions.create(
            model="tiny", prompt=prompt, max_tokens=12, temperature=1.0, top_p=0.9, seed=7
        )
        .choices[0]
        .text
        for _ in range(2)
    )
    assert a == b


def test_stop_strings_cut_output(served):
    engine, tok, server = served
    full = httpx.post(
        f"{server.url}/v1/completions",
        json={"model": "tiny", "prompt": "class A:\n", "max_tokens": 30, "temperature": 0},
    ).json()["choices"][0]["text"]
    stop = full[5:8]
    cut = httpx.post(
        f"{server.url}/v1/completions",
        json={"model": "tiny", "prompt": "class A:\n", "max_tokens": 30, "temperature": 0, "stop": [stop]},
    ).json()
    assert cut["choices"][0]["text"] == full[: full.index(stop)]
    assert cut["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize(
    "body,status,param",
    [
        (b"{not json", 400, None),
        (b"[1, 2]", 400, None),
        (json.dumps({"model": "tiny", "prompt": "x", "max_tokens": 0}).encode(), 400, "max_tokens"),
        (json.dumps({"model": "tiny", "prompt": "x", "max_tokens": 100000}).encode(), 400, "max_tokens"),
        (json.dumps({"model": "tiny", "prompt": "x", "temperature": 9}).encode(), 400, "temperature"),
        (json.dumps({"model": "tiny", "prompt": "x", "top_p": 0}).encode(), 400, "top_p"),
        (json.dumps({"model": "tiny"}).encode(), 400, "prompt"),
        (json.dumps({"model": "nope", "prompt": "x"}).encode(), 404, "model"),
        (json.dumps({"model": "tiny", "prompt": "x", "logprobs": 3}).encode(), 400, "logprobs"),
        (json.dumps({"model": "tiny", "prompt": "x", "echo": True}).encode(), 400, "echo"),
        (json.dumps({"model": "tiny", "prompt": "x" * 70000}).encode(), 413, None),
    ],
)
def test_error_bodies(served, body, status, param):
    _, _, server = served
    r = httpx.post(f"{server.url}/v1/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["message"] and err["type"]
    if param:
        assert err["param"] == param


def test_api_key_and_loopback_default(served):
    engine, tok, _ = served
    app = create_app(engine, tok, ServerConfig(model_name="tiny", api_key="s3cret"))
    with BackgroundServer(app) as server:
        assert server.host == "127.0.0.1"
        assert httpx.get(f"{server.url}/v1/models").status_code == 401
        bad = httpx.get(f"{server.url}/v1/models", headers={"authorization": "Bearer wrong"})
        assert bad.status_code == 401 and bad.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(f"{server.url}/health").status_code == 200
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="s3cret")
        assert client.completions.create(model="tiny", prompt="a", max_tokens=2).choices[0].text is not None
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{server.url}/v1", api_key="nope").models.list()


@pytest.mark.parametrize("stream", [True, False])
def test_client_disconnect_frees_slot(served, stream):
    engine, _, server = served
    body = {
        "model": "tiny",
        "prompt": "x",
        "max_tokens": 500,
        "temperature": 0,
        "ignore_eos": True,
        "stream": stream,
    }
    finished = engine.counters["finished"]
    with httpx.Client(timeout=30) as c:
        if stream:
            with c.stream("POST", f"{server.url}/v1/completions", json=body) as r:
                next(r.iter_lines())  # first event arrived: the request holds a slot
        else:
            with pytest.raises(httpx.ReadTimeout):
                c.post(f"{server.url}/v1/completions", json=body, timeout=0.3)
    deadline = time.time() + 10
    while engine.counters["finished"] == finished or engine.stats()["active"]:
        assert time.time() < deadline, "disconnected request still holds its slot"
        time.sleep(0.02)
    # it stopped long before its 500 tokens
    assert engine.counters["decode_steps"] < 10_000


def test_load_hundreds_of_concurrent_requests(served):
    """300 concurrent requests (streaming and not): every greedy answer equals offline greedy generation,
    none is lost, at most max_batch_size states are ever live and memory stays bounded."""
    engine, tok, server = served
    rng = random.Random(0)
    prompts = [f"def f{i}(x):\n    return x * {i}\n" * rng.randint(1, 4) for i in range(60)]
    max_tokens = [rng.randint(1, 16) for _ in prompts]
    refs = [
        tok.decode(
            offline_greedy(engine.model, tok(p).input_ids, n, tok.eos_token_id), skip_special_tokens=True
        )
        for p, n in zip(prompts, max_tokens, strict=True)
    ]

    async def one(client, i):
        k = i % len(prompts)
        body = {
            "model": "tiny",
            "prompt": prompts[k],
            "max_tokens": max_tokens[k],
            "temperature": 0,
            "stream": i % 3 == 0,
        }
        if not body["stream"]:
            r = await client.post("/v1/completions", json=body)
            r.raise_for_status()
            return k, r.json()["choices"][0]["text"]
        text = ""
        async with client.stream("POST", "/v1/completions", json=body) as r:
            r.raise_for_status()
            async for line in r.aiter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    text += json.loads(line[6:])["choices"][0]["text"]
        return k, text

    async def burst(n):
        limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
        async with httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits) as client:
            return await asyncio.gather(*(one(client, i) for i in range(n)))

    t0 = time.perf_counter()
    first = asyncio.run(burst(300))
    rss1 = _rss_bytes()
    second = asyncio.run(burst(300))
    rss2 = _rss_bytes()
    elapsed = time.perf_counter() - t0
    for results in (first, second):
        assert len(results) == 300
        for k, text in results:
            assert text == refs[k], f"prompt {k}"
    s = engine.stats()
    per_state = engine.counters["max_state_bytes"] / engine.counters["max_active"]
    print(
        f"\n600 requests in {elapsed:.1f} s; max active {s['max_active']}; state/request {per_state:.0f} B; "
        f"RSS growth over the second burst {(rss2 - rss1) / 2**20:.1f} MiB"
    )
    assert s["max_active"] <= engine.config.max_batch_size
    assert s["waiting"] == 0 and s["prefix_cache"]["bytes"] <= engine.config.prefix_cache_bytes
    assert rss2 - rss1 < 200 * 2**20  # a second identical burst must not keep growing the process

"""nli_cot.serve: the real server on localhost (uvicorn in a thread), called with the official openai client.

The tiny random Mistral and a LoRA adapter made here (random B matrices, so it changes the outputs) stand in for
a trained run; everything else is the production path: Hydra config, model/adapter loading, batching queue,
constrained decoding, streaming, error bodies.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
from conftest import REPO, compose, run_inprocess

from nli_cot.inference.serve import free_port, wait_healthy

openai = pytest.importorskip("openai")

NLI_SCHEMA = {
    "type": "json_schema",
    "json_schema": {
        "name": "nli_answer",
        "schema": {
            "type": "object",
            "properties": {"thought_process": {"type": "string"}, "predicted_label": {"enum": [0, 1]}},
            "required": ["thought_process", "predicted_label"],
        },
    },
}
PAIR = {"premise": "A man is sleeping on a bench.", "hypothesis": "A man is resting."}
MAX_TOKENS = 56  # the JSON frame alone needs 47 on the v3 tokenizer




def make_adapter(tiny_model_cfg, tokenizer, out: Path) -> Path:
    """A LoRA adapter on the tiny model with random B matrices (a fresh LoRA is a no-op), saved as PEFT does."""

    from nli_cot.models.modeling import attach_lora, load_base_model, randomise_lora_b

    base = load_base_model(tiny_model_cfg, tokenizer, for_training=False)
    model = attach_lora(base, compose(["lora=default"]).lora)
    randomise_lora_b(model, seed=0, scale=0.5).save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_cfg, mistral_tokenizer):
    import uvicorn

    from nli_cot.inference import serve

    adapter = make_adapter(tiny_model_cfg, mistral_tokenizer, tmp_path_factory.mktemp("serve") / "adapter")
    cfg = compose(
        [
            "model=tiny_mistral",
            f"adapters.nli={adapter}",
            "decoding.max_new_tokens=24",
            "limits.max_prompt_tokens=200",
            "limits.max_tokens=128",
            "batching.window_ms=20",
            "batching.max_batch_size=64",
        ],
        config_name="serve",
    )
    assert not serve.config_problems(cfg)
    app = serve.create_app(cfg)
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    wait_healthy(base, 60)
    yield {"base": base, "app": app, "adapter": adapter}
    srv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server["base"] + "/v1", api_key="unused", max_retries=0, timeout=120)


def test_models_and_health(server, client):
    models = {m.id: m for m in client.models.list().data}
    assert set(models) == {"tiny_mistral", "nli"}
    assert models["nli"].model_extra["parent"] == "tiny_mistral"
    assert models["nli"].model_extra["root"] == str(server["adapter"])
    health = httpx.get(server["base"] + "/health").json()
    assert health["status"] == "ok" and health["models"] == ["tiny_mistral", "nli"]


def test_chat_plain(client):
    r = client.chat.completions.create(
        model="tiny_mistral",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}],
        max_tokens=12,
    )
    assert r.object == "chat.completion" and len(r.choices) == 1
    choice = r.choices[0]
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert 1 <= r.usage.completion_tokens <= 12 and r.usage.prompt_tokens > 5
    assert not hasattr(choice, "nli") or choice.model_extra.get("nli") is None  # a plain chat is not parsed


def test_completion(client):
    r = client.completions.create(model="nli", prompt=["[INST] Hi [/INST]", "[INST] Bye [/INST]"], max_tokens=8)
    assert r.object == "text_completion" and [c.index for c in r.choices] == [0, 1]
    assert all(isinstance(c.text, str) and c.finish_reason in ("stop", "length") for c in r.choices)
    # premise/hypothesis on /v1/completions: the card's prompt, parsed answer attached
    r = client.completions.create(model="nli", prompt="", max_tokens=MAX_TOKENS, extra_body={**PAIR, "nli": True})
    text = r.choices[0].text
    assert json.loads(text)["predicted_label"] in (0, 1)
    assert r.choices[0].model_extra["nli"]["predicted_label"] == json.loads(text)["predicted_label"]


def _answer(client, model: str, **extra) -> str:
    r = client.chat.completions.create(model=model, messages=[], max_tokens=20, temperature=0,
                                       extra_body={**PAIR, **extra})
    return r.choices[0].message.content


def test_adapter_selection(client):
    base1 = _answer(client, "tiny_mistral")
    tuned1 = _answer(client, "nli")
    base2 = _answer(client, "tiny_mistral")
    tuned2 = _answer(client, "nli")
    assert base1 == base2 and tuned1 == tuned2  # greedy: switching back and forth changes nothing
    assert base1 != tuned1  # the adapter is on for "nli" and off for the base


def test_constrained_json_always_parses(server):
    """200 concurrent NLI requests (schema, json_object and the nli flag): every answer is the NLI object."""
    words = ["cat", "dog", "man", "woman", "child", "car", "tree", "house", "river", "city"]

    async def main() -> list:
        aclient = openai.AsyncOpenAI(base_url=server["base"] + "/v1", api_key="unused", max_retries=0,
                                     timeout=300)
        sem = asyncio.Semaphore(100)

        async def one(i: int):
            kind = i % 3
            extra = {"premise": f"A {words[i % 10]} is near the {words[(i * 7) % 10]}.",
                     "hypothesis": f"Something {i} is there.", "label_probs": i % 2 == 0}
            kwargs = {"response_format": NLI_SCHEMA} if kind == 0 else (
                {"response_format": {"type": "json_object"}} if kind == 1 else {})
            if kind == 2:
                extra["nli"] = True
            async with sem:
                return await aclient.chat.completions.create(
                    model="nli", messages=[], max_tokens=MAX_TOKENS,
                    extra_body=extra, **kwargs)

        try:
            return await asyncio.gather(*(one(i) for i in range(200)))
        finally:
            await aclient.close()

    before = httpx.get(server["base"] + "/metrics").json()
    responses = asyncio.run(main())
    ok = 0
    for i, r in enumerate(responses):
        obj = json.loads(r.choices[0].message.content)
        nli = r.choices[0].model_extra["nli"]
        assert set(obj) == {"thought_process", "predicted_label"} and obj["predicted_label"] in (0, 1)
        assert nli["predicted_label"] == obj["predicted_label"] and nli["rule"] == "json" and nli["ok"]
        if i % 2 == 0:
            lp = nli["label_probs"]
            assert lp is not None and 0 <= lp["p_label_1"] <= 1
        else:
            assert "label_probs" not in nli
        ok += 1
    assert ok == 200
    after = httpx.get(server["base"] + "/metrics").json()
    batches = after["batches"] - before["batches"]
    assert batches < 200  # requests shared batches
    assert max(int(k) for k in after["batch_rows_histogram"]) > 1
    assert after["latency_s"]["p99"] is not None


def test_streaming(client):
    kwargs = {"model": "nli", "messages": [{"role": "user", "content": "Tell me a story"}], "max_tokens": 16,
              "temperature": 0}
    full = client.chat.completions.create(**kwargs).choices[0].message.content
    chunks = list(client.chat.completions.create(stream=True, **kwargs))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == full and len([c for c in chunks if c.choices[0].delta.content]) > 3  # token by token
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])
    # a streamed NLI answer: constrained, parsed in the last chunk
    chunks = list(client.chat.completions.create(model="nli", messages=[], max_tokens=MAX_TOKENS, stream=True,
                                                 extra_body={**PAIR, "nli": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert json.loads(text)["predicted_label"] == chunks[-1].choices[0].model_extra["nli"]["predicted_label"]
    # completions stream too
    parts = list(client.completions.create(model="tiny_mistral", prompt="[INST] Hi [/INST]", max_tokens=6,
                                           stream=True, temperature=0))
    streamed = "".join(p.choices[0].text for p in parts)
    assert streamed == client.completions.create(model="tiny_mistral", prompt="[INST] Hi [/INST]", max_tokens=6,
                                                 temperature=0).choices[0].text


def _error(exc_info) -> dict:
    body = exc_info.value.response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def test_bad_requests(server, client):
    msg = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="nope", messages=msg)
    assert _error(e)["code"] == "model_not_found" and _error(e)["param"] == "model"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="nli", messages=[])
    assert _error(e)["param"] == "messages"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="nli", messages=[], extra_body={"premise": "A man sleeps."})
    assert _error(e)["param"] == "hypothesis" and _error(e)["code"] == "missing_field"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="nli", messages=[{"role": "user", "content": "word " * 400}])
    assert _error(e)["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="nli", prompt="hi", max_tokens=10_000)
    assert _error(e)["param"] == "max_tokens"
    with pytest.raises(openai.BadRequestError) as e:  # constrained, but too short for the JSON frame
        client.chat.completions.create(model="nli", messages=msg, max_tokens=5, extra_body={"nli": True})
    assert _error(e)["param"] == "max_tokens"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="nli", messages=msg, response_format={
            "type": "json_schema", "json_schema": {"name": "x", "schema": {"properties": {"answer": {}}}}})
    assert _error(e)["code"] == "unsupported_schema"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="nli", messages=msg, n=99)
    assert _error(e)["param"] == "n"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="nli", messages=msg, extra_body={"temperature": "hot"})
    assert _error(e)["param"] == "temperature"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="nli", messages=[{"role": "robot", "content": "hi"}])
    assert _error(e)["param"] == "messages[0]"
    url = server["base"] + "/v1/chat/completions"
    for raw in (b'{"model": "nli", "messages": [', b"\xff\xfe", b"[1, 2]"):
        r = httpx.post(url, content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json", raw
    r = httpx.post(server["base"] + "/v1/nothing", json={})
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = httpx.get(url)
    assert r.status_code == 405 and "error" in r.json()
    # none of it hurt the server
    assert client.chat.completions.create(model="nli", messages=msg, max_tokens=4).choices[0].message.content
    status = httpx.get(server["base"] + "/metrics").json()["requests_by_status"]
    assert status.get("400", 0) >= 11 and status.get("404", 0) >= 2


def test_decode_failure_is_a_500_and_the_server_goes_on(server, client):
    engine = server["app"].app.state.api.engine
    real = engine.generate

    def flaky(prompts, key, streamer=None):
        if key.max_new_tokens == 7:
            raise RuntimeError("boom")
        return real(prompts, key, streamer)

    engine.generate = flaky
    try:
        with pytest.raises(openai.InternalServerError) as e:
            client.chat.completions.create(model="nli", messages=[{"role": "user", "content": "x"}], max_tokens=7)
        assert _error(e)["code"] == "decoding_failed"
        r = client.chat.completions.create(model="nli", messages=[{"role": "user", "content": "x"}], max_tokens=3)
        assert r.choices[0].finish_reason in ("stop", "length")
    finally:
        engine.generate = real


# A raw unpaired surrogate (a token decoding to half a character) and a JSON escape of one that the parser reads
# into one: neither can be encoded as UTF-8, so rendering either once made a 500.
SURROGATE_ANSWER = '{"thought_process": "half \ud800 and \\ud800 escaped", "predicted_label": 1}'


def test_unpaired_surrogates_are_replacement_characters_not_a_500(server, client):
    from nli_cot.models.generation import BatchResult, Generation

    engine = server["app"].app.state.api.engine
    real = engine.generate

    def fake(prompts, key, streamer=None):
        if streamer is not None:
            streamer.end()  # nothing streamed token by token: the final text comes as the last delta
        gen = Generation(SURROGATE_ANSWER, 9, "json_closed")
        return BatchResult([[gen] * key.n for _ in prompts], 0.0, [len(p) for p in prompts])

    engine.generate = fake
    try:
        r = client.chat.completions.create(model="nli", messages=[], max_tokens=MAX_TOKENS,
                                           extra_body={**PAIR, "nli": True})
        assert r.choices[0].message.content == SURROGATE_ANSWER.replace("\ud800", "\ufffd")
        assert r.choices[0].model_extra["nli"]["thought_process"] == "half \ufffd and \ufffd escaped"
        r = client.completions.create(model="tiny_mistral", prompt="[INST] Hi [/INST]", max_tokens=6)
        assert "\ufffd" in r.choices[0].text
        chunks = list(client.chat.completions.create(model="nli", messages=[], max_tokens=MAX_TOKENS, stream=True,
                                                     extra_body={**PAIR, "nli": True}))
        text = "".join(c.choices[0].delta.content or "" for c in chunks)
        assert text == SURROGATE_ANSWER.replace("\ud800", "\ufffd")
        assert chunks[-1].choices[0].model_extra["nli"]["thought_process"] == "half \ufffd and \ufffd escaped"
    finally:
        engine.generate = real


def test_the_json_response_renders_unpaired_surrogates_as_replacement_characters():
    from nli_cot.inference.serve import Utf8JSONResponse

    body = Utf8JSONResponse({"a": "x\ud800y", "b": ["\ud83d\ude00"], "c": "caf\u00e9"}).body
    assert json.loads(body.decode("utf-8")) == {"a": "x\ufffdy", "b": ["\U0001f600"], "c": "caf\u00e9"}


def test_groups_and_percentiles():
    from nli_cot.inference.serve import Batcher, DecodeKey, Job, Metrics

    a = DecodeKey("m", 8, False, 1.0, 1.0, False, False, 1, None)
    b = DecodeKey("n", 8, False, 1.0, 1.0, False, False, 1, None)
    jobs = [Job([[1]] * rows, key, None) for rows, key in [(2, a), (1, b), (2, a), (1, a)]]
    groups = Batcher._groups(jobs, max_rows=4)
    assert [[j.key.model for j in g] for g in groups] == [["m", "m"], ["m"], ["n"]]
    assert Metrics.percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5 and Metrics.percentile([], 50) is None


@pytest.mark.slow
def test_cli_serves_and_rejects_bad_config(server):
    """``python -m nli_cot.serve`` as a user runs it: adapters.<name>=<dir> without '+', then a bad config -> exit 2."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="offline", PYTHONPATH=str(REPO))
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "nli_cot.serve", "model=tiny_mistral", f"adapters.abl1={server['adapter']}",
         f"port={port}", "log_level=warning"],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_healthy(base, 120, proc)
        assert [m["id"] for m in httpx.get(base + "/v1/models").json()["data"]] == ["tiny_mistral", "abl1"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    # the served process above is the process boundary; the refusal runs the same __main__ in-process
    bad = run_inprocess("nli_cot.serve", ["model=tiny_mistral", "batching.max_batch_size=0"])
    assert bad.returncode == 2 and "batching.max_batch_size" in bad.stderr

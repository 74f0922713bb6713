"""Teachers against the scripted loopback server (retries, faults, budget, fatal errors) and the tiny local model."""

from __future__ import annotations

import pytest
from fake_openai_server import FakeOpenAIServer
from omegaconf import OmegaConf

from nli_cot.teacher.teachers import (
    LocalTeacher,
    OpenAIChatTeacher,
    TeacherConfig,
    TeacherFatalError,
    teacher_id,
)


def msgs(h: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": "Answer in JSON."},
        {"role": "user", "content": f"Premise: p\nHypothesis: {h}"},
    ]


def tcfg(url: str, **kw):
    base = dict(
        name="t",
        kind="openai",
        model="fake",
        base_url=url,
        concurrency=2,
        timeout_s=2.0,
        max_retries=3,
        backoff_base_s=0.001,
        backoff_max_s=0.01,
        seed=0,
    )
    base.update(kw)
    return OmegaConf.structured(TeacherConfig(**base))


@pytest.fixture
def server():
    with FakeOpenAIServer() as s:
        yield s


def test_ok_reply_and_usage(server):
    server.script = {"h1": [{"label": 1, "thought": "Step 1: yes."}]}
    reply = OpenAIChatTeacher(tcfg(server.url)).request(msgs("h1"))
    assert reply.status == "ok" and reply.attempts == 1 and reply.finish_reason == "stop"
    assert '"predicted_label": 1' in reply.text
    assert reply.prompt_tokens == server.log[0]["usage"]["prompt_tokens"] > 0
    assert reply.completion_tokens == server.log[0]["usage"]["completion_tokens"] > 0


@pytest.mark.parametrize(
    "faults",
    [
        [{"status": 429, "retry_after": 0}],
        [{"status": 500}, {"status": 503}],
        [{"malformed": True}],
        [{"sleep": 0.6}],  # longer than the client's timeout below
        [{"status": 502}, {"malformed": True}, {"status": 429}],
    ],
)
def test_retryable_faults_are_retried(server, faults):
    server.script = {"h": [*faults, {"label": 0}]}
    reply = OpenAIChatTeacher(tcfg(server.url, timeout_s=0.3)).request(msgs("h"))
    assert reply.status == "ok" and reply.attempts == len(faults) + 1
    assert len(server.paid()) == 1


def test_retries_exhausted_fail_the_item(server):
    server.script = {"h": [{"status": 500}] * 10}
    reply = OpenAIChatTeacher(tcfg(server.url, max_retries=2)).request(msgs("h"))
    assert reply.status == "failed" and reply.attempts == 3 and "HTTP 500" in reply.error
    assert len(server.log) == 3


def test_truncated_output_is_a_reply_not_a_retry(server):
    server.script = {"h": [{"truncated": True, "label": 1}]}
    reply = OpenAIChatTeacher(tcfg(server.url)).request(msgs("h"))
    assert reply.status == "ok" and reply.finish_reason == "length" and not reply.text.rstrip().endswith("}")


def test_client_error_fails_once_and_auth_error_is_fatal(server):
    server.script = {"bad": [{"status": 400}], "auth": [{"status": 401}]}
    teacher = OpenAIChatTeacher(tcfg(server.url))
    reply = teacher.request(msgs("bad"))
    assert reply.status == "failed" and reply.attempts == 1 and "HTTP 400" in reply.error
    with pytest.raises(TeacherFatalError, match="HTTP 401"):
        teacher.request(msgs("auth"))


def test_missing_api_key_is_fatal(monkeypatch, server):
    monkeypatch.delenv("NLI_COT_TEST_KEY", raising=False)
    with pytest.raises(TeacherFatalError, match="NLI_COT_TEST_KEY is not set"):
        OpenAIChatTeacher(tcfg(server.url, api_key_env="NLI_COT_TEST_KEY"))


def test_stream_concurrency_and_budget(server):
    server.default = {"label": 1, "sleep": 0.02}
    teacher = OpenAIChatTeacher(tcfg(server.url, concurrency=3, max_requests=5))
    jobs = [(f"k{i}", msgs(f"h{i}")) for i in range(9)]
    out = dict(teacher.stream(jobs))
    assert set(out) == {f"k{i}" for i in range(9)}
    assert sum(r.status == "ok" for r in out.values()) == 5
    assert sum(r.status == "budget" for r in out.values()) == 4
    assert len(server.log) == 5  # the budget counts HTTP requests: nothing beyond it was sent


def test_budget_counts_retries(server):
    server.script = {"h0": [{"status": 500}, {"status": 500}]}
    teacher = OpenAIChatTeacher(tcfg(server.url, concurrency=1, max_requests=3))
    out = dict(teacher.stream([("a", msgs("h0")), ("b", msgs("h1"))]))
    assert out["a"].status == "ok" and out["a"].attempts == 3
    assert out["b"].status == "budget" and len(server.log) == 3


def test_consecutive_failures_stop_the_run():
    with FakeOpenAIServer(default={"status": 500}) as s:
        teacher = OpenAIChatTeacher(tcfg(s.url, concurrency=1, max_retries=0, max_consecutive_failures=3))
        seen = []
        with pytest.raises(TeacherFatalError, match="3 requests in a row failed"):
            for key, _ in teacher.stream([(f"k{i}", msgs(f"h{i}")) for i in range(50)]):
                seen.append(key)
        assert len(seen) == 3 and len(s.log) <= 3 + 2  # at most the queued-ahead requests went out


def test_connection_refused_is_retried_then_failed():
    with FakeOpenAIServer() as s:
        url = s.url
    reply = OpenAIChatTeacher(tcfg(url, max_retries=1)).request(msgs("h"))
    assert reply.status == "failed" and reply.attempts == 2 and "connection" in reply.error


def test_teacher_id():
    assert teacher_id(tcfg("http://127.0.0.1:9/v1")) == "openai:fake@127.0.0.1:9"


# --------------------------------------------------------------------------------------------- local teacher


@pytest.fixture(scope="module")
def local_teacher():
    from conftest import compose

    import nli_cot.teacher.thoughts  # noqa: F401  (registers the teacher schema)

    cfg = compose(["teacher=local_tiny", "teacher.max_tokens=6", "teacher.batch_size=2"], "thoughts").teacher
    return LocalTeacher(cfg)


def test_local_teacher_renders_mistral_inst(local_teacher):
    ids = local_teacher.render(msgs("The hypothesis."))
    tok = local_teacher.tokenizer
    assert ids[0] == tok.bos_token_id and ids[1] == tok.convert_tokens_to_ids("[INST]")
    assert ids[-1] == tok.convert_tokens_to_ids("[/INST]")
    text = tok.decode(ids[1:])
    assert (
        "Answer in JSON.\n\nPremise: p\nHypothesis: The hypothesis." in text
    )  # system folded into the user turn


def test_local_teacher_streams_every_job_in_batches(local_teacher):
    jobs = [(f"k{i}", msgs("h" * (i + 1))) for i in range(5)]  # 5 jobs, batch 2: a short last batch
    out = dict(local_teacher.stream(jobs))
    assert set(out) == {f"k{i}" for i in range(5)}
    for reply in out.values():
        assert reply.status == "ok" and isinstance(reply.text, str)
        assert 1 <= reply.completion_tokens <= 6 and reply.prompt_tokens > 20
        assert reply.finish_reason in ("stop", "length")
    assert local_teacher.teacher_id == "local:tiny_mistral"


def test_local_teacher_batching_does_not_change_greedy_output(local_teacher):
    """Left padding must not leak into the answer: a prompt alone and in a padded batch decode the same."""
    short, long = msgs("h"), msgs("a much longer hypothesis " * 4)
    alone = dict(local_teacher.stream([("s", short)]))["s"].text
    batched = dict(local_teacher.stream([("l", long), ("s", short)]))["s"].text
    assert alone == batched


def test_local_teacher_uses_a_chat_template_when_asked(local_teacher):
    tok = local_teacher.tokenizer
    old_template, old_format = tok.chat_template, local_teacher.chat_format
    tok.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}<assistant>"
    local_teacher.chat_format = "template"
    try:
        ids = local_teacher.render(msgs("H."))
        assert all(isinstance(i, int) for i in ids)
        assert tok.decode(ids) == "<system>Answer in JSON.\n<user>Premise: p\nHypothesis: H.\n<assistant>"
    finally:
        tok.chat_template, local_teacher.chat_format = old_template, old_format

"""Teachers: chat messages in, raw text out. An OpenAI-compatible HTTP client and a local transformers model.

Both implement ``stream(jobs) -> iterator of (key, Reply)`` so the stages do not care which one runs;
replies come back as they finish (not in job order) and the stage writes each one at once.

OpenAIChatTeacher (``kind: openai``: Mistral API, vLLM, llama.cpp server, our fake test server)
- ``concurrency`` worker threads, with at most ``2 * concurrency`` requests queued ahead, so a large input
  is never all in memory as futures.
- Per request: ``timeout_s`` socket timeout, up to ``max_retries`` retries with exponential back-off and jitter
  (capped at ``backoff_max_s``) on 429, 5xx, 408, timeouts, connection errors and malformed response bodies;
  a 429's ``Retry-After`` is honoured up to the cap. Other 4xx fail the item at once; 401/403/404 stop the run
  (``TeacherFatalError``: every further request would fail the same way), as do ``max_consecutive_failures``
  failed items in a row (endpoint down).
- ``max_requests``: a budget of HTTP requests (retries included) for this run; once spent, remaining jobs come
  back with ``status="budget"`` without a request. Failed and budget-skipped items are not written by the
  stages, so a re-run retries exactly those.
- Token usage is summed from the responses' ``usage``; the API key is read from the env var named by
  ``api_key_env`` and never stored.

LocalTeacher (``kind: local``)
- A transformers causal LM (+ optional PEFT adapter) from a directory or hub id, batched left-padded
  ``generate``; the chat template of the tokenizer when it has one, else Mistral's ``[INST] ... [/INST]``
  with the system message folded into the user turn (Mistral has no system role).
- Built by ``nli_cot.models.modeling`` from ``model_config`` (a ``model`` group config: tiny, 4-bit, GGUF...) or from
  ``model``/``tokenizer`` as a hub id or directory. Greedy unless ``temperature > 0``; ``finish_reason`` is
  ``length`` when no EOS came within ``max_tokens``.

Limits
- No streaming responses; ``n`` is always 1.
- Back-off sleeps block a worker thread (fine at the tens of workers an API rate limit allows).
- The local teacher runs in the calling thread and holds the whole model; no multi-GPU sharding.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from nli_cot.core.config import ModelConfig, register_schema
from nli_cot.core.records import utf8_safe

Messages = list[dict[str, str]]


class TeacherFatalError(RuntimeError):
    """The teacher cannot work at all (bad key, wrong URL/model, endpoint down): stop the run."""


@dataclass
class TeacherConfig:
    name: str = field(
        default=MISSING,
        metadata={"help": "Short name of this teacher config (recorded with every thought)."},
    )
    kind: str = field(default="openai", metadata={"help": "openai | local."})
    model: str = field(
        default=MISSING,
        metadata={"help": "model name sent to the endpoint; for local, the directory or hub id."},
    )
    # sampling
    temperature: float = field(default=0.0, metadata={"help": "Sampling temperature (0: greedy)."})
    max_tokens: int = field(default=512, metadata={"help": "Answer budget per request."})
    seed: int | None = field(
        default=None,
        metadata={"help": "Sampling seed sent to the endpoint / used locally; null: none."},
    )
    # openai-compatible endpoint
    base_url: str = field(
        default="http://127.0.0.1:8000/v1",
        metadata={"help": "kind=openai: the endpoint's /v1 URL."},
    )
    api_key_env: str | None = field(
        default=None,
        metadata={"help": "kind=openai: environment variable holding the API key; null: no key."},
    )
    json_mode: bool = field(
        default=False,
        metadata={"help": "send response_format={\"type\": \"json_object\"}."},
    )
    extra_body: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "kind=openai: extra JSON fields of every request."},
    )
    concurrency: int = field(default=4, metadata={"help": "kind=openai: requests in flight at once."})
    timeout_s: float = field(
        default=60.0,
        metadata={"help": "kind=openai: seconds per request before it counts as failed."},
    )
    max_retries: int = field(
        default=5,
        metadata={"help": "kind=openai: retries of a failed request (exponential backoff)."},
    )
    backoff_base_s: float = field(default=1.0, metadata={"help": "kind=openai: first retry delay."})
    backoff_max_s: float = field(default=30.0, metadata={"help": "kind=openai: longest retry delay."})
    max_requests: int | None = field(
        default=None,
        metadata={"help": "HTTP requests per run, retries included; None: unlimited."},
    )
    max_consecutive_failures: int = field(
        default=20,
        metadata={"help": "Stop the run after this many failed requests in a row."},
    )
    # pricing, per million tokens, for the summary's cost line
    price_prompt_per_m: float = field(
        default=0.0,
        metadata={"help": "USD per million prompt tokens (the summary's cost line only)."},
    )
    price_completion_per_m: float = field(
        default=0.0,
        metadata={"help": "USD per million completion tokens (the summary's cost line only)."},
    )
    # local transformers model, built by nli_cot.models.modeling like every other model
    model_config: ModelConfig | None = field(
        default=None,
        metadata={"help": "a `model` group config; None: hub/dir `model` + `tokenizer`, no 4-bit."},
    )
    tokenizer: str | None = field(default=None, metadata={"help": "default: same as model."})
    adapter: str | None = field(default=None, metadata={"help": "PEFT adapter directory."})
    batch_size: int = field(default=8, metadata={"help": "kind=local: prompts decoded together."})
    device: str = field(default="auto", metadata={"help": "auto: cuda if available, else cpu."})
    chat_format: str = field(default="auto", metadata={"help": "auto | template | inst."})


register_schema(TeacherConfig, group="teacher")


@dataclass
class Reply:
    text: str | None  # None unless status == "ok"
    status: str  # ok | failed | budget
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    attempts: int = 0
    error: str | None = None


def provenance(reply: Reply, teacher: str, prompt_name: str, phash: str) -> dict[str, Any]:
    """Fields every stage record carries about the request that made it: raw answer, teacher, prompt, cost, time."""
    return {
        "raw": reply.text,
        "finish_reason": reply.finish_reason,
        "teacher": teacher,
        "prompt": prompt_name,
        "prompt_hash": phash,
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": reply.completion_tokens,
        "latency_s": round(reply.latency_s, 4),
        "attempts": reply.attempts,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def teacher_id(cfg: Any) -> str:
    """What produced a record: kind, model and (for HTTP) the endpoint, e.g. ``openai:open-mistral-7b@host``."""
    if cfg.kind == "openai":
        host = cfg.base_url.split("://", 1)[-1].split("/", 1)[0]
        return f"openai:{cfg.model}@{host}"
    model = cfg.model_config.name if cfg.model_config is not None else cfg.model
    return f"local:{model}" + (f"+{cfg.adapter}" if cfg.adapter else "")


class _Budget:
    def __init__(self, limit: int | None) -> None:
        self.limit, self.used = limit, 0
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            if self.limit is not None and self.used >= self.limit:
                return False
            self.used += 1
            return True


class _Retryable(Exception):
    def __init__(self, msg: str, retry_after: float | None = None) -> None:
        super().__init__(msg)
        self.retry_after = retry_after


class OpenAIChatTeacher:
    """Concurrent, retrying client for ``POST {base_url}/chat/completions``."""

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.teacher_id = teacher_id(cfg)
        self.budget = _Budget(cfg.max_requests)
        self.url = cfg.base_url.rstrip("/") + "/chat/completions"
        self._key = os.environ.get(cfg.api_key_env, "") if cfg.api_key_env else ""
        if cfg.api_key_env and not self._key:
            raise TeacherFatalError(f"teacher {cfg.name}: environment variable {cfg.api_key_env} is not set")
        self._rng = random.Random(cfg.seed)
        self.http_requests = 0

    def _body(self, messages: Messages) -> bytes:
        body: dict[str, Any] = {
            "model": self.cfg.model,
            "messages": messages,
            "temperature": self.cfg.temperature,
            "max_tokens": self.cfg.max_tokens,
        }
        if self.cfg.seed is not None:
            body["seed"] = self.cfg.seed
        if self.cfg.json_mode:
            body["response_format"] = {"type": "json_object"}
        body.update(dict(self.cfg.extra_body))
        return json.dumps(body).encode("utf-8")

    def _post(self, payload: bytes) -> tuple[str, str | None, int, int]:
        headers = {"Content-Type": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        req = urllib.request.Request(self.url, data=payload, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.cfg.timeout_s) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            code = exc.code
            detail = exc.read()[:200].decode("utf-8", "replace").strip()
            if code == 429 or code == 408 or code >= 500:
                retry_after = _retry_after(exc.headers.get("Retry-After")) if code == 429 else None
                raise _Retryable(f"HTTP {code}", retry_after) from None
            if code in (401, 403, 404):
                raise TeacherFatalError(f"{self.url}: HTTP {code} {detail}") from None
            raise ValueError(f"HTTP {code} {detail}") from None
        except TimeoutError:
            raise _Retryable(f"timeout after {self.cfg.timeout_s}s") from None
        except (urllib.error.URLError, ConnectionError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, TimeoutError):
                raise _Retryable(f"timeout after {self.cfg.timeout_s}s") from None
            raise _Retryable(f"connection error: {reason}") from None
        try:
            data = json.loads(raw)
            choice = data["choices"][0]
            text = choice["message"]["content"]
            if not isinstance(text, str):
                raise TypeError("content is not a string")
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise _Retryable(f"malformed response body ({type(exc).__name__})") from None
        usage = data.get("usage") or {}
        return (
            text,
            choice.get("finish_reason"),
            int(usage.get("prompt_tokens") or 0),
            int(usage.get("completion_tokens") or 0),
        )

    def request(self, messages: Messages) -> Reply:
        """One chat completion with retries; never raises except TeacherFatalError."""
        payload = self._body(messages)
        start = time.monotonic()
        attempts = 0
        last_error = ""
        while attempts <= self.cfg.max_retries:
            if not self.budget.take():
                return Reply(
                    None,
                    "budget",
                    attempts=attempts,
                    error="request budget spent",
                    latency_s=time.monotonic() - start,
                )
            attempts += 1
            try:
                text, finish, p_tok, c_tok = self._post(payload)
                return Reply(text, "ok", finish, p_tok, c_tok, time.monotonic() - start, attempts)
            except _Retryable as exc:
                last_error = str(exc)
                if attempts > self.cfg.max_retries:
                    break
                delay = min(self.cfg.backoff_max_s, self.cfg.backoff_base_s * 2 ** (attempts - 1))
                delay *= 0.5 + 0.5 * self._rng.random()  # jitter: workers that failed together retry apart
                if exc.retry_after is not None:
                    delay = max(delay, min(exc.retry_after, self.cfg.backoff_max_s))
                time.sleep(delay)
            except ValueError as exc:  # a non-retryable client error for this item only
                last_error = str(exc)
                break
        return Reply(None, "failed", attempts=attempts, error=last_error, latency_s=time.monotonic() - start)

    def stream(self, jobs: Iterable[tuple[str, Messages]]) -> Iterator[tuple[str, Reply]]:
        """Run jobs concurrently; yield (key, reply) as each finishes."""
        it = iter(jobs)
        ahead = max(1, 2 * self.cfg.concurrency)
        consecutive_failures = 0
        pool = ThreadPoolExecutor(max_workers=max(1, self.cfg.concurrency), thread_name_prefix="teacher")
        pending: dict[Future[Reply], str] = {}
        try:
            exhausted = False
            while True:
                while not exhausted and len(pending) < ahead:
                    try:
                        key, messages = next(it)
                    except StopIteration:
                        exhausted = True
                        break
                    pending[pool.submit(self.request, messages)] = key
                if not pending:
                    return
                done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
                for fut in done:
                    key = pending.pop(fut)
                    reply = fut.result()  # TeacherFatalError propagates from here
                    consecutive_failures = consecutive_failures + 1 if reply.status == "failed" else 0
                    yield key, reply
                    if consecutive_failures >= self.cfg.max_consecutive_failures:
                        raise TeacherFatalError(
                            f"{self.url}: {consecutive_failures} requests in a row failed (last: {reply.error})"
                        )
        finally:
            for fut in pending:
                fut.cancel()
            pool.shutdown(wait=True, cancel_futures=True)

    def close(self) -> None:
        pass


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date; the exponential back-off is good enough


class LocalTeacher:
    """A transformers causal LM generating in batches on this machine."""

    def __init__(self, cfg: Any) -> None:
        import torch

        from nli_cot.models import modeling

        self.cfg = cfg
        self.teacher_id = teacher_id(cfg)
        self.torch = torch
        model_cfg = cfg.model_config
        if model_cfg is None:
            model_cfg = ModelConfig(
                name=cfg.model, source="hub", name_or_path=cfg.model, tokenizer=cfg.tokenizer
            )
        self.tokenizer = modeling.load_tokenizer(model_cfg)
        self.tokenizer.padding_side = "left"  # generation continues from the right edge of every row
        model = modeling.load_base_model(model_cfg, self.tokenizer)
        if cfg.adapter:
            model = modeling.load_adapter(model, cfg.adapter)
        device = cfg.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if not getattr(model, "is_loaded_in_4bit", False):  # 4-bit weights were placed by device_map already
            model = model.to(device)
        self.device = next(model.parameters()).device
        self.model = model.eval()
        fmt = cfg.chat_format
        if fmt == "auto":
            fmt = "template" if getattr(self.tokenizer, "chat_template", None) else "inst"
        self.chat_format = fmt

    def render(self, messages: Messages) -> list[int]:
        """Prompt token ids for a chat: the tokenizer's template, or Mistral [INST] with BOS."""
        if self.chat_format == "template":
            ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
            return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
        system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
        parts: list[str] = []
        for m in messages:
            if m["role"] == "user":
                content = f"{system}\n\n{m['content']}" if system and not parts else m["content"]
                parts.append(f"[INST] {content} [/INST]")
            elif m["role"] == "assistant":
                parts.append(f" {m['content']}</s>")
        ids = self.tokenizer.encode("".join(parts), add_special_tokens=False)
        bos = self.tokenizer.bos_token_id
        return ([bos] if bos is not None else []) + ids

    def _generate(self, batch: list[list[int]]) -> list[tuple[list[int], int]]:
        torch = self.torch
        width = max(len(x) for x in batch)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for i, ids in enumerate(batch):
            input_ids[i, width - len(ids) :] = torch.tensor(ids)
            attention[i, width - len(ids) :] = 1
        sample = self.cfg.temperature > 0
        kwargs: dict[str, Any] = {
            "do_sample": sample,
            "max_new_tokens": self.cfg.max_tokens,
            "pad_token_id": pad,
        }
        if sample:
            kwargs["temperature"] = self.cfg.temperature
        if self.cfg.seed is not None:
            torch.manual_seed(self.cfg.seed)
        with torch.no_grad():
            out = self.model.generate(
                input_ids=input_ids.to(self.device), attention_mask=attention.to(self.device), **kwargs
            )
        eos = self.tokenizer.eos_token_id
        results = []
        for row in out[:, width:].tolist():
            n = row.index(eos) + 1 if eos in row else len(row)
            results.append((row[:n], n))
        return results

    def stream(self, jobs: Iterable[tuple[str, Messages]]) -> Iterator[tuple[str, Reply]]:
        buf: deque[tuple[str, list[int]]] = deque()
        for key, messages in jobs:
            buf.append((key, self.render(messages)))
            if len(buf) >= self.cfg.batch_size:
                yield from self._run(buf)
        if buf:
            yield from self._run(buf)

    def _run(self, buf: deque[tuple[str, list[int]]]) -> Iterator[tuple[str, Reply]]:
        items = list(buf)
        buf.clear()
        start = time.monotonic()
        outs = self._generate([ids for _, ids in items])
        per_item = (time.monotonic() - start) / len(items)
        eos = self.tokenizer.eos_token_id
        for (key, prompt_ids), (gen, n) in zip(items, outs, strict=True):
            text = utf8_safe(self.tokenizer.decode(gen, skip_special_tokens=True))
            finish = "stop" if gen and gen[-1] == eos else "length"
            yield key, Reply(text, "ok", finish, len(prompt_ids), n, per_item, 1)

    def close(self) -> None:
        pass


def make_teacher(cfg: Any) -> OpenAIChatTeacher | LocalTeacher:
    """The teacher named by ``cfg.kind``."""
    if cfg.kind == "openai":
        return OpenAIChatTeacher(cfg)
    if cfg.kind == "local":
        return LocalTeacher(cfg)
    raise TeacherFatalError(f"teacher.kind must be 'openai' or 'local', got {cfg.kind!r}")

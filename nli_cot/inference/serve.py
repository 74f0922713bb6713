"""Stage: an OpenAI-compatible HTTP server for the base model and its LoRA adapters.

    python -m nli_cot.serve model=mistral_7b_v0_3 adapters.abl1=outputs/runs/abl1/checkpoint-1250 port=8000

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")
    r = client.chat.completions.create(model="abl1", messages=[], response_format={"type": "json_object"},
                                       extra_body={"premise": "A man sleeps.", "hypothesis": "A man rests."})
    r.choices[0].message.content    # '{"thought_process": "...", "predicted_label": 1}', always parses
    r.choices[0].nli                # {"predicted_label": 1, "thought_process": "...", "rule": "json", "ok": true}

Features
- Endpoints: ``/v1/models``, ``/v1/chat/completions``, ``/v1/completions`` (OpenAI request/response layout),
  ``/health`` and ``/metrics`` (request counts by status, latency p50/p90/p99 over the last requests, batches,
  the GPU's peak memory).
- Models: the base model (``base_name``, the model's name by default) and every ``adapters.<name>=<dir>`` (a PEFT
  folder, e.g. a ``checkpoint-<step>`` of a run), loaded once onto one base through ``nli_cot.models.modeling``; the
  request's ``model`` picks one (PEFT ``set_adapter``, or ``disable_adapter`` for the base).
- Prompts: a request with ``premise`` and ``hypothesis`` (extra body fields) gets the configured prompt of
  ``nli_cot.core.prompts`` (the card's ``[INST] ... [/INST]`` by default), exactly as in training and ``predict``;
  otherwise the client's messages are rendered (the tokenizer's chat template for ``prompt.style=chat``, the
  ``[INST]`` turns for ``inst``) or, on ``/v1/completions``, its prompt text is used as is.
- Always-valid NLI JSON: ``response_format`` ``json_object``, or ``json_schema`` with the NLI schema (properties
  ``thought_process`` and ``predicted_label``), or ``"nli": true`` turns on ``nli_cot.models.generation``'s constrained
  decoding, so the content is ``{"thought_process": "...", "predicted_label": 0|1}``. Every choice of an NLI
  request (constrained or with premise/hypothesis) carries ``nli``: the parsed label, thought and parse rule
  (``nli_cot.core.parsing``), and with ``"label_probs": true`` the label probabilities P("0"), P("1").
- Batching: requests wait in an asyncio queue up to ``batching.window_ms`` for company, then the queued requests
  with the same model and decoding settings are decoded together by ``generate_batch`` (at most
  ``batching.max_batch_size`` rows); the model runs in one worker thread, so the event loop keeps accepting.
  ``window_ms=0 max_batch_size=1`` is the one-at-a-time server (``experiments/serve_load.py`` compares both).
- ``stream=true`` (chat and completions): Server-Sent Events in the OpenAI chunk format, token by token,
  ending with ``data: [DONE]``; the last chunk carries the finish reason (and ``nli`` for NLI requests).
- Bad requests get a 4xx with an OpenAI error body ``{"error": {"message", "type", "param", "code"}}``: invalid
  JSON, a missing or mistyped field, an unknown model (404), an oversize prompt (``context_length_exceeded``),
  a full queue (429); a failure while decoding answers that batch's requests with a 500 and the server goes on.

Limits
- One process, one model copy, one decode at a time (batched); for production throughput serve the same adapter
  folder with vLLM (README, "Serve").
- Rows of a batch share their decoding settings; a request is never split, and a streamed request is decoded
  alone (transformers' streamers take one row).
- ``seed`` seeds the torch generator before the request's batch: with batching, reproducible only alone.
- ``stop`` strings cut the returned text after decoding (the model still decodes up to its own stop); they are not
  supported with ``stream=true``. ``logprobs``, tools and function calling are not supported (400).
- No authentication: the API key is ignored; bind to 127.0.0.1 (the default) unless behind a proxy.
- A request whose client goes away is skipped if still queued; a batch already decoding runs to its end.
- ``/metrics`` is JSON (not the Prometheus text format); latency percentiles cover the last ``metrics_window``
  answered API requests, measured in the server (queue wait + decode + response).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import sys
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import hydra
import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from omegaconf import MISSING, DictConfig, OmegaConf
from starlette.exceptions import HTTPException as StarletteHTTPException

from nli_cot.core.config import ModelConfig, PromptConfig, register_schema
from nli_cot.core.parsing import parse_output
from nli_cot.core.records import utf8_safe
from nli_cot.models.generation import (
    BatchResult,
    DecodingConfig,
    Generation,
    decode_text,
    frame_grammar,
    generate_batch,
)

log = logging.getLogger(__name__)
EXIT_BAD_INPUT = 2
NLI_KEYS = {"thought_process", "predicted_label"}


# --------------------------------------------------------------------------------------------- config


@dataclass
class BatchingConfig:
    window_ms: float = field(
        default=5.0,
        metadata={"help": "how long the first queued request waits for others to join its batch."},
    )
    max_batch_size: int = field(
        default=16,
        metadata={"help": "rows (prompts x n) decoded together at most."},
    )
    max_queue: int = field(default=1024, metadata={"help": "requests waiting at most; beyond that 429."})


@dataclass
class LimitsConfig:
    max_prompt_tokens: int = field(
        default=2048,
        metadata={"help": "a longer prompt is a 400 context_length_exceeded."},
    )
    max_tokens: int = field(default=1024, metadata={"help": "the largest max_tokens a request may ask for."})
    max_n: int = field(default=8, metadata={"help": "choices per request."})
    max_prompts: int = field(default=64, metadata={"help": "prompts of one /v1/completions request."})
    max_body_bytes: int = field(default=1_000_000, metadata={"help": "Largest request body (larger: 413)."})


@dataclass
class ServeConfig:
    model: ModelConfig = field(default=MISSING, metadata={"help": "The base model (conf/model/)."})
    prompt: PromptConfig = field(
        default=MISSING,
        metadata={"help": "The prompt that premise/hypothesis requests are rendered with (conf/prompt/)."},
    )
    adapters: dict[str, str] = field(
        default_factory=lambda: OmegaConf.create({}, flags={"struct": False}),
        metadata={
            "help": "served name -> PEFT adapter folder; a dict that takes new keys without Hydra's"
            " '+': adapters.<name>=<dir>."
        },
    )
    base_name: str = field(
        default=MISSING,
        metadata={"help": "the base model's id in /v1/models and in requests."},
    )
    decoding: DecodingConfig = field(
        default_factory=DecodingConfig,
        metadata={"help": "server defaults; requests override some."},
    )
    batching: BatchingConfig = field(
        default_factory=BatchingConfig,
        metadata={"help": "How requests share decoding batches."},
    )
    limits: LimitsConfig = field(
        default_factory=LimitsConfig,
        metadata={"help": "Per-request limits (larger requests get a 4xx)."},
    )
    host: str = field(
        default="127.0.0.1",
        metadata={"help": "Interface to listen on (loopback only by default: there is no authentication)."},
    )
    port: int = field(default=8000, metadata={"help": "TCP port (0: any free port, logged)."})
    metrics_window: int = field(default=10000, metadata={"help": "latencies kept for the percentiles."})
    log_level: str = field(default="info", metadata={"help": "uvicorn's log level."})


register_schema(ServeConfig, name="serve_schema")


class ServeError(RuntimeError):
    """A user-facing problem with the server's configuration (one line, no traceback)."""


def config_problems(cfg: Any) -> list[str]:
    """Range checks of the serve-only keys (``nli_cot.core.checks`` covers model and decoding)."""
    b, lim = cfg.batching, cfg.limits
    checks = [
        ("batching.window_ms", b.window_ms >= 0, ">= 0"),
        ("batching.max_batch_size", b.max_batch_size > 0, "> 0"),
        ("batching.max_queue", b.max_queue > 0, "> 0"),
        ("limits.max_prompt_tokens", lim.max_prompt_tokens > 0, "> 0"),
        ("limits.max_tokens", lim.max_tokens > 0, "> 0"),
        ("limits.max_n", lim.max_n > 0, "> 0"),
        ("limits.max_prompts", lim.max_prompts > 0, "> 0"),
        ("limits.max_body_bytes", lim.max_body_bytes > 0, "> 0"),
        ("port", 0 <= cfg.port < 65536, "in [0, 65536)"),
        ("metrics_window", cfg.metrics_window > 0, "> 0"),
    ]
    problems = [f"{key} must be {spec}" for key, ok, spec in checks if not ok]
    for name in cfg.adapters:
        if name == cfg.base_name:
            problems.append(f"adapters.{name}: the name is base_name's; pick another")
    return problems


# --------------------------------------------------------------------------------------------- errors


class ApiError(Exception):
    """A request the server refuses: an HTTP status and an OpenAI-style error body."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        type_: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type_

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


# --------------------------------------------------------------------------------------------- engine


@dataclass(frozen=True)
class DecodeKey:
    """Everything that must be equal for two requests to share a batch."""

    model: str
    max_new_tokens: int
    do_sample: bool
    temperature: float
    top_p: float
    constrained: bool
    label_probs: bool
    n: int
    seed: int | None


class Engine:
    """The model, its adapters and tokenizer; ``generate`` runs in the single model thread."""

    def __init__(self, cfg: Any, tokenizer: Any, model: Any, adapter_names: dict[str, str]) -> None:
        self.cfg, self.tokenizer, self.model = cfg, tokenizer, model
        self.adapter_names = adapter_names  # served name -> PEFT adapter name
        self.base_name = str(cfg.base_name)
        self.decoding: DecodingConfig = OmegaConf.to_object(cfg.decoding)
        self.completion_prefix = str(cfg.prompt.completion_prefix)
        self.models = [self.base_name, *adapter_names]
        self.created = int(time.time())

    @classmethod
    def load(cls, cfg: Any) -> Engine:
        """Base model + every adapter of ``cfg.adapters`` through ``nli_cot.models.modeling``."""
        from nli_cot.models.modeling import load_adapter, load_base_model, load_tokenizer

        tokenizer = load_tokenizer(cfg.model)
        model = load_base_model(cfg.model, tokenizer, for_training=False)
        names: dict[str, str] = {}
        for served, path in cfg.adapters.items():
            if not names:
                model = load_adapter(model, str(path))  # PeftModel; its first adapter is "default"
                names[str(served)] = "default"
            else:
                from nli_cot.models.modeling import ModelSetupError

                try:
                    model.load_adapter(str(path), adapter_name=str(served))
                except (OSError, ValueError) as err:
                    raise ModelSetupError(f"cannot load adapter {served!r} from {str(path)!r}: {err}") from err
                names[str(served)] = str(served)
        if torch.cuda.is_available() and next(model.parameters()).device.type == "cpu":
            model = model.to("cuda")
        model.eval()
        return cls(cfg, tokenizer, model, names)

    @contextlib.contextmanager
    def _use(self, name: str) -> Iterator[None]:
        if not self.adapter_names:
            yield
        elif name == self.base_name:
            with self.model.disable_adapter():
                yield
        else:
            self.model.set_adapter(self.adapter_names[name])
            yield

    def decoding_for(self, key: DecodeKey) -> DecodingConfig:
        return dataclasses.replace(
            self.decoding,
            max_new_tokens=key.max_new_tokens,
            do_sample=key.do_sample,
            temperature=key.temperature,
            top_p=key.top_p,
            constrained=key.constrained,
            label_probs=key.label_probs,
            self_consistency=1,
        )

    def generate(self, prompts: list[list[int]], key: DecodeKey, streamer: Any = None) -> BatchResult:
        with self._use(key.model):
            if key.seed is not None:
                torch.manual_seed(key.seed)
            return generate_batch(
                self.model,
                self.tokenizer,
                prompts,
                self.decoding_for(key),
                num_samples=key.n,
                completion_prefix=self.completion_prefix,
                streamer=streamer,
            )


# --------------------------------------------------------------------------------------------- batching


class TokenStream:
    """A transformers streamer that hands each new token id to the event loop (prompt skipped)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop, self.queue = loop, asyncio.Queue()
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True  # generate() first pushes the prompt
            return
        ids = value.flatten().tolist()
        self.loop.call_soon_threadsafe(self.queue.put_nowait, ids)

    def end(self) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, None)


@dataclass
class Job:
    prompts: list[list[int]]
    key: DecodeKey
    future: asyncio.Future
    streamer: TokenStream | None = None

    @property
    def rows(self) -> int:
        return len(self.prompts) * self.key.n


@dataclass
class JobResult:
    outputs: list[list[Generation]]  # per prompt, n samples
    batch_rows: int
    seconds: float


class Batcher:
    """Collects queued jobs for ``window_ms`` and decodes each group of equal settings in one batch."""

    def __init__(self, engine: Engine, cfg: Any, metrics: Metrics) -> None:
        self.engine, self.metrics = engine, metrics
        self.window = float(cfg.window_ms) / 1000.0
        self.max_rows = int(cfg.max_batch_size)
        self.max_queue = int(cfg.max_queue)
        self.queue: asyncio.Queue[Job] = asyncio.Queue()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nli-serve-model")
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        self.executor.shutdown(wait=False, cancel_futures=True)

    def enqueue(self, job: Job) -> None:
        """Queue ``job`` (its future gets the result), or a 429 when the queue is full."""
        if self.queue.qsize() >= self.max_queue:
            raise ApiError(429, f"the queue is full ({self.max_queue} requests); retry later", None,
                           "queue_full", "rate_limit_error")
        self.queue.put_nowait(job)

    async def _collect(self) -> list[Job]:
        first = await self.queue.get()
        batch = [first]
        if first.streamer is not None:
            return batch
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.window
        rows = first.rows
        while True:
            while rows < self.max_rows and not self.queue.empty():
                job = self.queue.get_nowait()
                batch.append(job)
                rows += job.rows
            remaining = deadline - loop.time()
            if rows >= self.max_rows or remaining <= 0:
                return batch
            await asyncio.sleep(min(remaining, 0.001))

    @staticmethod
    def _groups(jobs: list[Job], max_rows: int) -> list[list[Job]]:
        """Jobs of equal settings together (arrival order kept), at most ``max_rows`` rows a group."""
        by_key: dict[Any, list[list[Job]]] = {}
        for job in jobs:
            key = ("stream", id(job)) if job.streamer is not None else job.key
            chunks = by_key.setdefault(key, [[]])
            if chunks[-1] and sum(j.rows for j in chunks[-1]) + job.rows > max_rows:
                chunks.append([])
            chunks[-1].append(job)
        return [chunk for chunks in by_key.values() for chunk in chunks]

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._collect()
            for group in self._groups(jobs, self.max_rows):
                live = [j for j in group if not j.future.done()]  # a cancelled request is not decoded
                if not live:
                    continue
                prompts = [p for j in live for p in j.prompts]
                try:
                    result = await loop.run_in_executor(
                        self.executor, self.engine.generate, prompts, live[0].key, live[0].streamer
                    )
                except Exception as err:  # one bad batch answers its requests with 500, the server goes on
                    log.exception("decoding a batch of %d prompts failed", len(prompts))
                    if live[0].streamer is not None:
                        live[0].streamer.end()
                    for job in live:
                        if not job.future.done():
                            job.future.set_exception(
                                ApiError(500, f"decoding failed: {type(err).__name__}: {err}", None,
                                         "decoding_failed", "server_error")
                            )
                    continue
                self.metrics.record_batch(len(live), len(prompts) * live[0].key.n)
                start = 0
                for job in live:
                    part = result.outputs[start : start + len(job.prompts)]
                    start += len(job.prompts)
                    if not job.future.done():
                        job.future.set_result(JobResult(part, len(prompts) * job.key.n, result.seconds))


# --------------------------------------------------------------------------------------------- metrics


class Metrics:
    """Request counts by path and status, latency percentiles of the answered API requests, batch sizes."""

    def __init__(self, window: int) -> None:
        self.started = time.time()
        self.requests = Counter()
        self.status = Counter()
        self.latencies: deque[float] = deque(maxlen=window)
        self.batches = 0
        self.batch_rows = Counter()
        self.generated_tokens = 0
        self.lock = threading.Lock()

    def record(self, path: str, status: int, seconds: float) -> None:
        with self.lock:
            self.requests[path] += 1
            self.status[str(status)] += 1
            if path.startswith("/v1/") and status < 400:
                self.latencies.append(seconds)

    def record_batch(self, jobs: int, rows: int) -> None:
        with self.lock:
            self.batches += 1
            self.batch_rows[rows] += 1

    @staticmethod
    def percentile(values: list[float], q: float) -> float | None:
        """Linear-interpolated percentile (numpy's default) of ``values``; None when empty."""
        if not values:
            return None
        s = sorted(values)
        pos = (len(s) - 1) * q / 100
        lo, hi = math.floor(pos), math.ceil(pos)
        return s[lo] + (s[hi] - s[lo]) * (pos - lo)

    def snapshot(self, queue_depth: int) -> dict[str, Any]:
        with self.lock:
            lat = list(self.latencies)
            rows = sum(k * v for k, v in self.batch_rows.items())
            return {
                "uptime_s": time.time() - self.started,
                "requests_total": sum(self.requests.values()),
                "requests_by_path": dict(self.requests),
                "requests_by_status": dict(self.status),
                "latency_s": {
                    "count": len(lat),
                    "p50": self.percentile(lat, 50),
                    "p90": self.percentile(lat, 90),
                    "p99": self.percentile(lat, 99),
                    "mean": sum(lat) / len(lat) if lat else None,
                },
                "batches": self.batches,
                "mean_batch_rows": rows / self.batches if self.batches else None,
                "batch_rows_histogram": {str(k): v for k, v in sorted(self.batch_rows.items())},
                "generated_tokens": self.generated_tokens,
                "queue_depth": queue_depth,
                "cuda": cuda_memory(),
            }


def cuda_memory() -> dict[str, Any] | None:
    """This process's GPU and its peak memory (torch's allocator) since start; None without CUDA."""
    if not torch.cuda.is_available():
        return None
    return {"device": torch.cuda.get_device_name(), "max_memory_reserved_bytes": torch.cuda.max_memory_reserved(),
            "max_memory_allocated_bytes": torch.cuda.max_memory_allocated()}


class MetricsMiddleware:
    """Pure ASGI middleware: status and wall time of every HTTP request, streamed bodies included."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}

        async def send_status(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.record(scope.get("path", ""), status["code"], time.perf_counter() - start)


# --------------------------------------------------------------------------------------------- requests


@dataclass
class Parsed:
    model: str
    prompts: list[list[int]]
    key: DecodeKey
    stream: bool
    nli: bool  # attach the parsed answer to every choice
    stop: list[str]


def _get(body: dict, name: str, types: tuple[type, ...], default: Any = None, what: str = "") -> Any:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) and bool not in types:
        value = object()  # True is an int in Python, never in a request
    if not isinstance(value, types):
        raise ApiError(400, f"'{name}' must be {what or ' or '.join(t.__name__ for t in types)}", name,
                       "invalid_type")
    return value


def _nli_format(body: dict) -> bool:
    """Whether ``response_format`` asks for the NLI JSON (json_object, or json_schema with our schema)."""
    fmt = body.get("response_format")
    if fmt is None:
        return False
    if not isinstance(fmt, dict) or fmt.get("type") not in ("text", "json_object", "json_schema"):
        raise ApiError(400, "response_format.type must be text, json_object or json_schema", "response_format",
                       "invalid_value")
    if fmt["type"] == "text":
        return False
    if fmt["type"] == "json_schema":
        spec = fmt.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        props = schema.get("properties") if isinstance(schema, dict) else None
        if not isinstance(props, dict) or set(props) != NLI_KEYS:
            raise ApiError(
                400,
                "response_format json_schema: only the NLI answer schema is supported (an object with the "
                "properties thought_process and predicted_label)",
                "response_format",
                "unsupported_schema",
            )
    return True


class Api:
    """Request validation, prompt rendering and response building around one Engine and Batcher."""

    def __init__(self, cfg: Any, engine: Engine, batcher: Batcher, metrics: Metrics) -> None:
        self.cfg, self.engine, self.batcher, self.metrics = cfg, engine, batcher, metrics
        self.tokenizer = engine.tokenizer

    # ---------------------------------------------------------------------- prompt rendering

    def _bos(self, ids: list[int]) -> list[int]:
        p, bos = self.cfg.prompt, self.tokenizer.bos_token_id
        return [bos, *ids] if p.style == "inst" and p.add_bos and bos is not None else ids

    def _nli_prompt(self, body: dict) -> list[int] | None:
        premise, hypothesis = body.get("premise"), body.get("hypothesis")
        if premise is None and hypothesis is None:
            return None
        for name, value in (("premise", premise), ("hypothesis", hypothesis)):
            if not isinstance(value, str) or not value.strip():
                raise ApiError(400, f"'{name}' must be a non-empty string (premise and hypothesis go together)",
                               name, "missing_field" if value is None else "invalid_type")
        from nli_cot.core.prompts import encode_prompt

        return encode_prompt(premise, hypothesis, self.cfg.prompt, self.tokenizer)

    def _messages_prompt(self, messages: Any) -> list[int]:
        if not isinstance(messages, list) or not messages:
            raise ApiError(400, "'messages' must be a non-empty list (or send premise and hypothesis)", "messages",
                           "missing_field" if messages is None else "invalid_type")
        turns: list[tuple[str, str]] = []
        for i, msg in enumerate(messages):
            role = msg.get("role") if isinstance(msg, dict) else None
            content = msg.get("content") if isinstance(msg, dict) else None
            if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
                if not all(isinstance(c, dict) and c.get("type") == "text" and isinstance(c.get("text"), str)
                           for c in content):
                    raise ApiError(400, f"messages[{i}].content: only text parts are supported",
                                   f"messages[{i}].content", "invalid_type")
                content = "".join(c["text"] for c in content)
            if role not in ("system", "developer", "user", "assistant") or not isinstance(content, str):
                raise ApiError(400, f"messages[{i}] must have a role (system, user, assistant) and text content",
                               f"messages[{i}]", "invalid_type")
            turns.append(("system" if role == "developer" else role, content))
        if not any(role == "user" for role, _ in turns):
            raise ApiError(400, "'messages' needs at least one user message", "messages", "missing_field")
        p = self.cfg.prompt
        if p.style == "chat":
            msgs = [{"role": r, "content": c} for r, c in turns]
            text = self.tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
            return self.tokenizer.encode(text, add_special_tokens=False)
        # Mistral [INST] turns: system text goes before the first user message, as Mistral's own template does.
        system = "\n\n".join(c for r, c in turns if r == "system")
        text, ids = "", self._bos([])
        first_user = True
        for role, content in turns:
            if role == "user":
                if first_user and system:
                    content = f"{system}\n\n{content}"
                first_user = False
                text += f"{p.inst_open}{content}{p.inst_close}"
            elif role == "assistant":
                ids += self.tokenizer.encode(text + p.completion_prefix + content, add_special_tokens=False)
                ids.append(self.tokenizer.eos_token_id)
                text = ""
        return ids + self.tokenizer.encode(text, add_special_tokens=False)

    def _completion_prompts(self, prompt: Any) -> list[list[int]]:
        if isinstance(prompt, str):
            prompt = [prompt]
        if not isinstance(prompt, list) or not prompt or not all(isinstance(x, str) for x in prompt):
            raise ApiError(400, "'prompt' must be a string or a non-empty list of strings (or send premise and "
                           "hypothesis)", "prompt", "missing_field" if prompt is None else "invalid_type")
        if len(prompt) > self.cfg.limits.max_prompts:
            raise ApiError(400, f"at most {self.cfg.limits.max_prompts} prompts per request", "prompt",
                           "too_many_prompts")
        return [self._bos(self.tokenizer.encode(x, add_special_tokens=False)) for x in prompt]

    # ---------------------------------------------------------------------- validation

    def parse(self, body: Any, chat: bool) -> Parsed:
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object", None, "invalid_json")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise ApiError(400, "'model' is required: " + ", ".join(self.engine.models), "model", "missing_field")
        if model not in self.engine.models:
            raise ApiError(404, f"the model {model!r} does not exist; served: {', '.join(self.engine.models)}",
                           "model", "model_not_found")
        for unsupported in ("tools", "functions", "logprobs", "echo", "best_of"):
            if body.get(unsupported) not in (None, False, [], 1 if unsupported == "best_of" else None):
                raise ApiError(400, f"'{unsupported}' is not supported by this server", unsupported,
                               "unsupported_parameter")
        lim, dec = self.cfg.limits, self.engine.decoding
        stream = bool(_get(body, "stream", (bool,), False))
        nli_flag = bool(_get(body, "nli", (bool,), False))
        constrained = _nli_format(body) or nli_flag
        label_probs = bool(_get(body, "label_probs", (bool,), False))
        n = _get(body, "n", (int,), 1, "an integer")
        if not 1 <= n <= lim.max_n:
            raise ApiError(400, f"'n' must be in [1, {lim.max_n}]", "n", "invalid_value")
        max_name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
        max_tokens = _get(body, max_name, (int,), min(dec.max_new_tokens, lim.max_tokens), "an integer")
        if not 1 <= max_tokens <= lim.max_tokens:
            raise ApiError(400, f"'{max_name}' must be in [1, {lim.max_tokens}]", max_name, "invalid_value")
        temperature = _get(body, "temperature", (int, float), None, "a number")
        if temperature is not None and not 0 <= temperature <= 2:
            raise ApiError(400, "'temperature' must be in [0, 2]", "temperature", "invalid_value")
        top_p = _get(body, "top_p", (int, float), dec.top_p, "a number")
        if not 0 < top_p <= 1:
            raise ApiError(400, "'top_p' must be in (0, 1]", "top_p", "invalid_value")
        seed = _get(body, "seed", (int,), None, "an integer")
        stop = body.get("stop")
        stop = [stop] if isinstance(stop, str) else stop
        if stop is not None and (not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop)):
            raise ApiError(400, "'stop' must be a string or a list of strings", "stop", "invalid_type")
        if stop and stream:
            raise ApiError(400, "'stop' is not supported with stream=true", "stop", "unsupported_parameter")
        if stream and n > 1:
            raise ApiError(400, "stream=true takes n=1", "n", "unsupported_parameter")
        do_sample = dec.do_sample if temperature is None else temperature > 0
        if n > 1 and temperature == 0:
            raise ApiError(400, "n > 1 needs sampling (temperature > 0)", "n", "invalid_value")
        if temperature is None or temperature == 0:
            temperature = dec.temperature
        if constrained:
            try:
                frame_grammar(dataclasses.replace(dec, max_new_tokens=max_tokens), self.engine.completion_prefix)
            except ValueError as err:
                raise ApiError(400, str(err).replace("decoding.max_new_tokens", max_name), max_name,
                               "invalid_value") from err

        nli_ids = self._nli_prompt(body)
        if nli_ids is not None:
            prompts = [nli_ids]
        elif chat:
            prompts = [self._messages_prompt(body.get("messages"))]
        else:
            prompts = self._completion_prompts(body.get("prompt"))
        if stream and len(prompts) > 1:
            raise ApiError(400, "stream=true takes one prompt", "prompt", "unsupported_parameter")
        longest = max(len(p) for p in prompts)
        if longest > lim.max_prompt_tokens:
            raise ApiError(400, f"the prompt has {longest} tokens; this server takes at most "
                           f"{lim.max_prompt_tokens}", "messages" if chat else "prompt", "context_length_exceeded")
        key = DecodeKey(model, int(max_tokens), bool(do_sample or n > 1), float(temperature), float(top_p),
                        constrained, label_probs, int(n), seed)
        return Parsed(model, prompts, key, stream, constrained or nli_ids is not None, stop or [])

    # ---------------------------------------------------------------------- responses

    def content(self, text: str, parsed: Parsed) -> str:
        """The answer as returned: a constrained answer without the completion prefix (plain JSON)."""
        prefix = self.engine.completion_prefix
        if parsed.key.constrained and prefix:
            if text.startswith(prefix):
                return text[len(prefix) :]
            if prefix.startswith(text):
                return ""
        return text

    @staticmethod
    def nli_fields(gen: Generation, label_probs: bool) -> dict[str, Any]:
        p = parse_output(gen.text)
        out: dict[str, Any] = {"predicted_label": p.label, "thought_process": p.thought, "rule": p.rule, "ok": p.ok}
        if label_probs:
            lp = gen.label_probs
            out["label_probs"] = None if lp is None else {"p0": lp.p0, "p1": lp.p1, "p_label_1": lp.p_label_1,
                                                          "mass": lp.mass}
        return out

    def _choice(self, gen: Generation, parsed: Parsed, index: int, chat: bool) -> dict[str, Any]:
        text = self.content(gen.text, parsed)
        finish = "length" if gen.finish_reason == "max_new_tokens" else "stop"
        cuts = [text.find(s) for s in parsed.stop if s in text]
        if cuts:
            text, finish = text[: min(cuts)], "stop"
        choice: dict[str, Any] = {"index": index, "finish_reason": finish, "logprobs": None}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        if parsed.nli:
            choice["nli"] = self.nli_fields(gen, parsed.key.label_probs)
        return choice

    def response(self, parsed: Parsed, result: JobResult, chat: bool) -> dict[str, Any]:
        choices = []
        completion_tokens = 0
        for samples in result.outputs:
            for gen in samples:
                choices.append(self._choice(gen, parsed, len(choices), chat))
                completion_tokens += gen.n_tokens
        with self.metrics.lock:
            self.metrics.generated_tokens += completion_tokens
        prompt_tokens = sum(len(p) for p in parsed.prompts)
        return {
            "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": parsed.model,
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
            "batch": {"rows": result.batch_rows, "decode_seconds": result.seconds},
        }

    async def stream(self, parsed: Parsed, job: Job, chat: bool) -> AsyncIterator[str]:
        """SSE chunks: role, then text deltas as tokens arrive, then the finish reason, then [DONE]."""
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        created = int(time.time())

        def chunk(delta: str | None, finish: str | None = None, extra: dict | None = None, role: bool = False):
            choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
            if chat:
                choice["delta"] = ({"role": "assistant"} if role else {}) | ({} if delta is None else
                                                                             {"content": delta})
            else:
                choice["text"] = delta or ""
            choice.update(extra or {})
            obj = {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion",
                   "created": created, "model": parsed.model, "choices": [choice]}
            return f"data: {utf8_safe(json.dumps(obj, ensure_ascii=False))}\n\n"

        eos = set(self.engine.tokenizer.all_special_ids)
        future = job.future
        try:
            if chat:
                yield chunk("", role=True)
            ids: list[int] = []
            sent = ""
            assert job.streamer is not None
            while True:
                got = await job.streamer.queue.get()
                if got is None:
                    break
                ids += [t for t in got if t not in eos]
                text = self.content(decode_text(self.tokenizer, ids), parsed)
                if text.endswith("\ufffd") or not text.startswith(sent) or len(text) == len(sent):
                    continue  # a partial UTF-8 character, or nothing new
                yield chunk(text[len(sent) :])
                sent = text
            try:
                result = await future
            except ApiError as err:
                yield f"data: {json.dumps(err.body())}\n\n"
                return
            gen = result.outputs[0][0]
            final = self.content(gen.text, parsed)
            if final.startswith(sent) and len(final) > len(sent):
                yield chunk(final[len(sent) :])
            with self.metrics.lock:
                self.metrics.generated_tokens += gen.n_tokens
            extra = {"nli": self.nli_fields(gen, parsed.key.label_probs)} if parsed.nli else None
            finish = "length" if gen.finish_reason == "max_new_tokens" else "stop"
            yield chunk(None if chat else "", finish, extra)
            yield "data: [DONE]\n\n"
        finally:
            if not future.done():
                future.cancel()

    async def complete(self, body: Any, chat: bool) -> Any:
        parsed = self.parse(body, chat)
        loop = asyncio.get_running_loop()
        job = Job(parsed.prompts, parsed.key, loop.create_future(),
                  TokenStream(loop) if parsed.stream else None)
        self.batcher.enqueue(job)  # a 429 here comes before any stream starts
        if parsed.stream:
            return StreamingResponse(self.stream(parsed, job, chat), media_type="text/event-stream")
        try:
            result = await job.future
        except asyncio.CancelledError:
            job.future.cancel()  # the client went away: the batcher skips it if not yet decoded
            raise
        return self.response(parsed, result, chat)


# --------------------------------------------------------------------------------------------- app


class Utf8JSONResponse(JSONResponse):
    """Every JSON body of the app: strings made valid UTF-8 (``utf8_safe``) while rendering, so an unpaired
    surrogate (a decoded token's half character, a ``\\ud800`` escape the model wrote and the parser read, a
    request's own string echoed in an error) is U+FFFD in the answer, not a 500 from the encoder."""

    def render(self, content: Any) -> bytes:
        text = json.dumps(content, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":"))
        return utf8_safe(text).encode("utf-8")


def create_app(cfg: Any, engine: Engine | None = None) -> Any:
    """The FastAPI app of ``cfg``; ``engine`` (loaded model) may be passed in, e.g. shared by tests."""
    engine = engine or Engine.load(cfg)
    metrics = Metrics(int(cfg.metrics_window))
    batcher = Batcher(engine, cfg.batching, metrics)
    api = Api(cfg, engine, batcher, metrics)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Any) -> AsyncIterator[None]:
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="nli_cot serve", lifespan=lifespan, default_response_class=Utf8JSONResponse)
    app.state.api = api

    def error(err: ApiError) -> JSONResponse:
        return Utf8JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, err: ApiError) -> JSONResponse:
        return error(err)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, err: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code)
        return error(ApiError(err.status_code, str(err.detail), None, code))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, err: RequestValidationError) -> JSONResponse:
        return error(ApiError(400, str(err.errors())[:500], None, "invalid_request"))

    @app.exception_handler(Exception)
    async def _any_error(_request: Request, err: Exception) -> JSONResponse:
        log.exception("request failed")
        return error(ApiError(500, f"{type(err).__name__}: {err}", None, "internal_error", "server_error"))

    async def read_json(request: Request) -> Any:
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > cfg.limits.max_body_bytes:
            raise ApiError(413, f"the body is over {cfg.limits.max_body_bytes} bytes", None, "body_too_large")
        raw = await request.body()
        if len(raw) > cfg.limits.max_body_bytes:
            raise ApiError(413, f"the body is over {cfg.limits.max_body_bytes} bytes", None, "body_too_large")
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ApiError(400, f"the body is not valid JSON: {err}", None, "invalid_json") from err

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "models": engine.models, "queue_depth": batcher.queue.qsize()}

    @app.get("/metrics")
    async def get_metrics() -> dict[str, Any]:
        return metrics.snapshot(batcher.queue.qsize())

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        data = [{"id": engine.base_name, "object": "model", "created": engine.created, "owned_by": "nli_cot",
                 "root": str(cfg.model.name_or_path), "parent": None}]
        data += [{"id": name, "object": "model", "created": engine.created, "owned_by": "nli_cot",
                  "root": str(cfg.adapters[name]), "parent": engine.base_name} for name in engine.adapter_names]
        return {"object": "list", "data": data}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        return await api.complete(await read_json(request), chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        return await api.complete(await read_json(request), chat=False)

    return MetricsMiddleware(app, metrics)


def run(cfg: Any) -> None:
    """Check the config, load the model and adapters, serve until interrupted."""
    import uvicorn

    from nli_cot.core.checks import check_config

    check_config(cfg)
    problems = config_problems(cfg)
    if problems:
        raise ServeError(problems[0])
    frame_grammar(cfg.decoding, cfg.prompt.completion_prefix)  # a json_frame/max_new_tokens mistake, before loading
    app = create_app(cfg)
    log.info("serving %s on http://%s:%d/v1", ", ".join(app.app.state.api.engine.models), cfg.host, cfg.port)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level=cfg.log_level, access_log=False)


@hydra.main(config_path="../../conf", config_name="serve", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from nli_cot.models.modeling import ModelSetupError

    try:
        run(cfg)
    except (ServeError, ModelSetupError, ValueError) as err:
        print(f"error: {err}".splitlines()[0], file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


if __name__ == "__main__":
    from nli_cot.core.cli import preflight

    preflight("serve")
    main()


# ----------------------------------------------------------------------------------------- client helpers
# For scripts and tests that start a server process and call it (experiments/serve_load.py, tests/test_serve.py).


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(base: str, seconds: float, proc: Any = None, poll_s: float = 0.2) -> None:
    """Wait until ``<base>/health`` answers 200; RuntimeError (with the server's stderr tail, when it was piped) if
    the process exits first or the time runs out."""
    import httpx

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            err = proc.stderr.read()[-2000:] if getattr(proc, "stderr", None) else ""
            raise RuntimeError(f"server on {base} exited with {proc.returncode}: {err}")
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(poll_s)
    raise RuntimeError(f"{base} not healthy after {seconds}s")

"""Bounded load test of nli_cot.serve on localhost: batched vs one-at-a-time, same run, alternating repeats.

    python experiments/serve_load.py --requests 500 --concurrency 32 --repeats 2 \\
        --out experiments/results/serve_load_cpu

Features
- Starts two real servers (``python -m nli_cot.serve``, subprocesses on free 127.0.0.1 ports) on the tiny random
  Mistral with one LoRA adapter made here (random B matrices, saved as a PEFT folder): ``batched``
  (``batching.window_ms``, ``batching.max_batch_size``) and ``single`` (``window_ms=0 max_batch_size=1``: one
  request decoded at a time). Both are warm before timing; repeats alternate batched/single so machine load
  drifts hit both.
- Each run sends ``--requests`` NLI chat requests (premise/hypothesis, the card's prompt, greedy, ``--max-tokens``,
  optionally constrained with ``--nli``) with the official ``openai`` AsyncOpenAI client, at most
  ``--concurrency`` in flight; every request is accounted for (ok / failed / lost), latency percentiles and
  requests/s are recorded, plus the server's own /metrics (batch-size histogram).
- Writes ``<out>.json`` (every run, the summary, machine and load average) and ``<out>.md`` (a table).
- Its pieces (server start/stop, the client load, batch statistics, a random adapter) are shared with
  ``experiments/serve_gpu.py`` (serve vs predict on a GPU).

Limits
- CPU numbers on a shared 2-core machine: the client runs on the same cores as the server; the ratio of the
  two modes (measured side by side) is the result, absolute requests/s are not a GPU prediction.
- Bounded: every request has a timeout (``--timeout``), the servers are killed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nli_cot.inference.serve import Metrics, free_port, wait_healthy  # noqa: E402  (after the path: runs from a checkout)


def make_adapter(out: Path, model_overrides: list[str] | None = None) -> Path:
    """A LoRA (``lora=default``) with random B matrices (a fresh LoRA is a no-op), saved as a PEFT folder; on the
    tiny Mistral unless ``model_overrides`` (Hydra overrides, e.g. ``["model=smollm2_135m"]``) says otherwise."""
    from hydra import compose, initialize_config_dir

    import nli_cot.core.config  # noqa: F401  (schemas)
    from nli_cot.models.modeling import attach_lora, load_base_model, load_tokenizer, randomise_lora_b

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*(model_overrides or ["model=tiny_mistral"]), "lora=default"])
    tok = load_tokenizer(cfg.model)
    model = attach_lora(load_base_model(cfg.model, tok, for_training=False), cfg.lora)
    randomise_lora_b(model, seed=0, scale=0.5).save_pretrained(str(out))
    return out


def start_server(port: int, overrides: list[str], log: Path) -> subprocess.Popen:
    """``python -m nli_cot.serve <overrides> port=<port>`` in the background, its output into ``log``."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="offline", PYTHONPATH=path, TOKENIZERS_PARALLELISM="false")
    args = [sys.executable, "-m", "nli_cot.serve", *overrides, f"port={port}", "log_level=warning"]
    return subprocess.Popen(args, cwd=REPO, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


def stop_servers(procs: list[subprocess.Popen], grace_s: float = 30) -> None:
    """SIGTERM every server, then SIGKILL any still alive after ``grace_s``."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


percentile = Metrics.percentile


def synthetic_pairs(n: int) -> list[dict]:
    """``n`` short made-up NLI pairs (the CPU load test's requests)."""
    words = ["cat", "dog", "man", "woman", "child", "car", "tree", "house", "river", "city", "bench", "park"]
    return [{"premise": f"A {words[i % 12]} is next to the {words[(i * 5 + 3) % 12]} number {i}.",
             "hypothesis": f"There is a {words[(i * 7) % 12]}."} for i in range(n)]


def chat_client(base: str, kind: str, timeout: float, concurrency: int) -> tuple[Any, Any]:
    """``(call, close)``: ``await call(body)`` sends one /v1/chat/completions request and returns the first choice's
    content and its ``nli`` field; ``kind`` is ``openai`` (the official AsyncOpenAI client) or ``httpx`` (a plain
    POST of the same JSON body: no openai wheel needed)."""
    if kind == "openai":
        import openai

        client = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=timeout)

        async def call(body: dict) -> tuple[str | None, dict | None]:
            known = {k: body[k] for k in ("model", "messages", "max_tokens", "temperature")}
            extra = {k: v for k, v in body.items() if k not in known}
            r = await client.chat.completions.create(**known, extra_body=extra)
            if not r.choices:
                return None, None
            return r.choices[0].message.content, (r.choices[0].model_extra or {}).get("nli")

        return call, client.close
    if kind != "httpx":
        raise ValueError(f"client must be openai or httpx, got {kind!r}")
    import httpx

    client = httpx.AsyncClient(base_url=f"{base}/v1", timeout=timeout,
                               limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency))

    async def call(body: dict) -> tuple[str | None, dict | None]:
        r = await client.post("/chat/completions", json=body)
        if r.status_code >= 400:
            raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")
        choices = r.json().get("choices") or [{}]
        return (choices[0].get("message") or {}).get("content"), choices[0].get("nli")

    return call, client.aclose


async def load(base: str, n: int, concurrency: int, max_tokens: int, nli: bool, timeout: float, *,
               pairs: list[dict] | None = None, model: str = "nli", client: str = "openai",
               keep_answers: bool = False) -> dict:
    """Send ``n`` NLI chat requests (``pairs``' premise/hypothesis, or made-up ones), at most ``concurrency`` in
    flight, greedy; every request ends up ok, failed or lost. ``keep_answers``: the result's ``answers`` holds each
    request's content and ``nli`` field (None when it failed)."""
    pairs = pairs if pairs is not None else synthetic_pairs(n)
    call, close = chat_client(base, client, timeout, concurrency)
    sem = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    failures: list[str] = []
    answers: list[dict | None] = [None] * n
    parsed = 0

    async def one(i: int) -> None:
        nonlocal parsed
        body = {"model": model, "messages": [], "max_tokens": max_tokens, "temperature": 0,
                "premise": pairs[i]["premise"], "hypothesis": pairs[i]["hypothesis"]}
        if nli:
            body["nli"] = True
        async with sem:
            start = time.perf_counter()
            try:
                content, nli_field = await call(body)
                latencies.append(time.perf_counter() - start)
                answers[i] = {"content": content, "nli": nli_field}
                if content is None:
                    failures.append(f"{i}: empty")
                elif nli:
                    json.loads(content)
                    parsed += 1
            except Exception as err:  # counted, never raised: the run must account for every request
                failures.append(f"{i}: {type(err).__name__}: {str(err)[:200]}")

    wall = time.perf_counter()
    try:
        await asyncio.gather(*(one(i) for i in range(n)))
    finally:
        await close()
    wall = time.perf_counter() - wall
    ok = len(latencies) - sum(1 for f in failures if f.endswith("empty"))
    result = {
        "requests": n,
        "ok": ok,
        "failed": len(failures),
        "lost": n - len(latencies) - sum(1 for f in failures if not f.endswith("empty")),
        "parsed_json": parsed if nli else None,
        "failures": failures[:10],
        "wall_s": wall,
        "requests_per_s": n / wall,
        "latency_s": {q: percentile(latencies, float(q[1:])) for q in ("p50", "p90", "p99")}
        | {"mean": statistics.fmean(latencies) if latencies else None, "max": max(latencies, default=None)},
    }
    if keep_answers:
        result["answers"] = answers
    return result


def batch_stats(before: dict, after: dict) -> dict:
    """The server's batches between two /metrics snapshots: count, mean rows, rows histogram."""
    hist = {k: v - before["batch_rows_histogram"].get(k, 0) for k, v in after["batch_rows_histogram"].items()}
    batches = after["batches"] - before["batches"]
    return {"server_batches": batches,
            "server_mean_batch_rows": sum(int(k) * v for k, v in hist.items()) / max(batches, 1),
            "server_batch_rows_histogram": {k: v for k, v in hist.items() if v}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--nli", action="store_true", help="constrained NLI answers (max-tokens >= 47)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--window-ms", type=float, default=5.0)
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--out", default="experiments/results/serve_load_cpu")
    args = ap.parse_args()
    import httpx

    modes = {
        "batched": [f"batching.window_ms={args.window_ms}", f"batching.max_batch_size={args.max_batch}"],
        "single": ["batching.window_ms=0", "batching.max_batch_size=1"],
    }
    tmp = Path(tempfile.mkdtemp(prefix="serve_load_"))
    adapter = make_adapter(tmp / "adapter")
    procs: dict[str, subprocess.Popen] = {}
    bases: dict[str, str] = {}
    runs: list[dict] = []
    load_before = os.getloadavg()
    try:
        for mode, overrides in modes.items():
            port = free_port()
            bases[mode] = f"http://127.0.0.1:{port}"
            procs[mode] = start_server(port, ["model=tiny_mistral", f"adapters.nli={adapter}", *overrides],
                                       tmp / f"{mode}.log")
        for mode in modes:
            wait_healthy(bases[mode], 180, procs[mode], poll_s=0.5)
            asyncio.run(load(bases[mode], 8, 8, args.max_tokens, args.nli, args.timeout))  # warm-up
        for rep in range(args.repeats):
            for mode in modes:
                before = httpx.get(bases[mode] + "/metrics").json()
                load_avg = os.getloadavg()[0]
                result = asyncio.run(load(bases[mode], args.requests, args.concurrency, args.max_tokens, args.nli,
                                          args.timeout))
                after = httpx.get(bases[mode] + "/metrics").json()
                result |= {"mode": mode, "repeat": rep, "load_avg_1m_at_start": load_avg} | batch_stats(before, after)
                runs.append(result)
                print(f"{mode:8s} repeat {rep}: {result['requests_per_s']:.2f} req/s, p50 "
                      f"{result['latency_s']['p50']:.2f}s p99 {result['latency_s']['p99']:.2f}s, ok {result['ok']}"
                      f"/{args.requests}, failed {result['failed']}, lost {result['lost']}, mean batch "
                      f"{result['server_mean_batch_rows']:.1f}", flush=True)
    finally:
        stop_servers(list(procs.values()))

    ratios = [b["requests_per_s"] / s["requests_per_s"] for b, s in
              zip([r for r in runs if r["mode"] == "batched"], [r for r in runs if r["mode"] == "single"],
                  strict=True)]
    summary = {
        mode: {
            "requests_per_s_median": statistics.median(r["requests_per_s"] for r in runs if r["mode"] == mode),
            "p50_s_median": statistics.median(r["latency_s"]["p50"] for r in runs if r["mode"] == mode),
            "p99_s_median": statistics.median(r["latency_s"]["p99"] for r in runs if r["mode"] == mode),
            "failed_total": sum(r["failed"] for r in runs if r["mode"] == mode),
            "lost_total": sum(r["lost"] for r in runs if r["mode"] == mode),
        }
        for mode in modes
    }
    summary["throughput_ratio_batched_over_single"] = {"per_repeat": ratios, "median": statistics.median(ratios)}
    report = {
        "args": vars(args),
        "modes": modes,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_avg_before": load_before, "load_avg_after": os.getloadavg()},
        "model": "tiny_mistral (random MistralForCausalLM, ~4.3M params, v0.3 tokenizer) + one LoRA adapter",
        "runs": runs,
        "summary": summary,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(report))
    print(json.dumps(summary, indent=2))


def markdown(report: dict) -> str:
    a, s = report["args"], report["summary"]
    lines = [
        "# nli_cot.serve load test (CPU, tiny model)",
        "",
        f"`python experiments/serve_load.py --requests {a['requests']} --concurrency {a['concurrency']} "
        f"--max-tokens {a['max_tokens']} --repeats {a['repeats']}{' --nli' if a['nli'] else ''}`",
        "",
        f"Model: {report['model']}. Each request: an NLI chat request (premise/hypothesis, the card's prompt), "
        f"greedy, max_tokens={a['max_tokens']}{', constrained JSON' if a['nli'] else ''}, sent with the official "
        f"`openai` AsyncOpenAI client, {a['concurrency']} in flight. Two servers ran side by side (separate "
        f"processes): `batched` ({' '.join(report['modes']['batched'])}) and `single` "
        f"({' '.join(report['modes']['single'])}); repeats alternate between them.",
        f"Machine: {report['machine']['cpus']} CPUs (shared), load average before "
        f"{report['machine']['load_avg_before'][0]:.2f}, after {report['machine']['load_avg_after'][0]:.2f}; the "
        "client shares the cores with the server.",
        "",
        "| mode | repeat | ok | failed | lost | req/s | p50 s | p90 s | p99 s | mean batch rows | load (1 min) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in report["runs"]:
        lat = r["latency_s"]
        lines.append(
            f"| {r['mode']} | {r['repeat']} | {r['ok']}/{r['requests']} | {r['failed']} | {r['lost']} | "
            f"{r['requests_per_s']:.2f} | {lat['p50']:.3f} | {lat['p90']:.3f} | {lat['p99']:.3f} | "
            f"{r['server_mean_batch_rows']:.1f} | {r['load_avg_1m_at_start']:.2f} |"
        )
    ratio = s["throughput_ratio_batched_over_single"]
    lines += [
        "",
        f"Throughput batched / single: median **{ratio['median']:.1f}x** (per repeat: "
        f"{', '.join(f'{x:.1f}x' for x in ratio['per_repeat'])}). Median p50 latency: batched "
        f"{s['batched']['p50_s_median']:.2f} s, single {s['single']['p50_s_median']:.2f} s; p99: batched "
        f"{s['batched']['p99_s_median']:.2f} s, single {s['single']['p99_s_median']:.2f} s.",
        f"Failed: batched {s['batched']['failed_total']}, single {s['single']['failed_total']}; lost: batched "
        f"{s['batched']['lost_total']}, single {s['single']['lost_total']}.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()

"""nli_cot.serve with batching vs ``predict``'s batch path on the same pairs, same model, same decoding, one call.

    python experiments/serve_gpu.py --adapter outputs/study/review/runs/<run>/model/checkpoint-<n> \\
        --pairs outputs/study/review/data/test.jsonl --n 1024 --concurrency 256 --out "$OUT/serve_gpu"

Features
- The model: Hydra overrides shared by both sides (``--overrides``, default SmolLM2-135M-Instruct as the study
  decodes it: ``model=smollm2_135m prompt=chat model.dtype=float32``), plus an optional PEFT adapter folder
  (``--adapter``; ``random`` makes a LoRA with random B matrices here, for smoke tests).
- The pairs: ``--n`` pairs of a JSONL file (``premise``, ``hypothesis``, optional ``id`` and ``label``), a seeded
  shuffle so every set of a mixed file (e.g. the study's test sample) is represented.
- serve: ``python -m nli_cot.serve`` in a subprocess (``batching.max_batch_size`` = ``--concurrency`` by default),
  sent the ``--n`` pairs as NLI chat requests (``nli: true``: constrained JSON; greedy; ``--max-tokens``) with at
  most ``--concurrency`` in flight, by the official ``openai`` AsyncOpenAI client when it is installed, else by
  httpx with the same JSON body (``--client``); examples/s from the client's wall time.
- predict: in this process, the model loaded once per variant through ``nli_cot.inference.predict.load_model``, the pairs
  through ``predict.plan_batches`` and ``predict.predict_batches`` (what ``python -m nli_cot.predict`` runs:
  prompts sorted by length, batches of ``--predict-batch-size``, records fsynced to a JSONL file); examples/s
  from the wall time of planning + decoding + writing (model load excluded), and from the decode time alone.
  Variants: ``unmerged`` (the server's weights: the adapter as a PEFT module) and, with an adapter, ``merged``
  (LoRA merged into the weights, as the study's predict runs it).
- Warm-up on both sides first (not timed); then ``--repeats`` rounds serve, predict variant(s), serve, ...; per
  repeat examples/s, parse rate, accuracy against the gold labels, label agreement with the server's answers of
  the same round; medians, spread, ratio serve/predict per round; GPU peak memory (this process per predict
  repeat, the server's from its /metrics), the device, the commit (``NLI_COT_COMMIT``).
- Bounded: ``--budget-s`` in all; a phase that would not fit (its last duration) is skipped, a serve run is
  cancelled at the deadline, every request has a timeout, the server is killed at the end. ``<out>.json`` and
  ``<out>.md`` are rewritten after every phase, so a killed run leaves what it measured.

Limits
- One GPU, both sides on it in turn (never at once); the server is a separate process with its own model copy.
- serve's batches hold at most ``--concurrency`` requests (the client's limit), predict's ``--predict-batch-size``
  rows: for a model this small the GPU is launch-bound and a wider batch is nearly free, so the ratio depends on
  both (the report states them).
- On a shared CPU (smoke runs) set ``OMP_NUM_THREADS=1``: the server's and this process's torch threads otherwise
  fight over the cores, and a run of a few pairs can take minutes.
- Greedy outputs can differ between the two sides where batch composition (padding) changes the float rounding;
  the label agreement shows how often.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import random
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "experiments"))

from serve_load import batch_stats, load, make_adapter, start_server, stop_servers  # noqa: E402

from nli_cot.inference.serve import free_port, wait_healthy  # noqa: E402

SMOLLM2 = ["model=smollm2_135m", "prompt=chat", "model.dtype=float32"]  # the study's predict (nli_cot.orchestration.study_graph)


# ------------------------------------------------------------------------------------------------- inputs


def read_pairs(path: str, n: int, seed: int) -> list[dict]:
    """``n`` rows of a JSONL pairs file (seeded shuffle; fewer if the file is shorter), each with an id."""
    rows = []
    with open(path) as f:
        for i, line in enumerate(f):
            if line.strip():
                row = json.loads(line)
                rows.append({"id": str(row.get("id", f"row-{i}")), "premise": row["premise"],
                             "hypothesis": row["hypothesis"], "label": row.get("label")})
    random.Random(seed).shuffle(rows)
    return rows[:n]


def predict_cfg(overrides: list[str], adapter: str | None, merged: bool, args: argparse.Namespace, output: Path) -> Any:
    """The ``nli_cot.predict`` config the bench's predict side runs (as ``python -m nli_cot.predict`` would)."""
    from hydra import compose, initialize_config_dir

    import nli_cot.inference.predict  # noqa: F401  (schemas)

    extra = [f"adapter.path={adapter}", f"adapter.merge={str(merged).lower()}"] if adapter else []
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name="predict", overrides=[
            *overrides, *extra, f"batch_size={args.predict_batch_size}", f"decoding.max_new_tokens={args.max_tokens}",
            f"decoding.constrained={str(args.constrained).lower()}", "decoding.label_probs=false", "progress=false",
            f"output={output}"])


# ------------------------------------------------------------------------------------------------- the two sides


class PredictSide:
    """One predict variant: its model loaded once; ``run(pairs)`` times predict's batch path over them."""

    def __init__(self, name: str, cfg: Any, tmp: Path) -> None:
        from nli_cot.core.checks import check_config
        from nli_cot.inference.predict import load_model

        check_config(cfg)
        self.name, self.cfg, self.tmp = name, cfg, tmp
        self.tokenizer, self.model = load_model(cfg)
        self.count = 0

    def run(self, pairs: list[dict]) -> dict:
        import torch

        from nli_cot.core.pairs import Pair
        from nli_cot.core.records import RecordWriter, read_records
        from nli_cot.inference.predict import config_hash, plan_batches, predict_batches

        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        self.count += 1
        out = self.tmp / f"{self.name}-{self.count}.jsonl"
        todo = [Pair(p["id"], p["premise"], p["hypothesis"], p["label"]) for p in pairs]
        start = time.perf_counter()
        with RecordWriter(str(out), lock=True) as writer:
            batches = plan_batches(todo, self.tokenizer, self.cfg)
            summary = predict_batches(batches, self.model, self.tokenizer, writer, self.cfg, config_hash(self.cfg))
        wall = time.perf_counter() - start
        by_id = {r["id"]: r for r in read_records(str(out))}
        answers = [by_id.get(p["id"]) for p in pairs]
        out.unlink()
        return {
            "examples": len(pairs),
            "wall_s": wall,
            "examples_per_s": len(pairs) / wall,
            "decode_s": summary["generate_seconds"],
            "decode_examples_per_s": summary["examples_per_s"],
            "generated_tokens": summary["generated_tokens"],
            "batches": len(batches),
            "cuda_max_memory_reserved_bytes": torch.cuda.max_memory_reserved() if cuda else None,
            "answers": [None if a is None else {"label": a["predicted_label"], "ok": a["ok"], "text": a["raw_text"]}
                        for a in answers],
        }


def serve_answers(result: dict) -> list[dict | None]:
    """The server's answers of one load run as ``{"label", "ok", "text"}`` (None for a failed request)."""
    out = []
    for a in result.pop("answers"):
        nli = (a or {}).get("nli")
        out.append(None if nli is None else {"label": nli["predicted_label"], "ok": nli["ok"], "text": a["content"]})
    return out


# ------------------------------------------------------------------------------------------------- summary


def quality(answers: list[dict | None], pairs: list[dict]) -> dict:
    """Parse rate and accuracy (against gold labels, where known) of one run's answers."""
    got = [a for a in answers if a is not None]
    gold = [(a, p["label"]) for a, p in zip(answers, pairs, strict=True) if a is not None and p["label"] is not None]
    return {"answered": len(got), "parse_rate": sum(bool(a["ok"]) for a in got) / len(answers) if answers else None,
            "accuracy": sum(a["label"] == y for a, y in gold) / len(gold) if gold else None}


def agreement(a: list[dict | None], b: list[dict | None]) -> dict:
    """How often two runs over the same pairs give the same label and the same text (pairs both answered)."""
    both = [(x, y) for x, y in zip(a, b, strict=True) if x is not None and y is not None]
    if not both:
        return {"pairs": 0, "labels": None, "texts": None}
    return {"pairs": len(both), "labels": sum(x["label"] == y["label"] for x, y in both) / len(both),
            "texts": sum(x["text"] == y["text"] for x, y in both) / len(both)}


def spread(values: list[float]) -> dict:
    """Median, min, max and (max - min) / median of per-repeat values."""
    if not values:
        return {"n": 0, "median": None, "min": None, "max": None, "rel_spread": None}
    med = statistics.median(values)
    return {"n": len(values), "median": med, "min": min(values), "max": max(values),
            "rel_spread": (max(values) - min(values)) / med if med else None}


def summarize(runs: list[dict]) -> dict:
    """Per side: examples/s over repeats; per predict variant: the serve/predict ratio of each round (serve run and
    predict run of the same repeat), against predict's wall time and against its decode time alone."""
    serve = {r["repeat"]: r for r in runs if r["side"] == "serve" and not r.get("timed_out")}
    out: dict[str, Any] = {"serve": {"examples_per_s": spread([r["examples_per_s"] for r in serve.values()])}}
    for name in dict.fromkeys(r["side"] for r in runs if r["side"] != "serve"):
        mine = [r for r in runs if r["side"] == name]
        rounds = [(serve[r["repeat"]], r) for r in mine if r["repeat"] in serve]
        out[name] = {
            "examples_per_s": spread([r["examples_per_s"] for r in mine]),
            "decode_examples_per_s": spread([r["decode_examples_per_s"] for r in mine]),
            "ratio_serve_over_predict": spread([s["examples_per_s"] / p["examples_per_s"] for s, p in rounds]),
            "ratio_serve_over_predict_decode": spread([s["examples_per_s"] / p["decode_examples_per_s"]
                                                       for s, p in rounds]),
            "label_agreement_with_serve": spread([p["agreement_with_serve"]["labels"] for _, p in rounds
                                                  if p.get("agreement_with_serve", {}).get("labels") is not None]),
        }
    return out


# ------------------------------------------------------------------------------------------------- report


def fmt(x: float | None, spec: str = ".2f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def markdown(report: dict) -> str:
    a, s = report["args"], report["summary"]
    gib = 2**30
    lines = [
        "# nli_cot.serve (batching) vs predict's batch path, same call",
        "",
        f"`{report['command']}`",
        "",
        f"Device: {report['machine']['device']}; commit {report['commit']}; {report['machine']['date']}.",
        f"Model: `{' '.join(a['overrides'])}`, adapter `{a['adapter'] or 'none (base model)'}`. {report['n_pairs']} "
        f"pairs of `{a['pairs']}` (seeded shuffle, seed {a['seed']}); every answer greedy, max {a['max_tokens']} "
        f"new tokens, {'constrained NLI JSON' if a['constrained'] else 'unconstrained'}.",
        f"serve: `python -m nli_cot.serve` ({' '.join(report['serve_overrides'])}), {a['concurrency']} requests "
        f"in flight from the `{report['client']}` client; examples/s = pairs / client wall time. predict: "
        f"`predict.plan_batches` + `predict.predict_batches` in the bench process, batch size "
        f"{a['predict_batch_size']}; examples/s = pairs / (prompt encoding + decoding + record writing), model load "
        "excluded; 'decode' = pairs / model.generate time alone. Warm-up excluded on both sides; rounds alternate.",
        "",
        "| repeat | side | examples/s | decode ex/s | wall s | parse rate | accuracy | labels = serve | texts = serve "
        "| mean batch rows | GPU peak reserved GiB |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in report["runs"]:
        if r.get("timed_out"):
            lines.append(f"| {r['repeat']} | {r['side']} | timed out | | | | | | | | |")
            continue
        ag = r.get("agreement_with_serve") or {}
        mem = r.get("cuda_max_memory_reserved_bytes")
        rows = r.get("server_mean_batch_rows")
        lines.append(
            f"| {r['repeat']} | {r['side']} | {fmt(r['examples_per_s'])} | {fmt(r.get('decode_examples_per_s'))} | "
            f"{fmt(r['wall_s'], '.1f')} | {fmt(r['parse_rate'], '.3f')} | {fmt(r['accuracy'], '.3f')} | "
            f"{fmt(ag.get('labels'), '.3f')} | {fmt(ag.get('texts'), '.3f')} | {fmt(rows, '.1f')} | "
            f"{fmt(None if mem is None else mem / gib)} |")
    sv = s["serve"]["examples_per_s"]
    lines += ["", f"serve: median **{fmt(sv['median'])}** examples/s (min {fmt(sv['min'])}, max {fmt(sv['max'])}, "
              f"{sv['n']} repeats); server GPU peak reserved "
              f"{fmt(None if report['server_cuda'] is None else report['server_cuda']['max_memory_reserved_bytes'] / gib)}"
              f" GiB; failed {report['serve_failed_total']}, lost {report['serve_lost_total']}."]
    for name, v in s.items():
        if name == "serve":
            continue
        p, ratio, rd = v["examples_per_s"], v["ratio_serve_over_predict"], v["ratio_serve_over_predict_decode"]
        lines.append(
            f"predict ({name}): median **{fmt(p['median'])}** examples/s (min {fmt(p['min'])}, max {fmt(p['max'])}), "
            f"decode only {fmt(v['decode_examples_per_s']['median'])}; serve / predict **{fmt(ratio['median'])}x** "
            f"(rounds: {fmt(ratio['min'])}-{fmt(ratio['max'])}x), vs decode only {fmt(rd['median'])}x; label "
            f"agreement with serve {fmt(v['label_agreement_with_serve']['median'], '.3f')} (median).")
    if report.get("notes"):
        lines += ["", *(f"- {n}" for n in report["notes"])]
    return "\n".join(lines) + "\n"


def machine() -> dict:
    import torch

    info = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}
    import transformers

    info["transformers"] = transformers.__version__
    return info


def commit() -> str:
    if os.environ.get("NLI_COT_COMMIT"):
        return os.environ["NLI_COT_COMMIT"]
    import subprocess

    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=REPO).stdout.strip() or "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


# ------------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--overrides", nargs="*", default=SMOLLM2, help="Hydra overrides of both sides (model, prompt)")
    ap.add_argument("--adapter", default=None, help="PEFT folder (a checkpoint-<n>), 'random', or none")
    ap.add_argument("--pairs", required=True, help="JSONL with premise, hypothesis (id, label optional)")
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=0, help="of the pairs' shuffle")
    ap.add_argument("--concurrency", type=int, default=256)
    ap.add_argument("--max-batch", type=int, default=None, help="server batching.max_batch_size (default: concurrency)")
    ap.add_argument("--window-ms", type=float, default=5.0)
    ap.add_argument("--max-tokens", type=int, default=160)
    ap.add_argument("--constrained", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--predict-batch-size", type=int, default=1024)
    ap.add_argument("--variants", default="auto", help="predict variants: unmerged,merged (auto: both with an adapter)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=None, help="warm-up pairs per side (default: min(n, concurrency))")
    ap.add_argument("--client", choices=["auto", "openai", "httpx"], default="auto")
    ap.add_argument("--budget-s", type=float, default=540.0, help="wall seconds for everything")
    ap.add_argument("--server-start-s", type=float, default=300.0)
    ap.add_argument("--timeout", type=float, default=300.0, help="per request")
    ap.add_argument("--out", default="experiments/results/serve_gpu")
    ap.add_argument("--pid-file", default=None, help="write the server's pid here (for a driver's last-resort kill)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    import importlib.util

    import httpx

    args = parse_args(argv)
    t0 = time.monotonic()
    # SIGTERM (e.g. from `timeout`) unwinds through the finally below: the server is stopped, the report written.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    deadline = t0 + args.budget_s - 5  # 5 s to write the report

    def left() -> float:
        return deadline - time.monotonic()

    client = args.client if args.client != "auto" else (
        "openai" if importlib.util.find_spec("openai") is not None else "httpx")
    pairs = read_pairs(args.pairs, args.n, args.seed)
    warm = read_pairs(args.pairs, args.n, args.seed + 1)[: args.warmup or min(len(pairs), args.concurrency)]
    tmp = Path(tempfile.mkdtemp(prefix="serve_gpu_"))
    adapter = args.adapter
    if adapter == "random":
        adapter = str(make_adapter(tmp / "adapter", [o for o in args.overrides if o.startswith("model")]))
    variants = (["unmerged", "merged"] if adapter else ["unmerged"]) if args.variants == "auto" else \
        [v.strip() for v in args.variants.split(",") if v.strip()]
    max_batch = args.max_batch or args.concurrency
    serve_overrides = [f"batching.window_ms={args.window_ms}", f"batching.max_batch_size={max_batch}",
                       f"batching.max_queue={max(1024, len(pairs) + args.concurrency)}",
                       f"limits.max_tokens={max(1024, args.max_tokens)}"]
    served_model = "nli" if adapter else None
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "command": "python experiments/serve_gpu.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "args": vars(args) | {"adapter": adapter}, "commit": commit(), "machine": machine(), "client": client,
        "n_pairs": len(pairs), "serve_overrides": serve_overrides, "variants": variants, "runs": [], "notes": [],
        "server_cuda": None, "serve_failed_total": 0, "serve_lost_total": 0, "summary": {},
    }

    def save() -> None:
        report["summary"] = summarize(report["runs"])
        report["wall_s"] = time.monotonic() - t0
        out.with_suffix(".json").write_text(json.dumps(report, indent=2, default=str) + "\n")
        out.with_suffix(".md").write_text(markdown(report))

    def note(text: str) -> None:
        print(f"[serve_gpu {time.monotonic() - t0:.0f}s] {text}", flush=True)
        report["notes"].append(text)

    proc = None
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    try:
        args_serve = [*args.overrides, *([f"adapters.nli={adapter}"] if adapter else []), *serve_overrides]
        proc = start_server(port, args_serve, tmp / "server.log")  # loads while predict's models load here
        if args.pid_file:
            Path(args.pid_file).write_text(f"{proc.pid}\n")
        sides = {}
        for name in variants:
            cfg = predict_cfg(args.overrides, adapter, name == "merged", args, tmp / f"{name}.jsonl")
            sides[name] = PredictSide(name, cfg, tmp)
        note(f"predict models loaded ({', '.join(variants)}); {left():.0f} s left")
        server_ok = True
        try:
            wait_healthy(base, max(1.0, min(args.server_start_s, left())), proc, poll_s=0.5)
            served_model = served_model or httpx.get(f"{base}/v1/models", timeout=10).json()["data"][0]["id"]
        except RuntimeError as err:
            server_ok = False
            note(f"server did not start: {str(err)[:1500]}")

        def serve_run(batch: list[dict], timeout: float) -> dict:
            coro = load(base, len(batch), args.concurrency, args.max_tokens, args.constrained,
                        min(args.timeout, timeout), pairs=batch, model=served_model, client=client, keep_answers=True)
            return asyncio.run(asyncio.wait_for(coro, timeout=timeout))

        # warm-up (not timed; its failures are noted)
        if server_ok:
            note(f"server {base} (pid {proc.pid}) up; warming up")
            w = serve_run(warm, max(1.0, left()))
            if w["failed"]:
                note(f"serve warm-up: {w['failed']} of {len(warm)} failed, e.g. {w['failures'][:2]}")
        for side in sides.values():
            side.run(warm)
        note(f"warm-up done ({len(warm)} pairs a side); {left():.0f} s left")
        save()

        last: dict[str, float] = {}
        for rep in range(args.repeats):
            round_serve = None
            for name in (["serve"] if server_ok else []) + variants:
                need = last.get(name, 0) * 1.2 + 2
                if left() < need:
                    note(f"repeat {rep} {name}: skipped, {left():.0f} s left and the last run took "
                         f"{last.get(name, 0):.0f} s")
                    continue
                start = time.monotonic()
                if name == "serve":
                    before = httpx.get(f"{base}/metrics", timeout=10).json()
                    try:
                        r = serve_run(pairs, max(1.0, left()))
                    except TimeoutError:
                        report["runs"].append({"side": "serve", "repeat": rep, "timed_out": True})
                        note(f"repeat {rep} serve: cancelled at the deadline")
                        save()
                        continue
                    after = httpx.get(f"{base}/metrics", timeout=10).json()
                    report["server_cuda"] = after.get("cuda")
                    if r["failed"]:
                        note(f"repeat {rep} serve: {r['failed']} failed, e.g. {r['failures'][:2]}; server queue "
                             f"{after.get('queue_depth')}, batches {after.get('batches')}")
                    answers = serve_answers(r)
                    round_serve = answers
                    r |= batch_stats(before, after) | {"examples_per_s": r["requests_per_s"]}
                    report["serve_failed_total"] += r["failed"]
                    report["serve_lost_total"] += r["lost"]
                else:
                    r = sides[name].run(pairs)
                    answers = r.pop("answers")
                    if round_serve is not None:
                        r["agreement_with_serve"] = agreement(answers, round_serve)
                last[name] = time.monotonic() - start
                r |= {"side": name, "repeat": rep} | quality(answers, pairs)
                report["runs"].append(r)
                print(f"repeat {rep} {name:9s}: {r['examples_per_s']:.2f} examples/s, parse {r['parse_rate']:.3f}, "
                      f"wall {r['wall_s']:.1f}s; {left():.0f} s left", flush=True)
                save()
    except BaseException as err:  # the report keeps what was measured; the error goes into it
        note(f"stopped by {type(err).__name__}: {str(err)[:1500]}")
        raise
    finally:
        if proc is not None:
            stop_servers([proc], grace_s=15)
            log = (tmp / "server.log").read_text(errors="replace")[-3000:] if (tmp / "server.log").exists() else ""
            report["server_log_tail"] = log
        save()
        print(json.dumps(report["summary"], indent=2), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A scripted OpenAI-compatible chat server on 127.0.0.1 that injects faults, for the teacher-stage tests.

``POST /v1/chat/completions`` answers from a script keyed by the pair (the ``Hypothesis:`` line of the last
user message); each key has a list of actions consumed one per request, then ``default`` applies. Actions:

- ``{"label": 0|1, "thought": "..."}``: a well-formed JSON answer (a reflection answer, with
  ``error_analysis``/``improved_thought_process``, when the request is a reflection request).
- ``{"content": "..."}``: exactly this content.
- ``{"status": 429, "retry_after": 0}`` / ``{"status": 500}`` / any status: an error response.
- ``{"malformed": true}``: HTTP 200 whose body is not JSON.
- ``{"truncated": true, "label": 1}``: the JSON answer cut off mid-thought, ``finish_reason: "length"``.
- ``"sleep": seconds`` in any action: wait that long first (a slow server, for timeouts and kill tests).

Usage is deterministic (``len(text) // 4`` tokens) so tests can check the token totals. Every request is logged
(``server.log``) with its key, kind (``thoughts``/``reflect``), last user message, HTTP status, content and
``phase`` (a label the
test sets, e.g. before/after a kill), so tests can prove which requests were paid for.

Run standalone: ``python tests/fake_openai_server.py --port 8765 [--script script.json] [--default-label 0]``.
Loopback only; bounded by the test's own request loops.
"""

from __future__ import annotations

import argparse
import json
import re
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Action = dict[str, Any]
_HYP = re.compile(r"Hypothesis:\s*(.*)")


def request_key(messages: list[dict[str, str]]) -> str:
    """The pair a request is about: the text after ``Hypothesis:`` in the last user message."""
    user = next((m["content"] for m in reversed(messages) if m.get("role") == "user"), "")
    match = _HYP.search(user)
    return match.group(1).strip() if match else user.strip()


def request_kind(messages: list[dict[str, str]]) -> str:
    system = " ".join(m["content"] for m in messages if m.get("role") == "system")
    return "reflect" if "improved_thought_process" in system else "thoughts"


def answer_text(action: Action, kind: str, key: str) -> str:
    if "content" in action:
        return action["content"]
    label = action.get("label", 0)
    verdict = "can be inferred" if label == 1 else "cannot be inferred"
    thought = action.get(
        "thought", f"Step 1: the premise is read. Step 2: compared with '{key[:40]}'. Step 3: it {verdict}."
    )
    if kind == "reflect":
        body = {
            "error_analysis": action.get("analysis", "The first attempt misread the relation."),
            "improved_thought_process": thought,
            "predicted_label": label,
        }
    else:
        body = {"thought_process": thought, "predicted_label": label}
    return json.dumps(body)


class FakeOpenAIServer:
    """Threaded scripted server; use as a context manager. ``url`` is the ``base_url`` for the client."""

    def __init__(
        self,
        script: dict[str, list[Action]] | None = None,
        default: Action | Callable[[str, str], Action] | None = None,
        port: int = 0,
    ) -> None:
        self.script = {k: list(v) for k, v in (script or {}).items()}
        self.default = default if default is not None else {"label": 0}
        self.log: list[dict[str, Any]] = []
        self.phase = 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self._send(404, b'{"error": "not found"}')
                    return
                server._handle(self, body)

            def _send(self, status: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and went away; that is the point of a slow action

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._thread: threading.Thread | None = None

    def _next_action(self, key: str, kind: str) -> Action:
        with self._lock:
            queue = self.script.get(key)
            if queue:
                return queue.pop(0)
        return self.default(key, kind) if callable(self.default) else dict(self.default)

    def _handle(self, handler: Any, body: dict[str, Any]) -> None:
        messages = body.get("messages") or []
        key, kind = request_key(messages), request_kind(messages)
        action = self._next_action(key, kind)
        user = next((m.get("content", "") for m in reversed(messages) if m.get("role") == "user"), "")
        entry: dict[str, Any] = {
            "key": key,
            "kind": kind,
            "phase": self.phase,
            "action": action,
            "user": user,
        }
        if action.get("sleep"):
            time.sleep(float(action["sleep"]))
        status = int(action.get("status", 200))
        if status != 200:
            headers = {}
            if "retry_after" in action:
                headers["Retry-After"] = str(action["retry_after"])
            entry.update(status=status, content=None)
            self._record(entry)
            handler._send(status, json.dumps({"error": {"message": f"scripted {status}"}}).encode(), headers)
            return
        if action.get("malformed"):
            entry.update(status=200, content=None, malformed=True)
            self._record(entry)
            handler._send(200, b'{"choices": [{"message": {"content": "oops')
            return
        content = answer_text(action, kind, key)
        finish = "stop"
        if action.get("truncated"):
            content = content[: max(1, len(content) * 2 // 3)]
            finish = "length"
        prompt_chars = sum(len(m.get("content", "")) for m in messages)
        usage = {"prompt_tokens": prompt_chars // 4, "completion_tokens": len(content) // 4}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        entry.update(status=200, content=content, usage=usage, finish_reason=finish)
        self._record(entry)
        payload = {
            "id": f"chatcmpl-{len(self.log)}",
            "object": "chat.completion",
            "model": body.get("model"),
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}
            ],
            "usage": usage,
        }
        handler._send(200, json.dumps(payload).encode())

    def _record(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self.log.append(entry)

    def paid(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Requests answered with a completion (what an API would bill)."""
        return [
            e
            for e in self.log
            if e["status"] == 200 and e.get("content") is not None and kind in (None, e["kind"])
        ]

    def start(self) -> FakeOpenAIServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--script", help="JSON file: {hypothesis: [action, ...]}")
    ap.add_argument("--default-label", type=int, default=0)
    args = ap.parse_args()
    script = json.load(open(args.script)) if args.script else None
    server = FakeOpenAIServer(script, {"label": args.default_label}, port=args.port)
    print(f"fake OpenAI server on {server.url}", flush=True)
    try:
        server.httpd.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()

"""A fake LLM endpoint for tests: a threaded HTTP server on 127.0.0.1 that speaks the
OpenAI chat-completions and Anthropic messages wire formats.

The real SDKs talk to it over HTTP, so what is tested is what a real endpoint would see:
request bodies, auth headers, status codes, error bodies and ``retry-after`` headers.
Each test scripts the replies (a queue, or a function of the request) and reads back
every request the server received.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import threading
import time
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

#: Upper bound on any scripted delay, so a test can never hang the suite.
MAX_DELAY_S = 5.0


@dataclasses.dataclass
class Reply:
    """One scripted HTTP response. ``body`` is JSON-encoded unless it is str/bytes."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    delay_s: float = 0.0


@dataclasses.dataclass
class Seen:
    """One request as the server received it (header names lower-cased)."""

    method: str
    path: str
    headers: dict[str, str]
    raw: bytes
    t_start: float
    t_end: float = 0.0

    @property
    def json(self) -> dict:
        return json.loads(self.raw)

    def system(self) -> str:
        """The system prompt, whichever API the request used."""
        body = self.json
        if "system" in body:
            return body["system"] if isinstance(body["system"], str) else json.dumps(body["system"])
        return next((m["content"] for m in body["messages"] if m["role"] == "system"), "")

    def turns(self) -> list[dict]:
        """The non-system messages."""
        return [m for m in self.json["messages"] if m["role"] != "system"]


# ---------------------------------------------------------------- Anthropic's sampling rules

#: Models that answer ``temperature`` with a 400 under any API version (Anthropic removed
#: the sampling parameters from Claude Opus 4.7 on). The fake's own list, written out,
#: not rayopt's rule: tests check the rule against it.
NO_SAMPLING_MODELS = {"claude-opus-4-7", "claude-opus-4-8", "claude-sonnet-5", "claude-opus-5"}


def _anthropic_sampling_refusal(seen: Seen) -> Reply | None:
    """Anthropic's Messages API on sampling parameters: API version 2026-10-21 (what the
    anthropic SDK >= 2 sends) refuses them all; 2023-06-01 takes ``temperature`` except
    for NO_SAMPLING_MODELS."""
    body = seen.json
    extra = sorted({"temperature", "top_p", "top_k"} & set(body))
    if not extra:
        return None
    if seen.headers.get("anthropic-version") != "2023-06-01":
        return anthropic_error(
            400, "invalid_request_error", f"{extra[0]}: Extra inputs are not permitted"
        )
    if body.get("model") in NO_SAMPLING_MODELS:
        return anthropic_error(
            400, "invalid_request_error", f"`{extra[0]}` is deprecated for this model."
        )
    return None


# ---------------------------------------------------------------- wire-format builders

_counter = iter(range(1, 10**9))


def openai_completion(
    content: str | None,
    *,
    model: str = "gpt-4o-2024-05-13",
    prompt_tokens: int = 1000,
    completion_tokens: int = 200,
    refusal: str | None = None,
    finish_reason: str = "stop",
) -> Reply:
    """A ``chat.completion`` object as OpenAI returns it (openai/types/chat/chat_completion.py)."""
    n = next(_counter)
    body = {
        "id": f"chatcmpl-fake{n}",
        "object": "chat.completion",
        "created": 1_700_000_000 + n,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": content,
                    "refusal": refusal,
                    "annotations": [],
                },
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        },
        "service_tier": "default",
        "system_fingerprint": "fp_fake",
    }
    return Reply(200, body, {"x-request-id": f"req_fake{n}"})


def openai_error(
    status: int,
    message: str,
    *,
    type_: str = "invalid_request_error",
    code: str | None = None,
    headers: dict[str, str] | None = None,
    delay_s: float = 0.0,
) -> Reply:
    """OpenAI's error envelope: ``{"error": {"message", "type", "param", "code"}}``."""
    body = {"error": {"message": message, "type": type_, "param": None, "code": code}}
    return Reply(status, body, {"x-request-id": "req_fake_err", **(headers or {})}, delay_s)


def openai_rate_limited(retry_after: str | None = None, retry_after_ms: str | None = None) -> Reply:
    headers = {}
    if retry_after is not None:
        headers["retry-after"] = retry_after
    if retry_after_ms is not None:
        headers["retry-after-ms"] = retry_after_ms
    return openai_error(
        429,
        "Rate limit reached for gpt-4o in organization org-fake on tokens per min (TPM).",
        type_="tokens",
        code="rate_limit_exceeded",
        headers=headers,
    )


def anthropic_message(
    text: str | None,
    *,
    model: str = "claude-sonnet-4-6",
    input_tokens: int = 1000,
    output_tokens: int = 200,
    stop_reason: str = "end_turn",
) -> Reply:
    """A ``message`` object as Anthropic returns it (anthropic/types/message.py)."""
    n = next(_counter)
    content = [] if text is None else [{"type": "text", "text": text, "citations": None}]
    body = {
        "id": f"msg_fake{n}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "service_tier": "standard",
        },
    }
    return Reply(200, body, {"request-id": f"req_fake{n}"})


def anthropic_error(
    status: int,
    type_: str,
    message: str,
    *,
    headers: dict[str, str] | None = None,
    delay_s: float = 0.0,
) -> Reply:
    """Anthropic's error envelope: ``{"type": "error", "error": {"type", "message"}}``."""
    body = {"type": "error", "error": {"type": type_, "message": message}, "request_id": "req_e"}
    return Reply(status, body, {"request-id": "req_e", **(headers or {})}, delay_s)


# ---------------------------------------------------------------- the server

Responder = Callable[[Seen], Reply]


class FakeLLMServer:
    """Scripted server; use as a context manager. Replies come from ``responder`` if
    given, else from the queue; an empty queue answers 500 so a runaway client loop
    fails fast instead of hanging."""

    def role(self, api_key_env: str, model: str = "fake-model") -> dict:
        """A mutator role config (thinker or coder) that sends its requests here."""
        return dict(
            provider="openai_compatible",
            base_url=self.url + "/v1",
            model=model,
            api_key_env=api_key_env,
            timeout_s=10,
        )

    def __init__(self, script: Iterable[Reply] = (), responder: Responder | None = None):
        self.queue: collections.deque[Reply] = collections.deque(script)
        self.responder = responder
        self.requests: list[Seen] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- control
    def push(self, *replies: Reply) -> None:
        with self._lock:
            self.queue.extend(replies)

    @property
    def url(self) -> str:
        assert self._httpd is not None
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeLLMServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length)
                seen = Seen(
                    "POST",
                    self.path,
                    {k.lower(): v for k, v in self.headers.items()},
                    raw,
                    time.monotonic(),
                )
                with server._lock:
                    server.requests.append(seen)
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    reply = server._next(seen)
                    time.sleep(min(reply.delay_s, MAX_DELAY_S))
                    self._send(reply)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout); nothing to answer
                finally:
                    seen.t_end = time.monotonic()
                    with server._lock:
                        server.in_flight -= 1

            def _send(self, reply: Reply) -> None:
                if isinstance(reply.body, bytes):
                    payload, ctype = reply.body, "application/octet-stream"
                elif isinstance(reply.body, str):
                    payload, ctype = reply.body.encode(), "text/plain"
                else:
                    payload, ctype = json.dumps(reply.body).encode(), "application/json"
                self.send_response(reply.status)
                self.send_header("content-type", ctype)
                self.send_header("content-length", str(len(payload)))
                for k, v in reply.headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(payload)
                self.wfile.flush()

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._httpd is not None and self._thread is not None
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def _next(self, seen: Seen) -> Reply:
        if seen.path.endswith("/v1/messages"):
            refusal = _anthropic_sampling_refusal(seen)
            if refusal is not None:
                return refusal
        if self.responder is not None:
            return self.responder(seen)
        with self._lock:
            if self.queue:
                return self.queue.popleft()
        return Reply(500, {"error": {"message": "fake server: script exhausted", "type": "x"}})

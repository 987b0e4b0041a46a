"""A small async client layer over the official SDKs: ``openai`` (AsyncOpenAI),
``anthropic`` (AsyncAnthropic) and ``openai_compatible`` (AsyncOpenAI with a
``base_url``: vLLM, Ollama, llama.cpp server).

The SDKs build requests, authenticate and parse replies. This module owns what the
mutator needs on top, per HTTP attempt: a record (latency, tokens, cost, error), a
retry policy that honours ``retry-after`` and backs off with jitter, a hard timeout,
and a concurrency limit shared by every caller of one endpoint in this process. The
SDKs' own retries are off (``max_retries=0``) so that every attempt is seen and
accounted for here.

API keys are read from the environment variable a role names, handed to the SDK, and
never stored on records, results, exceptions or log lines (error text is scrubbed).
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import functools
import importlib
import logging
import os
import random
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

from rayopt.search.mutators.base import CallRecord, emit_call
from rayopt.search.mutators.config import ANTHROPIC_SAMPLING_API_VERSION, Price, RoleConfig

log = logging.getLogger(__name__)

#: Placeholder key for openai_compatible servers that need none (vLLM's convention);
#: the SDK refuses to build a client without some key.
NO_KEY = "EMPTY"
_ERROR_CHARS = 400


@dataclasses.dataclass(frozen=True)
class ChatReply:
    """The text of one model reply and what it cost."""

    text: str
    tokens_in: int
    tokens_out: int
    finish_reason: str | None = None
    refusal: str | None = None


@dataclasses.dataclass(frozen=True)
class CallOutcome:
    """The result of one logical call: a reply, or why there is none.

    ``records`` has one CallRecord per HTTP attempt, the last one being the successful
    attempt when ``reply`` is set. ``fatal`` means trying again will not help this
    mutation (missing key, 401, 400 ...), as opposed to transient failures that
    exhausted their retries.
    """

    reply: ChatReply | None
    records: tuple[CallRecord, ...]
    error: str | None = None
    fatal: bool = False


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter for transient failures; ``retry-after`` wins."""

    max_retries: int = 4
    backoff_base_s: float = 1.0
    backoff_max_s: float = 30.0
    retry_after_max_s: float = 120.0

    def delay(self, retry: int, retry_after: float | None, rng: random.Random) -> float:
        """Seconds to wait before retry number ``retry + 1`` (``retry`` counts from 0)."""
        if retry_after is not None and retry_after > 0:
            return min(retry_after, self.retry_after_max_s)
        ceiling = min(self.backoff_max_s, self.backoff_base_s * 2.0**retry)
        return ceiling * (0.5 + 0.5 * rng.random())  # "equal jitter": never 0, never > ceiling


# ---------------------------------------------------------------- shared concurrency limits

_SEM_LOCK = threading.Lock()
_Limits = dict[tuple[str, str], tuple[int, asyncio.Semaphore]]
_SEMAPHORES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Limits]
_SEMAPHORES = weakref.WeakKeyDictionary()


def provider_semaphore(provider: str, base_url: str | None, limit: int) -> asyncio.Semaphore:
    """The semaphore every client of one endpoint shares within this process.

    Keyed by event loop too: an asyncio.Semaphore belongs to one loop, and tests (or a
    driver) may run several loops one after another. The first limit asked for an
    endpoint wins; a later, different one is logged and ignored.
    """
    loop = asyncio.get_running_loop()
    key = (provider, base_url or "")
    with _SEM_LOCK:
        per_loop = _SEMAPHORES.setdefault(loop, {})
        if key not in per_loop:
            per_loop[key] = (limit, asyncio.Semaphore(limit))
        have, sem = per_loop[key]
    if have != limit:
        _warn_once(
            ("concurrency", key, limit),
            "concurrency for %s %s is already %d in this process; ignoring %d",
            provider,
            base_url or "(default url)",
            have,
            limit,
        )
    return sem


_WARNED: set[tuple] = set()


def _warn_once(key: tuple, msg: str, *args: object) -> None:
    with _SEM_LOCK:
        if key in _WARNED:
            return
        _WARNED.add(key)
    log.warning(msg, *args)


# ---------------------------------------------------------------- errors


@dataclasses.dataclass(frozen=True)
class _Failure:
    kind: str
    message: str
    retryable: bool
    retry_after: float | None = None


@functools.lru_cache(maxsize=1)
def _sdk_errors() -> dict[str, tuple[type[BaseException], ...]]:
    import anthropic
    import openai

    return {
        "timeout": (openai.APITimeoutError, anthropic.APITimeoutError),
        "connection": (openai.APIConnectionError, anthropic.APIConnectionError),
        "status": (openai.APIStatusError, anthropic.APIStatusError),
        "validation": (openai.APIResponseValidationError, anthropic.APIResponseValidationError),
    }


def parse_retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds from ``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date), as
    OpenAI and Anthropic send them; None if absent or unreadable."""
    if not headers:
        return None
    try:
        return float(headers["retry-after-ms"]) / 1000.0
    except (KeyError, TypeError, ValueError):
        pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        pass
    parsed = email.utils.parsedate_tz(value)
    if parsed is None:
        return None
    return float(email.utils.mktime_tz(parsed) - time.time())


def classify(exc: BaseException, timeout_s: float) -> _Failure:
    """Map an SDK (or asyncio) exception to a failure kind and whether to retry.

    Retried: timeouts, connection errors, 408, 409, 429, 5xx (and whatever the server
    marks with ``x-should-retry: true``). Everything else (400, 401, 403, 404, 422 ...)
    is fatal for the mutation: asking again cannot fix a bad key or a bad request.
    """
    errs = _sdk_errors()
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError, *errs["timeout"])):
        return _Failure("timeout", f"no reply within {timeout_s:g}s", True)
    if isinstance(exc, errs["connection"]):
        return _Failure("connection", str(exc) or type(exc).__name__, True)
    if isinstance(exc, errs["status"]):
        status = int(getattr(exc, "status_code", 0))
        headers = getattr(getattr(exc, "response", None), "headers", None)
        message = getattr(exc, "message", None) or str(exc)
        should = headers.get("x-should-retry") if headers is not None else None
        if status == 429:
            kind, retry = "rate_limited", True
        elif status >= 500:
            kind, retry = "server_error", True
        elif status in (408, 409):
            kind, retry = "http_error", True
        else:
            kind, retry = "http_error", False
        if should in ("true", "false"):
            retry = should == "true"
        return _Failure(f"{kind} {status}", message, retry, parse_retry_after(headers))
    if isinstance(exc, errs["validation"]):
        return _Failure("bad_response", str(exc), True)
    return _Failure("internal", f"{type(exc).__name__}: {exc}", False)


def redact(text: str, secrets: Sequence[str | None]) -> str:
    """Remove every secret from ``text`` and bound its length."""
    for s in secrets:
        if s and len(s) >= 4:
            text = text.replace(s, "[REDACTED]")
    return text if len(text) <= _ERROR_CHARS else text[: _ERROR_CHARS - 3] + "..."


# ---------------------------------------------------------------- the client


class ChatClient:
    """One role's endpoint: lazily builds the SDK client (one per event loop) and runs
    each call through the retry loop, returning every attempt's CallRecord."""

    def __init__(
        self,
        role: str,
        config: RoleConfig,
        *,
        policy: RetryPolicy,
        prices: Mapping[str, Price],
        concurrency: int,
        rng: random.Random | None = None,
    ) -> None:
        self.role = role
        self.config = config
        self.policy = policy
        self.price = prices.get(config.model)
        self.concurrency = concurrency
        self.rng = rng or random.Random()
        self._client: Any = None
        self._loop: weakref.ref[asyncio.AbstractEventLoop] | None = None
        # Import the SDK now, not inside the first call: it takes seconds and would
        # block the event loop (and inflate the first latency) there.
        importlib.import_module("anthropic" if config.provider == "anthropic" else "openai")
        if self.price is None:
            _warn_once(
                ("price", config.model),
                "no price for model %r in price_table: its calls are recorded at $0 "
                "(CallRecord.priced=False) and do not count against the budget",
                config.model,
            )

    def __repr__(self) -> str:  # never shows a key: there is none stored here
        c = self.config
        return f"ChatClient(role={self.role!r}, provider={c.provider!r}, model={c.model!r})"

    # -- SDK plumbing
    def _api_key(self) -> str | None:
        env = self.config.key_env
        if env is None:
            return NO_KEY
        return os.environ.get(env) or None

    def _sdk_client(self, key: str) -> Any:
        loop = asyncio.get_running_loop()
        if self._client is not None and self._loop is not None and self._loop() is loop:
            return self._client
        c = self.config
        if c.provider == "anthropic":
            import anthropic

            self._client = anthropic.AsyncAnthropic(
                api_key=key, base_url=c.base_url, max_retries=0, timeout=c.timeout_s
            )
        else:
            import openai

            kwargs: dict[str, Any] = {"api_key": key, "max_retries": 0, "timeout": c.timeout_s}
            if c.base_url:
                kwargs["base_url"] = c.base_url
            self._client = openai.AsyncOpenAI(**kwargs)
        self._loop = weakref.ref(loop)
        return self._client

    async def _send(
        self,
        client: Any,
        system: str,
        messages: Sequence[Mapping[str, str]],
        seed: int | None = None,
    ) -> ChatReply:
        c = self.config
        if c.provider == "anthropic":
            extra: dict[str, Any] = {}
            if c.temperature is not None:
                # SDK >= 2 has no temperature argument and sends API version 2026-10-21,
                # which refuses it for every model; under 2023-06-01 the models that still
                # take one do (config.anthropic_takes_temperature). Only then is it sent.
                extra = dict(
                    extra_body={"temperature": c.temperature},
                    extra_headers={"anthropic-version": ANTHROPIC_SAMPLING_API_VERSION},
                )
            msg = await client.messages.create(
                model=c.model,
                system=system,
                messages=list(messages),
                max_tokens=c.max_tokens,
                timeout=c.timeout_s,
                **extra,
            )
            text = "".join(getattr(b, "text", "") for b in msg.content if b.type == "text")
            u = msg.usage
            cached = (u.cache_creation_input_tokens or 0) + (u.cache_read_input_tokens or 0)
            tokens_in = u.input_tokens + cached
            refusal = None
            if msg.stop_reason == "refusal":
                refusal = "the model refused (stop_reason=refusal)"
            return ChatReply(text, tokens_in, u.output_tokens, msg.stop_reason, refusal)

        kwargs: dict[str, Any] = {
            "model": c.model,
            "messages": [{"role": "system", "content": system}, *messages],
            "timeout": c.timeout_s,
        }
        if c.temperature is not None:
            kwargs["temperature"] = c.temperature
        # OpenAI deprecated max_tokens for max_completion_tokens (newer models reject
        # max_tokens); local servers reliably understand max_tokens.
        kwargs["max_completion_tokens" if c.provider == "openai" else "max_tokens"] = c.max_tokens
        if c.json_mode:
            kwargs["response_format"] = {"type": "json_object"}
        if seed is not None:  # OpenAI and most compatible servers sample reproducibly
            kwargs["seed"] = seed
        resp = await client.chat.completions.create(**kwargs)
        usage = resp.usage
        tokens_in = usage.prompt_tokens if usage else 0
        tokens_out = usage.completion_tokens if usage else 0
        if not resp.choices:
            return ChatReply("", tokens_in, tokens_out, None, None)
        choice = resp.choices[0]
        return ChatReply(
            choice.message.content or "",
            tokens_in,
            tokens_out,
            choice.finish_reason,
            choice.message.refusal,
        )

    # -- the attempt loop
    async def chat(
        self,
        system: str,
        messages: Sequence[Mapping[str, str]],
        *,
        attempt: int,
        seed: int | None = None,
    ) -> CallOutcome:
        """Send one conversation; retry transient failures per the policy. ``seed``
        goes to providers that accept one (OpenAI-style; Anthropic has none). Every
        record is also handed to the proposal's call sink as soon as it exists
        (``base.emit_call``).

        Never raises for API or network trouble (cancellation still propagates).
        """
        c = self.config
        key = self._api_key()
        record = functools.partial(
            CallRecord, role=self.role, provider=c.provider, model=c.model, attempt=attempt
        )
        if key is None:
            error = f"missing API key: environment variable {c.key_env} is not set"
            return CallOutcome(None, (record(ok=False, latency_s=0.0, error=error),), error, True)
        secrets = (key,) if key != NO_KEY else ()
        sem = provider_semaphore(c.provider, c.base_url, self.concurrency)
        records: list[CallRecord] = []
        failure: _Failure | None = None
        for retry in range(self.policy.max_retries + 1):
            async with sem:
                t0 = time.monotonic()
                try:
                    client = self._sdk_client(key)
                    t0 = time.monotonic()  # latency is the request, not client setup
                    # The SDK timeout bounds each read; this bounds the whole call.
                    reply = await asyncio.wait_for(
                        self._send(
                            client,
                            system,
                            messages,
                            None if c.provider == "anthropic" else seed,
                        ),
                        timeout=c.timeout_s + 1.0,
                    )
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - classified below, never re-raised
                    failure = classify(exc, c.timeout_s)
                    if failure.kind == "internal":
                        log.warning(
                            "%s %s: unexpected %s",
                            self.role,
                            c.model,
                            redact(failure.message, secrets),
                        )
                    reply = None
                latency = time.monotonic() - t0
            if reply is not None:
                cost = self.price.cost(reply.tokens_in, reply.tokens_out) if self.price else 0.0
                records.append(
                    record(
                        ok=True,
                        latency_s=latency,
                        tokens_in=reply.tokens_in,
                        tokens_out=reply.tokens_out,
                        cost_usd=cost,
                        priced=self.price is not None,
                        retry=retry,
                    )
                )
                emit_call(records[-1])
                return CallOutcome(reply, tuple(records))
            assert failure is not None
            error = redact(f"{failure.kind}: {failure.message}", secrets)
            records.append(
                record(
                    ok=False,
                    latency_s=latency,
                    error=error,
                    retry=retry,
                    priced=self.price is not None,
                )
            )
            emit_call(records[-1])
            if not failure.retryable:
                return CallOutcome(None, tuple(records), error, fatal=True)
            if retry < self.policy.max_retries:
                wait = self.policy.delay(retry, failure.retry_after, self.rng)
                log.info(
                    "%s %s/%s attempt %d: %s; retry %d/%d in %.2fs",
                    self.role,
                    c.provider,
                    c.model,
                    attempt,
                    error,
                    retry + 1,
                    self.policy.max_retries,
                    wait,
                )
                await asyncio.sleep(wait)
        error = f"{records[-1].error} (gave up after {self.policy.max_retries} retries)"
        return CallOutcome(None, tuple(records), error, fatal=False)

    async def aclose(self) -> None:
        """Close the SDK client if it belongs to the running loop."""
        client, self._client = self._client, None
        if client is None:
            return
        try:
            if self._loop is not None and self._loop() is asyncio.get_running_loop():
                await client.close()
        except Exception:  # noqa: BLE001 - closing is best effort
            pass

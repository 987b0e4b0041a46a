"""The LLM mutator against a fake endpoint on 127.0.0.1, through the real openai and
anthropic SDKs: what the thinker and coder are sent, how replies are read, retries,
timeouts, accounting, budget, concurrency and key hygiene."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import threading
from pathlib import Path

import pytest
from fake_llm import (
    FakeLLMServer,
    Reply,
    Seen,
    anthropic_error,
    anthropic_message,
    openai_completion,
    openai_error,
    openai_rate_limited,
)

from rayopt.optim import library
from rayopt.program import CheckResult, check
from rayopt.search.mutators.actor import carried_check, check_proposal
from rayopt.search.mutators.base import MutationRequest, MutationResult, Mutator, Scored
from rayopt.search.mutators.config import ConfigError, LLMConfig, RoleConfig
from rayopt.search.mutators.extract import extract_json_object, parse_coder, parse_thinker
from rayopt.search.mutators.llm import Budget, LLMMutator, Prompts, downsample
from rayopt.search.mutators.validation import DefaultValidator, describe_check_result

ROOT = Path(__file__).resolve().parents[1]
KEY_ENV = "RAYOPT_TEST_LLM_KEY"
KEY = "sk-test-SECRET-7f3a9c1e2b"
GPT = "gpt-4o-2024-05-13"
CLAUDE = "claude-sonnet-4-6"
PRICES = {GPT: {"input": 5.0, "output": 15.0}, CLAUDE: {"input": 3.0, "output": 15.0}}
# 1000 tokens in, 200 out (the fake's default usage) at $5/$15 per 1M:
GPT_CALL_USD = (1000 * 5.0 + 200 * 15.0) / 1e6

IDEA = "Scale the update by (1 + log(1 + d)) so that dormant neurons get larger updates."
THOUGHT = "Dormant neurons barely move; boosting them may reactivate them."
CURRENT = library.SIGN_UPDATE
NEW_CODE = library.SIGN_UPDATE.replace(
    "    update = relative_update * w * var1\n",
    "    # Boost updates of dormant neurons\n"
    "    update = relative_update * w * var1 * (1 + jnp.log(1 + d))\n",
)
BAD_SIGNATURE = NEW_CODE.replace("l_p, key)", "key)")
BAD_SYNTAX = NEW_CODE.replace("var1 = var1 * t_p", "var1 = var1 * * t_p")

ENVS = ("Asterix-MinAtar", "Breakout-MinAtar")


def scored(
    cid: str,
    code: str,
    fit: tuple[float, float],
    auc: tuple[float, float],
    idea: str | None = None,
    curves: dict | None = None,
) -> Scored:
    return Scored(
        cid,
        code,
        dict(zip(ENVS, fit, strict=True)),
        dict(zip(ENVS, auc, strict=True)),
        idea,
        curves,
    )


def request(history: tuple[Scored, ...] = (), curves: dict | None = None) -> MutationRequest:
    current = scored("cur", CURRENT, (11.25, 7.5), (6.125, 3.25), curves=curves)
    context = (
        dataclasses.replace(
            scored("ctx1", library.DISCOVERED_1, (31.5, 4.0), (20.0, 2.0), curves=curves),
            note="best of 9 in Asterix-MinAtar by final return",
        ),
        dataclasses.replace(
            scored("ctx2", library.DISCOVERED_3, (12.0, 29.75), (8.0, 17.5), curves=curves),
            note="2nd best of 9 in Breakout-MinAtar by final return",
        ),
    )
    return MutationRequest(current, context, history, seed=0, generation=1, step=len(history))


def thinker_json(suggestion: str = IDEA, thought: str = THOUGHT) -> str:
    return json.dumps({"thought": thought, "suggestion": suggestion})


def coder_json(code: str = NEW_CODE) -> str:
    return json.dumps({"code": code})


def config(
    server: FakeLLMServer, provider: str = "openai", model: str | None = None, **overrides
) -> LLMConfig:
    """Tiny backoff and timeouts so failure paths run in milliseconds."""
    if provider == "anthropic":
        role = {"provider": "anthropic", "model": model or CLAUDE, "base_url": server.url}
    elif provider == "openai":
        role = {"provider": "openai", "model": GPT, "base_url": server.url + "/v1"}
    else:
        role = {
            "provider": "openai_compatible",
            "model": "qwen2.5-coder",
            "base_url": server.url + "/compat/v1",
        }
    if provider != "openai_compatible":
        role["api_key_env"] = KEY_ENV
    role["timeout_s"] = overrides.pop("timeout_s", 5.0)
    d = {
        "kind": "llm",
        "thinker": dict(role),
        "coder": dict(role),
        "backoff_base_s": 0.01,
        "backoff_max_s": 0.05,
        "price_table": PRICES,
        **overrides,
    }
    return LLMConfig.from_dict(d)


def run(coro, limit: float = 30.0):
    """Every test's event loop is bounded: a hang fails instead of stalling the suite."""
    return asyncio.run(asyncio.wait_for(coro, limit))


async def propose(cfg: LLMConfig, req: MutationRequest | None = None, **kwargs):
    mutator = LLMMutator(cfg, **kwargs)
    try:
        return await mutator.propose(req or request())
    finally:
        await mutator.aclose()


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")  # never route the fake via a proxy


def strict_validator(code: str) -> str | None:
    """rayopt.program.check without the dry run: deterministic and fast."""
    return describe_check_result(check(code, dry_run=False))


# ---------------------------------------------------------------- happy paths


def test_happy_path_openai():
    with FakeLLMServer([openai_completion(thinker_json()), openai_completion(coder_json())]) as s:
        result = run(propose(config(s), validate=strict_validator))

    assert isinstance(LLMMutator(config(s)), Mutator)
    assert result.ok, result.error
    assert result.code == NEW_CODE
    assert (result.idea, result.thought) == (IDEA, THOUGHT)
    assert [(c.role, c.attempt, c.retry, c.ok) for c in result.calls] == [
        ("thinker", 1, 0, True),
        ("coder", 1, 0, True),
    ]
    for c in result.calls:
        assert (c.provider, c.model, c.tokens_in, c.tokens_out) == ("openai", GPT, 1000, 200)
        assert c.cost_usd == pytest.approx(GPT_CALL_USD) and c.priced
        assert c.latency_s > 0
    assert result.cost_usd == pytest.approx(2 * GPT_CALL_USD)

    thinker, coder = s.requests
    assert thinker.path == coder.path == "/v1/chat/completions"
    assert thinker.headers["authorization"] == f"Bearer {KEY}"
    tb, cb = thinker.json, coder.json
    assert (tb["model"], tb["temperature"], cb["temperature"]) == (GPT, 0.7, 0.3)
    assert tb["max_completion_tokens"] == 4096
    assert thinker.system().startswith("You are an AI researcher specializing in reinforcement")
    assert coder.system().startswith("You are an expert AI programmer specializing")

    # The thinker sees the current code with fitness and AUC per env, the context
    # optimisers with theirs, and every environment by name.
    (t_user,) = thinker.turns()
    text = t_user["content"]
    assert CURRENT.strip() in text
    assert library.DISCOVERED_1.strip() in text and library.DISCOVERED_3.strip() in text
    for number in ("11.250", "7.500", "6.125", "3.250", "31.500", "29.750", "17.500"):
        assert number in text
    # each context optimiser says truthfully why it is shown (sampled among the top few)
    assert "(best of 9 in Asterix-MinAtar by final return)" in text
    assert "(2nd best of 9 in Breakout-MinAtar by final return)" in text
    assert "Mean return over training" not in text  # curves are off by default

    # The coder sees only the current code and the idea.
    (c_user,) = coder.turns()
    ctext = c_user["content"]
    assert CURRENT.strip() in ctext and IDEA in ctext
    assert THOUGHT not in ctext
    assert library.DISCOVERED_1.strip() not in ctext and "11.250" not in ctext
    assert "Fitness" not in ctext and "Asterix" not in ctext


def test_happy_path_anthropic():
    replies = [anthropic_message(thinker_json()), anthropic_message(coder_json())]
    with FakeLLMServer(replies) as s:
        result = run(propose(config(s, "anthropic"), validate=strict_validator))

    assert result.ok, result.error
    assert result.code == NEW_CODE and result.idea == IDEA
    for c in result.calls:
        assert (c.provider, c.model, c.tokens_in, c.tokens_out) == ("anthropic", CLAUDE, 1000, 200)
        assert c.cost_usd == pytest.approx((1000 * 3.0 + 200 * 15.0) / 1e6)
    thinker, coder = s.requests
    assert thinker.path == "/v1/messages"
    # anthropic SDK 2.x authenticates with a bearer token (older ones: x-api-key)
    assert (
        thinker.headers.get("authorization") == f"Bearer {KEY}"
        or thinker.headers.get("x-api-key") == KEY
    )
    tb = thinker.json
    assert tb["system"].startswith("You are an AI researcher")
    assert tb["max_tokens"] == 4096 and tb["model"] == CLAUDE
    # Sonnet 4.6 takes a temperature: Table 2's reach the wire, under the API version
    # that still has the parameter (the SDK's default, 2026-10-21, refuses it)
    assert (tb["temperature"], coder.json["temperature"]) == (0.7, 0.3)
    assert {r.headers["anthropic-version"] for r in s.requests} == {"2023-06-01"}
    assert not {"top_p", "top_k"} & (set(tb) | set(coder.json))
    assert [m["role"] for m in coder.turns()] == ["user"]
    assert IDEA in coder.turns()[0]["content"]


@pytest.mark.parametrize("model", ["claude-opus-4-7", "claude-sonnet-5"])
def test_anthropic_model_without_sampling_gets_no_temperature(model):
    """Claude Opus 4.7 and later answer any temperature with a 400: the role defaults to
    none, nothing is sent, the SDK's own API version goes out, and the call succeeds."""
    replies = [anthropic_message(thinker_json()), anthropic_message(coder_json())]
    with FakeLLMServer(replies) as s:
        cfg = config(s, "anthropic", model=model)
        assert (cfg.thinker.temperature, cfg.coder.temperature) == (None, None)
        result = run(propose(cfg, validate=strict_validator))
    assert result.ok, result.error
    assert len(s.requests) == 2
    for r in s.requests:
        assert r.json["model"] == model
        assert not {"temperature", "top_p", "top_k"} & set(r.json)
        assert r.headers["anthropic-version"] != "2023-06-01"  # the SDK's default


def test_fake_anthropic_refuses_temperature_where_the_real_api_does():
    """The fake's rule, checked at the wire with the real SDK: a temperature under the
    SDK's API version, or for Opus 4.7 under 2023-06-01, is an HTTP 400 (so the tests
    above would fail if rayopt sent one there)."""
    import anthropic

    async def send(model, headers):
        client = anthropic.AsyncAnthropic(api_key=KEY, base_url=s.url, max_retries=0)
        try:
            return await client.messages.create(
                model=model,
                max_tokens=10,
                messages=[{"role": "user", "content": "hi"}],
                extra_body={"temperature": 0.7},
                extra_headers=headers,
            )
        finally:
            await client.close()

    with FakeLLMServer([anthropic_message("ok")]) as s:
        with pytest.raises(anthropic.BadRequestError, match="Extra inputs are not permitted"):
            run(send(CLAUDE, {}))
        with pytest.raises(anthropic.BadRequestError, match="deprecated for this model"):
            run(send("claude-opus-4-7", {"anthropic-version": "2023-06-01"}))
        assert run(send(CLAUDE, {"anthropic-version": "2023-06-01"})).content[0].text == "ok"


def test_openai_compatible_base_url_without_key():
    with FakeLLMServer(
        [
            openai_completion(thinker_json(), model="qwen2.5-coder"),
            openai_completion(coder_json(), model="qwen2.5-coder"),
        ]
    ) as s:
        result = run(propose(config(s, "openai_compatible"), validate=strict_validator))

    assert result.ok, result.error
    assert [r.path for r in s.requests] == ["/compat/v1/chat/completions"] * 2
    body = s.requests[0].json
    assert body["max_tokens"] == 4096 and "max_completion_tokens" not in body
    assert s.requests[0].headers["authorization"] == "Bearer EMPTY"
    # Not in the price table: recorded at $0 and flagged.
    assert all(c.cost_usd == 0.0 and not c.priced for c in result.calls)


# ---------------------------------------------------------------- transport failures


def test_rate_limit_honours_retry_after_seconds():
    with FakeLLMServer(
        [
            openai_rate_limited(retry_after="1"),
            openai_completion(thinker_json()),
            openai_completion(coder_json()),
        ]
    ) as s:
        result = run(propose(config(s), validate=strict_validator))

    assert result.ok, result.error
    first, second = s.requests[:2]
    assert second.t_start - first.t_end >= 0.95  # backoff alone would be ~0.01 s
    t = [c for c in result.calls if c.role == "thinker"]
    assert [(c.attempt, c.retry, c.ok) for c in t] == [(1, 0, False), (1, 1, True)]
    assert "rate_limited 429" in t[0].error and t[0].tokens_in == 0 and t[0].cost_usd == 0


def test_rate_limit_honours_retry_after_ms_and_overload_anthropic():
    replies = [
        anthropic_error(
            429,
            "rate_limit_error",
            "Number of request tokens has exceeded your per-minute rate limit",
            headers={"retry-after-ms": "300"},
        ),
        anthropic_error(529, "overloaded_error", "Overloaded"),
        anthropic_message(thinker_json()),
        anthropic_message(coder_json()),
    ]
    with FakeLLMServer(replies) as s:
        result = run(propose(config(s, "anthropic"), validate=strict_validator))

    assert result.ok, result.error
    assert s.requests[1].t_start - s.requests[0].t_end >= 0.28
    errors = [c.error for c in result.calls if not c.ok]
    assert "rate_limited 429" in errors[0] and "server_error 529" in errors[1]
    assert "Overloaded" in errors[1]


def test_server_errors_back_off_exponentially():
    replies = [
        openai_error(500, "The server had an error", type_="server_error"),
        openai_error(503, "Service unavailable", type_="server_error"),
        openai_error(502, "Bad gateway", type_="server_error"),
        openai_completion(thinker_json()),
        openai_completion(coder_json()),
    ]
    with FakeLLMServer(replies) as s:
        cfg = config(s, backoff_base_s=0.1, backoff_max_s=1.0)
        result = run(propose(cfg, validate=strict_validator))

    assert result.ok, result.error
    gaps = [b.t_start - a.t_end for a, b in zip(s.requests, s.requests[1:4], strict=False)]
    # Equal jitter: the wait before retry k lies in [0.5, 1] * 0.1 * 2**k.
    for k, gap in enumerate(gaps):
        assert 0.5 * 0.1 * 2**k - 0.01 <= gap <= 0.1 * 2**k + 0.5, (k, gaps)
    assert [c.retry for c in result.calls if c.role == "thinker"] == [0, 1, 2, 3]


def test_timeout_is_recorded_and_retried():
    replies = [openai_completion(thinker_json()), openai_completion(thinker_json())]
    replies[0].delay_s = 2.0
    with FakeLLMServer([*replies, openai_completion(coder_json())]) as s:
        result = run(propose(config(s, timeout_s=0.3), validate=strict_validator))

    assert result.ok, result.error
    first = result.calls[0]
    assert not first.ok and first.error.startswith("timeout")
    assert 0.25 <= first.latency_s < 1.5
    assert [c.retry for c in result.calls if c.role == "thinker"] == [0, 1]


def test_transport_failures_exhaust_retries_then_attempts():
    err = openai_error(500, "boom", type_="server_error")
    with FakeLLMServer([err] * 4) as s:
        cfg = config(s, max_retries=1, max_thinker_attempts=2)
        result = run(propose(cfg, validate=strict_validator))

    assert not result.ok and result.code is None
    assert "thinker gave no usable idea in 2 attempts" in result.error
    assert "gave up after 1 retries" in result.error
    assert [(c.attempt, c.retry, c.ok) for c in result.calls] == [
        (1, 0, False),
        (1, 1, False),
        (2, 0, False),
        (2, 1, False),
    ]
    assert len(s.requests) == 4


def test_auth_error_is_fatal_and_the_key_is_scrubbed():
    # A server that echoes the key back in its error must not leak it into records.
    with FakeLLMServer(
        [openai_error(401, f"Incorrect API key provided: {KEY}.", code="invalid_api_key")]
    ) as s:
        result = run(propose(config(s), validate=strict_validator))

    assert not result.ok and len(s.requests) == 1  # no retry of a 401
    assert "http_error 401" in result.error
    assert KEY not in result.error and "[REDACTED]" in result.error
    assert KEY not in repr(result)


def test_missing_key_env_fails_without_a_request(monkeypatch):
    monkeypatch.delenv(KEY_ENV)
    with FakeLLMServer([]) as s:
        cfg = config(s)
        assert cfg.missing_keys() == [KEY_ENV]
        result = run(propose(cfg, validate=strict_validator))
    assert not result.ok and s.requests == []
    assert f"environment variable {KEY_ENV} is not set" in result.error


# ---------------------------------------------------------------- reading replies


THINKER_RECOVERABLE = {
    "prose around json": f"Sure! Here is my proposal:\n{thinker_json()}\nHope this helps.",
    "fenced json": f"```json\n{thinker_json()}\n```",
    "trailing comma": f'{{"thought": "{THOUGHT}", "suggestion": "{IDEA}",}}',
    "raw newline in string": f'{{"thought": "line one\nline two", "suggestion": "{IDEA}"}}',
    "key case": f'{{"Thought": "{THOUGHT}", "SUGGESTION": "{IDEA}"}}',
    "labelled prose": f"**Thought:** {THOUGHT}\n**Suggestion:** {IDEA}",
}


@pytest.mark.parametrize("reply", THINKER_RECOVERABLE.values(), ids=THINKER_RECOVERABLE.keys())
def test_thinker_reply_is_recovered(reply):
    with FakeLLMServer([openai_completion(reply), openai_completion(coder_json())]) as s:
        result = run(propose(config(s), validate=strict_validator))
    assert result.ok, result.error
    assert result.idea == IDEA
    assert len(s.requests) == 2
    assert IDEA in s.requests[1].turns()[0]["content"]


THINKER_UNUSABLE = {
    "not json": openai_completion("I think we should use momentum. It is a good idea."),
    "missing key": openai_completion('{"thought": "something", "idea_text": "x"}'),
    "empty suggestion": openai_completion('{"thought": "t", "suggestion": ""}'),
    "refusal": openai_completion(None, refusal="I'm sorry, I can't help with that."),
    "empty content": openai_completion(None),
    "truncated": openai_completion('{"thought": "long', finish_reason="length"),
}


@pytest.mark.parametrize("bad", THINKER_UNUSABLE.values(), ids=THINKER_UNUSABLE.keys())
def test_thinker_unusable_reply_is_retried(bad):
    with FakeLLMServer(
        [bad, openai_completion(thinker_json()), openai_completion(coder_json())]
    ) as s:
        result = run(propose(config(s), validate=strict_validator))
    assert result.ok, result.error
    first = result.calls[0]
    assert (first.role, first.attempt, first.ok) == ("thinker", 1, False)
    assert first.tokens_in == 1000 and first.cost_usd > 0  # a paid, unusable reply
    assert result.calls[1].attempt == 2 and result.calls[1].ok
    # Thinker attempts are fresh samples of the same prompt.
    assert s.requests[0].json["messages"] == s.requests[1].json["messages"]


def test_anthropic_refusal_is_retried():
    replies = [
        anthropic_message(None, stop_reason="refusal"),
        anthropic_message(thinker_json()),
        anthropic_message(coder_json()),
    ]
    with FakeLLMServer(replies) as s:
        result = run(propose(config(s, "anthropic"), validate=strict_validator))
    assert result.ok, result.error
    assert "refusal" in result.calls[0].error


CODER_RECOVERABLE = {
    "fenced python, no json": f"Here is the code:\n```python\n{NEW_CODE}```\nDone.",
    "json in prose": f"Updated optimizer:\n{coder_json()}\n",
    "escaped newlines twice": json.dumps({"code": NEW_CODE.replace("\n", "\\n")}),
    "raw newlines in json string (App. C example style)": '{\n"code": "' + NEW_CODE + '"\n}',
    "fenced code inside json": json.dumps({"code": f"```python\n{NEW_CODE}```"}),
    "imports jnp": json.dumps({"code": "import jax\nimport jax.numpy as jnp\n\n" + NEW_CODE}),
    "list of lines": json.dumps({"code": NEW_CODE.splitlines()}),
}


@pytest.mark.parametrize("reply", CODER_RECOVERABLE.values(), ids=CODER_RECOVERABLE.keys())
def test_coder_reply_is_recovered(reply):
    with FakeLLMServer([openai_completion(thinker_json()), openai_completion(reply)]) as s:
        result = run(propose(config(s), validate=strict_validator))
    assert result.ok, result.error
    assert result.code == NEW_CODE
    assert len(s.requests) == 2


@pytest.mark.parametrize(
    "bad,expect",
    [
        (BAD_SIGNATURE, "signature error"),
        (BAD_SYNTAX, "syntax error at line 4"),
        (CURRENT, "identical to the current optimizer"),
    ],
)
def test_invalid_code_is_fed_back_then_fixed(bad, expect):
    replies = [
        openai_completion(thinker_json()),
        openai_completion(coder_json(bad)),
        openai_completion(coder_json()),
    ]
    with FakeLLMServer(replies) as s:
        result = run(propose(config(s), validate=strict_validator))

    assert result.ok, result.error
    assert result.code == NEW_CODE
    coder_calls = [c for c in result.calls if c.role == "coder"]
    assert [(c.attempt, c.ok) for c in coder_calls] == [(1, False), (2, True)]
    assert expect in coder_calls[0].error
    # The retry continues the conversation: original request, the bad reply, the error.
    turns = s.requests[2].turns()
    assert [m["role"] for m in turns] == ["user", "assistant", "user"]
    assert turns[0] == s.requests[1].turns()[0]
    assert turns[1]["content"] == coder_json(bad)
    assert expect in turns[2]["content"] and coder_calls[0].error in turns[2]["content"]
    assert s.requests[2].json["temperature"] == 0.3


def test_unparseable_coder_reply_is_fed_back():
    replies = [
        openai_completion(thinker_json()),
        openai_completion("Sorry, I cannot do that."),
        openai_completion(coder_json()),
    ]
    with FakeLLMServer(replies) as s:
        result = run(propose(config(s), validate=strict_validator))
    assert result.ok
    assert "could not be read" in s.requests[2].turns()[2]["content"]


def test_exhausting_coder_attempts_returns_every_call():
    replies = [openai_completion(thinker_json())] + [
        openai_completion(coder_json(BAD_SYNTAX)) for _ in range(3)
    ]
    with FakeLLMServer(replies) as s:
        result = run(propose(config(s), validate=strict_validator))

    assert not result.ok and result.code is None
    assert result.idea == IDEA  # the idea survives for the journal
    assert "coder gave no valid code in 3 attempts" in result.error
    assert [(c.role, c.attempt, c.ok) for c in result.calls] == [
        ("thinker", 1, True),
        ("coder", 1, False),
        ("coder", 2, False),
        ("coder", 3, False),
    ]
    assert result.cost_usd == pytest.approx(4 * GPT_CALL_USD)
    assert len(s.requests[-1].turns()) == 5  # user, (assistant, user) x 2


def test_exhausting_thinker_attempts():
    with FakeLLMServer([openai_completion("no idea, sorry")] * 3) as s:
        result = run(propose(config(s), validate=strict_validator))
    assert not result.ok and len(result.calls) == 3 and len(s.requests) == 3
    assert all(c.role == "thinker" and not c.ok for c in result.calls)
    assert "thinker gave no usable idea in 3 attempts" in result.error


def test_crashing_validator_rejects_code_without_raising():
    def crash(code: str) -> str | None:
        raise RuntimeError("validator bug")

    replies = [openai_completion(thinker_json())] + [openai_completion(coder_json())] * 3
    with FakeLLMServer(replies) as s:
        result = run(propose(config(s), validate=crash))
    assert not result.ok and "validation crashed: RuntimeError: validator bug" in result.error


# ---------------------------------------------------------------- default validator


def test_default_validator_is_used_when_none_is_injected():
    """Exercises DefaultValidator end to end (rayopt.program.check): it rejects a syntax
    error, accepts the fixed code, and its CheckResult travels with the proposal."""
    replies = [
        openai_completion(thinker_json()),
        openai_completion(coder_json(BAD_SYNTAX)),
        openai_completion(coder_json()),
    ]
    with FakeLLMServer(replies) as s:
        result = run(propose(config(s, validate_dry_run=False)), limit=60)
    assert result.ok, result.error
    coder = [c for c in result.calls if c.role == "coder"]
    assert not coder[0].ok and coder[0].error
    assert coder[0].error in s.requests[2].turns()[2]["content"]
    assert isinstance(result.check, CheckResult) and result.check.ok
    assert result.check.fingerprint is None  # validate_dry_run: false ...
    assert carried_check(result) is None  # ... so the actor still dry-runs it


def test_default_validator_and_check_result_adapter():
    v = DefaultValidator(dry_run=False)
    assert v(library.DISCOVERED_2) is None
    assert v("def update_fn(w, g):\n    return w, g, g\n") is not None
    full = v.check("def update_fn(w, g):\n    return w, g, g\n")
    assert isinstance(full, CheckResult) and full.error.kind == "signature"
    assert v("def update_fn(w, g):\n    return w, g, g\n") == describe_check_result(full)
    ok = type("R", (), {"ok": True, "error": None})()
    err = type("E", (), {"kind": "name", "line": 4, "message": "name 'np' is not defined"})()
    bad = type("R", (), {"ok": False, "error": err})()
    assert describe_check_result(ok) is None
    assert describe_check_result(bad) == "name error at line 4: name 'np' is not defined"


# ---------------------------------------------------------------- checked once


@pytest.fixture
def check_counts(monkeypatch) -> dict[str, int]:
    """Counts static validations and sandbox dry runs made by rayopt.program.check in
    this process (the functions still run; only the calls are counted)."""
    import importlib

    check_module = importlib.import_module("rayopt.program.check")
    sandbox = importlib.import_module("rayopt.program.sandbox")
    counts = {"validate": 0, "dry_run": 0}

    def counted(key, fn):
        def wrapper(*args, **kwargs):
            counts[key] += 1
            return fn(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(check_module, "validate", counted("validate", check_module.validate))
    monkeypatch.setattr(sandbox, "dry_run", counted("dry_run", sandbox.dry_run))
    return counts


def test_llm_proposal_is_validated_and_dry_run_once(check_counts):
    """Mutator (default validator, with dry run) -> actor-side check_proposal: the code
    is validated and dry-run once; the actor uses the CheckResult the proposal carries."""
    with FakeLLMServer([openai_completion(thinker_json()), openai_completion(coder_json())]) as s:
        result = run(propose(config(s)), limit=180)
    assert result.ok, result.error
    assert check_counts == {"validate": 1, "dry_run": 1}
    assert result.check is not None and result.check.ok and result.check.fingerprint

    checked = check_proposal(result, CURRENT)
    assert check_counts == {"validate": 1, "dry_run": 1}  # nothing checked again
    assert checked.ok and checked.fingerprint == result.check.fingerprint
    assert checked.code_hash == result.check.hash
    assert checked.literal_count == result.check.tunable_count

    # Without a carried check (or with one that is static only, or for other code)
    # the actor checks the code itself, once, and finds the same.
    static = check(NEW_CODE, dry_run=False)
    other = dataclasses.replace(result.check, hash="0" * 16)
    for carried in (None, static, other):
        before = dict(check_counts)
        bare = MutationResult(ok=True, mutator="llm", code=NEW_CODE, check=carried)
        again = check_proposal(bare, CURRENT)
        assert check_counts["validate"] == before["validate"] + 1
        assert check_counts["dry_run"] == before["dry_run"] + 1
        assert dataclasses.replace(again, result=result) == checked


def test_offline_proposal_is_dry_run_once(check_counts):
    from rayopt.search.mutators.offline import OfflineMutator

    result = OfflineMutator().propose_sync(request())
    assert result.ok, result.error
    assert result.check is not None and result.check.ok and result.check.fingerprint
    attempts = result.calls[-1].attempt
    assert 1 <= check_counts["dry_run"] <= check_counts["validate"] <= attempts
    before = dict(check_counts)
    checked = check_proposal(result, CURRENT)
    assert check_counts == before
    assert checked.ok and checked.fingerprint == result.check.fingerprint


@pytest.mark.parametrize("name,code", library.SYMBOLIC.items())
def test_static_validation_accepts_the_paper_library(name, code):
    assert strict_validator(code) is None


def test_static_validation_rejects():
    assert strict_validator("def update_fn(:\n").startswith("syntax error at line 1")
    no_fn = strict_validator("def f(w):\n    return w\n")
    assert no_fn.startswith("signature error at line 1") and "named update_fn" in no_fn
    two = strict_validator(NEW_CODE.replace("return update, var1, var2", "return update, var1"))
    assert two.startswith("signature error at line") and "return gives 2 values" in two


# ---------------------------------------------------------------- budget, concurrency


def test_budget_stops_new_mutations():
    budget = Budget(1.5 * GPT_CALL_USD)
    replies = [openai_completion(thinker_json()), openai_completion(coder_json())]
    with FakeLLMServer(replies * 2) as s:
        cfg = config(s)

        async def two():
            m = LLMMutator(cfg, validate=strict_validator, budget=budget)
            first = await m.propose(request())
            second = await m.propose(request())
            await m.aclose()
            return first, second

        first, second = run(two())
    assert first.ok  # started under the limit, so it finishes (overshooting)
    assert budget.spent == pytest.approx(2 * GPT_CALL_USD) and budget.exhausted()
    assert not second.ok and second.error.startswith("budget exhausted")
    assert second.calls == () and len(s.requests) == 2


def test_budget_from_config_and_thread_safety():
    with FakeLLMServer([]) as s:
        assert LLMMutator(config(s, budget_usd=0.5)).budget.limit == 0.5
    b = Budget(None)
    threads = [
        threading.Thread(target=lambda: [b.charge(0.001) for _ in range(1000)]) for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert b.spent == pytest.approx(4.0) and not b.exhausted() and b.remaining() is None


def test_concurrency_limit_is_shared_per_provider():
    def responder(seen: Seen) -> Reply:
        coder = seen.system().startswith("You are an expert AI programmer")
        reply = openai_completion(coder_json() if coder else thinker_json())
        reply.delay_s = 0.15
        return reply

    with FakeLLMServer(responder=responder) as s:
        cfg = config(s, concurrency={"openai": 2})

        async def many():
            # Two mutators, as two refinement chains in one actor would be.
            mutators = [LLMMutator(cfg, validate=strict_validator) for _ in range(2)]
            results = await asyncio.gather(*(mutators[i % 2].propose(request()) for i in range(6)))
            for m in mutators:
                await m.aclose()
            return results

        results = run(many())
    assert all(r.ok for r in results)
    assert len(s.requests) == 12
    assert s.max_in_flight == 2


# ---------------------------------------------------------------- keys never leak


def test_api_key_never_in_records_results_or_logs(caplog):
    caplog.set_level(logging.DEBUG)  # every logger, the SDKs' included
    replies = [
        openai_rate_limited(retry_after_ms="10"),
        openai_error(500, "oops", type_="server_error"),
        openai_completion("not json"),
        openai_completion(thinker_json()),
        openai_completion(coder_json(BAD_SYNTAX)),
        openai_completion(coder_json()),
    ]
    with FakeLLMServer(replies) as s:
        cfg = config(s)
        mutator = LLMMutator(cfg, validate=strict_validator)

        async def go():
            try:
                return await mutator.propose(request())
            finally:
                await mutator.aclose()

        result = run(go())
    assert result.ok
    assert all(r.headers["authorization"] == f"Bearer {KEY}" for r in s.requests)
    assert len(caplog.records) > 0
    everything = "\n".join(
        [
            repr(result),
            *map(repr, result.calls),
            caplog.text,
            *(r.getMessage() for r in caplog.records),
            repr(mutator),
            repr(cfg.to_dict()),
        ]
    )
    assert KEY not in everything
    assert KEY_ENV in repr(cfg.to_dict())  # the config names the variable, only


# ---------------------------------------------------------------- prompts


def test_thinker_prompt_has_history_and_optional_curves():
    curve = [float(i) for i in range(200)]
    curves = {e: curve for e in ENVS}
    step1 = scored("h1", NEW_CODE, (15.0, 8.0), (9.0, 4.0), idea="first idea", curves=curves)
    req = request(history=(step1,), curves=curves)
    prompts = Prompts.load()
    off = prompts.thinker(req)
    assert "first idea" in off and NEW_CODE.strip() in off and "15.000" in off
    assert "Mean return over training" not in off

    on = prompts.thinker(req, curves=True, points=20)
    line = next(ln for ln in on.splitlines() if ln.startswith("- Asterix-MinAtar:"))
    values = line.split(":", 1)[1].split(",")
    assert len(values) == 20 and values[0].strip() == "0" and values[-1].strip() == "199"

    with FakeLLMServer([openai_completion(thinker_json()), openai_completion(coder_json())]) as s:
        result = run(
            propose(config(s, include_curves=True, curve_points=5), req, validate=strict_validator)
        )
    assert result.ok
    sent = s.requests[0].turns()[0]["content"]
    assert "Mean return over training (5 evenly spaced points" in sent
    assert "first idea" not in s.requests[1].turns()[0]["content"]  # coder: no history

    # When the engine passes the current optimiser as the last history entry too, its
    # code is shown once.
    current = dataclasses.replace(step1, candidate_id="h1")
    again = prompts.thinker(dataclasses.replace(req, current=current, history=(step1,)))
    assert again.count(NEW_CODE.strip()) == 1
    assert "(This is the current optimizer shown above.)" in again


def test_thinker_sees_the_base_and_failed_steps_at_every_step():
    """Step >= 2: the generation's base with its code, returns and AUC is in the prompt,
    and a step that failed is in the history with its error (real SDK, fake server)."""
    base = scored("init-sign_update", CURRENT, (3.5, 2.25), (1.5, 0.75))
    step1 = scored("i0-g1-s1", NEW_CODE, (15.0, 8.0), (9.0, 4.0), idea="first idea")
    failed = dataclasses.replace(
        scored("i0-g1-s2", BAD_SIGNATURE, (0, 0), (0, 0), idea="second idea"),
        final_return={},
        auc={},
        error="evaluation_failed: TypeError: unsupported operand",
    )
    req = dataclasses.replace(request(history=(step1, failed)), current=step1, base=base, step=3)
    reply = coder_json(library.DISCOVERED_1)  # new code: the current one is NEW_CODE
    with FakeLLMServer([openai_completion(thinker_json()), openai_completion(reply)]) as s:
        result = run(propose(config(s), req, validate=strict_validator))
    assert result.ok
    sent = s.requests[0].turns()[0]["content"]
    block = sent.split("### Base optimizer of this generation", 1)[1].split("###", 1)[0]
    assert CURRENT.strip() in block and "3.500" in block and "0.750" in block
    assert "### Refinement 2 (failed: no scores)" in sent and "second idea" in sent
    assert "It failed: evaluation_failed: TypeError: unsupported operand" in sent


def test_code_that_raised_under_ppo_goes_back_to_the_coder():
    """A repair request skips the thinker: the coder's conversation resumes from the code
    that raised, with the error fed back as a check failure is."""
    raised = dataclasses.replace(
        scored("i0-g1-s1", BAD_SIGNATURE, (0, 0), (0, 0), idea=IDEA),
        error="TypeError: update_fn() missing 1 required positional argument",
    )
    req = dataclasses.replace(request(), repair=raised)
    with FakeLLMServer([openai_completion(coder_json())]) as s:
        result = run(propose(config(s), req, validate=strict_validator))
    assert result.ok and result.idea == IDEA and result.code == NEW_CODE
    (coder,) = s.requests
    assert _is_coder(coder)
    turns = coder.turns()
    assert [t["role"] for t in turns] == ["user", "assistant", "user"]
    assert BAD_SIGNATURE.strip() in turns[1]["content"]
    assert "missing 1 required positional argument" in turns[2]["content"]


def _is_coder(seen) -> bool:
    return seen.system().startswith("You are an expert AI programmer")


def test_downsample():
    assert downsample([1, 2, 3], 20) == [1.0, 2.0, 3.0]
    assert downsample(list(range(101)), 5) == [0.0, 25.0, 50.0, 75.0, 100.0]


def test_system_prompts_are_app_c_without_pdf_artefacts():
    prompts = Prompts.load()
    for text in (prompts.thinker_system, prompts.coder_system):
        lines = text.splitlines()
        assert not [ln for ln in lines if ln[:4].isdigit() and ln[4:5] == " "]  # line numbers
        assert "$" not in text
    t = prompts.thinker_system
    assert "19. You should not initialise any new variables for recurrence." in t
    assert '"suggestion": A clear, concise description' in t
    assert "10. `key`: a JAX random key." in t
    c = prompts.coder_system
    assert "l_p: float, key: jax.ndarray) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:`" in c
    assert "# Incorporate momentum, with a scale which depends on how far through training" in c
    assert c.rstrip().endswith("optimized for RL tasks using JAX best practices.")


def test_prompt_override_by_path(tmp_path):
    (tmp_path / "coder.txt").write_text('IDEA={idea}\nCODE={code}\nJSON please: {"code": ...}')
    with FakeLLMServer([openai_completion(thinker_json()), openai_completion(coder_json())]) as s:
        cfg = config(s, prompts={"coder_user": "coder.txt"})
        assert cfg.prompts.coder_user is not None
        cfg = LLMConfig.from_dict(
            {**cfg.to_dict(), "prompts": {"coder_user": "coder.txt"}}, base_dir=tmp_path
        )
        result = run(propose(cfg, validate=strict_validator))
    assert result.ok
    sent = s.requests[1].turns()[0]["content"]
    assert sent.startswith(f"IDEA={IDEA}\nCODE=def update_fn") and '{"code": ...}' in sent

    (tmp_path / "bad.txt").write_text("no placeholders here")
    bad = LLMConfig.from_dict({"prompts": {"coder_retry": "bad.txt"}}, base_dir=tmp_path)
    with pytest.raises(ValueError, match=r"lacks placeholder\(s\) \{error\}"):
        LLMMutator(bad)


# ---------------------------------------------------------------- config


def test_config_defaults_follow_table_2():
    c = LLMConfig()
    assert (c.max_thinker_attempts, c.max_coder_attempts) == (3, 3)
    assert (c.thinker.temperature, c.coder.temperature) == (0.7, 0.3)
    assert c.thinker.model == GPT and not c.include_curves and c.curve_points == 20
    d = LLMConfig.from_dict({"kind": "llm", "thinker": {"model": "gpt-4o"}})
    assert d.thinker.temperature == 0.7 and d.coder.temperature == 0.3
    a = LLMConfig.from_dict({"thinker": {"provider": "anthropic", "model": CLAUDE}})
    assert a.thinker.temperature == 0.7 and a.thinker.key_env == "ANTHROPIC_API_KEY"
    o = LLMConfig.from_dict({"coder": {"provider": "anthropic", "model": "claude-opus-4-7"}})
    assert o.coder.temperature is None  # refuses sampling parameters: none by default
    assert RoleConfig.for_role("coder").temperature == 0.3
    assert (
        RoleConfig.for_role("coder", provider="anthropic", model="claude-opus-4-8").temperature
        is None
    )


@pytest.mark.parametrize(
    "model,takes",
    [
        ("claude-sonnet-4-6", True),
        ("claude-opus-4-6", True),
        ("claude-opus-4-1-20250805", True),
        ("claude-opus-4-20250514", True),
        ("claude-3-5-sonnet-20241022", True),
        ("claude-haiku-4-5", True),
        ("a-proxy-alias", True),
        ("claude-opus-4-7", False),
        ("claude-opus-4-8", False),
        ("us.anthropic.claude-opus-4-7-v1:0", False),
        ("claude-sonnet-5", False),
        ("claude-haiku-5-5", False),
    ],
)
def test_anthropic_temperature_rule_per_model(model, takes):
    from rayopt.search.mutators.config import anthropic_takes_temperature

    assert anthropic_takes_temperature(model) is takes


@pytest.mark.parametrize(
    "d,match",
    [
        ({"max_retires": 3}, r"mutator: unknown key\(s\) 'max_retires'"),
        ({"thinker": {"modle": "x"}}, r"mutator.thinker: unknown key\(s\) 'modle'"),
        ({"max_retries": "3"}, r"mutator.max_retries: expected int, got str"),
        ({"max_retries": True}, r"mutator.max_retries: expected int, got bool"),
        ({"coder": {"temperature": "hot"}}, r"mutator.coder.temperature: expected float"),
        ({"price_table": {"m": {"input": 1}}}, r"Price|input|output"),
        ({"price_table": {"m": {"input": 1, "output": "x"}}}, r"price_table.m.output"),
        ({"concurrency": {"openia": 2}}, r"unknown provider 'openia'"),
        ({"kind": "ast"}, r"kind must be 'llm'"),
        (
            {"thinker": {"provider": "anthropic", "model": "claude-opus-4-7", "temperature": 0.7}},
            r"claude-opus-4-7 takes no temperature.*set temperature: null",
        ),
        ({"coder": {"provider": "openai_compatible"}}, r"needs base_url"),
        ({"thinker": {"provider": "gemini"}}, r"provider must be one of"),
        ({"max_coder_attempts": 0}, r"max_coder_attempts must be >= 1"),
        ({"thinker": "gpt-4o"}, r"mutator.thinker: expected a mapping"),
    ],
)
def test_config_errors_are_clear(d, match):
    with pytest.raises((ConfigError, TypeError), match=match):
        LLMConfig.from_dict(d)


def test_config_errors_name_the_given_key_path():
    for d, match in [
        ({"max_retries": "3"}, r"^mutator\.llm\.max_retries: expected int, got str"),
        ({"thinker": "gpt-4o"}, r"^mutator\.llm\.thinker: expected a mapping"),
        ({"coder": {"modle": "x"}}, r"^mutator\.llm\.coder: unknown key\(s\) 'modle'"),
        ({"budget_usd": -1}, r"^mutator\.llm: budget_usd must be >= 0"),
        ([], r"^mutator\.llm: expected a mapping"),
    ]:
        with pytest.raises(ConfigError, match=match):
            LLMConfig.from_dict(d, where="mutator.llm")


def test_integers_are_accepted_for_floats():
    c = LLMConfig.from_dict({"budget_usd": 40, "coder": {"temperature": 0}})
    assert c.budget_usd == 40.0 and c.coder.temperature == 0.0


@pytest.mark.parametrize("name", ["llm-openai.yaml", "llm-anthropic.yaml", "llm-local.yaml"])
def test_example_configs_parse(name):
    from rayopt.config import load_discovery

    discovery = load_discovery(ROOT / "configs" / name)
    assert discovery.mutator.kind == "llm"
    c = LLMConfig.from_dict(discovery.mutator.llm)
    assert c.kind == "llm"
    for role in (c.thinker, c.coder):
        assert role.model in c.price_table or role.provider == "openai_compatible"


# ---------------------------------------------------------------- extraction units


def test_extract_json_object_rules():
    assert extract_json_object('x {"a": {"b": "}"}} y') == {"a": {"b": "}"}}
    assert extract_json_object('{"a": [1, 2,],}') == {"a": [1, 2]}
    assert extract_json_object('{not json} then {"a": 1}') == {"a": 1}
    assert extract_json_object("no braces") is None
    assert extract_json_object("[1, 2]") is None
    idea, err = parse_thinker('{"thought": "t"}')
    assert idea is None and "suggestion" in err
    code, err = parse_coder('{"answer": 42}')
    assert code is None and "code" in err

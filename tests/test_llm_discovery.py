"""A short discovery with the LLM mutator on real Ray actors, the real openai SDK and a
fake OpenAI-compatible server on 127.0.0.1: the journal shows the ideas, the retries
and the failures."""

from __future__ import annotations

import asyncio
import itertools
import json
import threading

from conftest import E2E_KEY, E2E_KEY_ENV, tiny_discovery
from fake_llm import FakeLLMServer, Reply, Seen, openai_completion, openai_rate_limited

from rayopt.results.journal import read
from rayopt.search.driver import Discovery

GOOD = "Multiply the update by (1 - t_p) to anneal it over training."
BAD = "Import os and read a file for extra information."
GOOD_CODE = """def update_fn(w, g, var1, var2, t, d, t_p, b_p, l_p, key):
    # anneal with training progress
    update = g * (1 - t_p) * (1 + jnp.log(1 + d))
    return update, var1, var2
"""
FORBIDDEN_CODE = "import os\n" + GOOD_CODE


class Script:
    """Thinker: a 429, a non-JSON reply, then ideas alternating GOOD/BAD. Coder: for
    GOOD, first code with a syntax error, then valid code; for BAD, forbidden code on
    every attempt (so that mutation fails after its 3 coder attempts)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.thinker_calls = itertools.count()
        self.ideas = itertools.cycle([GOOD, BAD])
        self.coder_attempts: dict[str, int] = {}

    def __call__(self, seen: Seen) -> Reply:
        body = seen.json
        with self.lock:
            if "thinker" in _role(body):
                n = next(self.thinker_calls)
                if n == 0:
                    return openai_rate_limited(retry_after="0")
                if n == 1:
                    return openai_completion("I think we should... (no JSON here)")
                idea = next(self.ideas)
                return openai_completion(
                    json.dumps({"thought": f"thought {n}", "suggestion": idea})
                )
            user = body["messages"][1]["content"]
            if BAD in user:
                return openai_completion(json.dumps({"code": FORBIDDEN_CODE}))
            if len(body["messages"]) == 2:  # first attempt at this idea: a syntax error
                return openai_completion(
                    json.dumps({"code": GOOD_CODE.replace("(1 - t_p)", "(1 - t_p")})
                )
            return openai_completion(json.dumps({"code": GOOD_CODE}))


def _role(body: dict) -> str:
    system = body["messages"][0]["content"]
    return "thinker" if "propose iterative refinements" in system else "coder"


def test_llm_discovery_journals_ideas_retries_and_failures(evaluator_pool, tmp_path):
    with FakeLLMServer(responder=Script()) as server:
        role = server.role(E2E_KEY_ENV)
        config = tiny_discovery(
            **{
                "search.refinements": 2,
                "mutator.kind": "llm",
                "mutator.llm": dict(
                    thinker=role,
                    coder=role,
                    max_retries=2,
                    backoff_base_s=0.01,
                    backoff_max_s=0.05,
                    price_table={"fake-model": {"input": 1.0, "output": 2.0}},
                ),
            }
        )
        d = Discovery.create(config, tmp_path / "run", evaluator_pool=evaluator_pool)
        asyncio.run(d.run())
        requests = list(server.requests)

    df = read(tmp_path / "run").to_pandas()
    calls = df[df.event == "llm_call"]
    assert set(calls.role) == {"thinker", "coder"}
    assert (calls.status == "error").any() and (calls.status == "ok").any()
    assert calls.error.str.contains("429|rate", case=False, na=False).any()  # the retry
    ok = calls[calls.status == "ok"]
    assert (ok.tokens_in > 0).all() and (ok.cost_usd > 0).all()
    assert abs(d.spend.cost_usd - calls.cost_usd.sum()) < 1e-9

    created = df[(df.event == "created") & df.candidate_id.str.match(r"i\d+-g\d+-s\d+")]
    assert (created.idea == GOOD).any() and created.thought.str.startswith("thought").all()
    assert (created.mutator == "llm").all()
    failed = df[df.event == "mutation_failed"]
    assert len(failed) >= 1 and failed.error.str.contains("attempt", case=False).all()
    assert (df.event == "evaluated").sum() > 5  # initial + reference + at least one LLM candidate

    # the retry after invalid code carried the validator's structured error
    retries = [r for r in requests if _role(r.json) == "coder" and len(r.json["messages"]) > 2]
    assert any("syntax" in r.json["messages"][-1]["content"].lower() for r in retries)
    # Step 2 of every lineage: the thinker sees step 1, and the generation's base with
    # its code and scores (as the current optimizer when step 1 failed, else as the base);
    # a failed step is in the history with its error.
    step2 = [
        r.turns()[0]["content"]
        for r in requests
        if _role(r.json) == "thinker" and "### Refinement 1" in r.turns()[0]["content"]
    ]
    assert step2
    for text in step2:
        assert "### Base optimizer of this generation" in text or "(failed: no scores)" in text
        assert "| Fitness (final return) | AUC |" in text
    assert any(
        "(failed: no scores)" in t and "It failed: mutation_failed: coder gave no valid code" in t
        for t in step2
    )
    # temperatures from Table 2 reached the wire; the key only in the auth header
    assert {r.json.get("temperature") for r in requests} == {0.7, 0.3}
    assert all(r.headers["authorization"] == f"Bearer {E2E_KEY}" for r in requests)
    text = df.astype(str).to_string()
    assert E2E_KEY not in text

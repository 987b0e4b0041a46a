"""The LLM mutator: a *thinker* proposes one small idea, a *coder* implements it
(paper §5.3.2-5.3.3, App. C).

The thinker sees the current optimiser's code with its fitness (final return) and AUC
in every environment, the context optimisers (best per environment) with theirs, and
this generation's earlier refinements with the ideas that produced them. The coder
sees only the current code and the idea, so that what it writes is a faithful
implementation of that idea and nothing else.

Per refinement step: up to ``max_thinker_attempts`` thinker replies until one holds a
usable idea (each attempt a fresh sample of the same prompt), then up to
``max_coder_attempts`` coder replies in one conversation, each failure (unparseable
reply, invalid or unchanged code) fed back as the next user turn. Transport failures
are retried inside an attempt by providers.ChatClient. Whatever happens, ``propose``
returns a MutationResult carrying a CallRecord for every HTTP request made.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.resources
import logging
import math
import random
import re
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from rayopt.search.mutators.base import (
    CallRecord,
    MutationRequest,
    MutationResult,
    Scored,
    call_seed,
)
from rayopt.search.mutators.config import LLMConfig, PromptPaths
from rayopt.search.mutators.extract import Idea, parse_coder, parse_thinker, same_program
from rayopt.search.mutators.providers import CallOutcome, ChatClient, RetryPolicy
from rayopt.search.mutators.validation import (
    DefaultValidator,
    Validator,
    describe_check_result,
)

if TYPE_CHECKING:
    from rayopt.program.check import CheckResult

log = logging.getLogger(__name__)

__all__ = ["Budget", "LLMConfig", "LLMMutator", "Prompts", "downsample", "from_config"]


# ---------------------------------------------------------------- budget


class Budget:
    """Money spent on model calls against an optional limit.

    Thread- and task-safe (a lock around two floats; nothing awaits inside). The mutator
    charges it after every call and will not *start* a mutation once it is exhausted;
    a mutation already running finishes, so the limit can be overshot by at most one
    mutation's calls per concurrent proposal.
    """

    def __init__(self, limit_usd: float | None = None) -> None:
        if limit_usd is not None and limit_usd < 0:
            raise ValueError("limit_usd must be >= 0 or None")
        self._limit = limit_usd
        self._spent = 0.0
        self._lock = threading.Lock()

    @property
    def limit(self) -> float | None:
        return self._limit

    @property
    def spent(self) -> float:
        with self._lock:
            return self._spent

    def charge(self, usd: float) -> None:
        if usd <= 0:
            return
        with self._lock:
            self._spent += usd

    def remaining(self) -> float | None:
        if self._limit is None:
            return None
        return max(0.0, self._limit - self.spent)

    def exhausted(self) -> bool:
        return self._limit is not None and self.spent >= self._limit

    def __repr__(self) -> str:
        return f"Budget(spent={self.spent:.4f}, limit={self._limit})"


# ---------------------------------------------------------------- prompts

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_REQUIRED = {
    "thinker_system": (),
    "thinker_user": ("current",),
    "coder_system": (),
    "coder_user": ("code", "idea"),
    "coder_retry": ("error",),
}


def fill(template: str, **values: str) -> str:
    """Replace ``{name}`` for the given names in one pass; any other brace text (JSON
    examples, code) is left alone, and substituted text is never re-scanned."""
    return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), template)


def downsample(curve: Sequence[float], points: int) -> list[float]:
    """``points`` evenly spaced samples including the first and last (the whole curve
    if it is shorter)."""
    n = len(curve)
    if n <= points:
        return [float(v) for v in curve]
    return [float(curve[round(i * (n - 1) / (points - 1))]) for i in range(points)]


def _num(x: float | None, spec: str = ".3f") -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float) and math.isnan(x):
        return "nan (training failed)"
    return format(x, spec)


@dataclasses.dataclass(frozen=True)
class Prompts:
    """The five prompt texts. Templates use ``{name}`` placeholders:
    thinker_user {current} {context} {history} {envs}; coder_user {code} {idea};
    coder_retry {error}."""

    thinker_system: str
    thinker_user: str
    coder_system: str
    coder_user: str
    coder_retry: str

    @classmethod
    def load(cls, paths: PromptPaths | None = None) -> Prompts:
        """The packaged templates, each replaced by the file ``paths`` names, if any."""
        paths = paths or PromptPaths()
        packaged = importlib.resources.files("rayopt.search").joinpath("prompts")
        texts: dict[str, str] = {}
        for name, required in _REQUIRED.items():
            override = getattr(paths, name)
            if override is not None:
                with open(override, encoding="utf-8") as f:
                    text = f.read()
            else:
                text = packaged.joinpath(f"{name}.txt").read_text(encoding="utf-8")
            missing = [p for p in required if "{" + p + "}" not in text]
            if missing:
                where = override or f"packaged {name}.txt"
                raise ValueError(
                    f"prompt template {where} lacks placeholder(s) "
                    + ", ".join("{" + p + "}" for p in missing)
                )
            texts[name] = text.strip() + "\n"
        return cls(**texts)

    # -- rendering
    def thinker(self, request: MutationRequest, *, curves: bool = False, points: int = 20) -> str:
        envs = _env_order(request)
        current = request.current
        blocks = []
        head = "### Current optimizer"
        if current.idea:
            head += f"\nIt was produced by implementing the suggestion: {current.idea}"
        blocks.append(_render_scored(head, current, envs, curves, points))
        context_blocks = []
        for i, s in enumerate(request.context, 1):
            why = s.note
            if why is None:  # a lineage resumed from an old journal: say only what is true
                best = _best_in(s, request.context, envs)
                why = f"best of these context optimizers in {', '.join(best)}" if best else None
            label = f"### Context optimizer {i}" + (f" ({why})" if why else "")
            context_blocks.append(_render_scored(label, s, envs, curves, points))
        history_blocks = []
        base = request.base
        if request.history and base is not None and base.candidate_id != current.candidate_id:
            history_blocks.append(
                _render_scored(
                    "### Base optimizer of this generation (the refinements below started from it)",
                    base,
                    envs,
                    curves,
                    points,
                )
            )
        for i, s in enumerate(request.history, 1):
            suggestion = f"Suggestion implemented: {s.idea or '(none recorded)'}"
            if s.error is not None:
                block = [f"### Refinement {i} (failed: no scores)", suggestion]
                if s.code.strip():
                    block.append(f"```python\n{s.code.strip()}\n```")
                block.append(f"It failed: {s.error}")
                history_blocks.append("\n".join(block))
                continue
            head = f"### Refinement {i}\n{suggestion}"
            if s.duplicate_of:
                head += (
                    f"\nIt behaves exactly like the earlier optimizer {s.duplicate_of}, so it "
                    "was not trained again; the scores are that optimizer's."
                )
            same = s.candidate_id == current.candidate_id and s.code == current.code
            history_blocks.append(
                _render_scored(head, s, envs, curves, points, code=not same)
                + ("\n(This is the current optimizer shown above.)" if same else "")
            )
        return fill(
            self.thinker_user,
            current="\n".join(blocks),
            context="\n\n".join(context_blocks) or "(none)",
            history="\n\n".join(history_blocks) or "(none yet: this is the first refinement step)",
            envs=", ".join(envs),
        )

    def coder(self, code: str, idea: str) -> str:
        return fill(self.coder_user, code=code.strip("\n"), idea=idea)

    def retry(self, error: str) -> str:
        return fill(self.coder_retry, error=error)


def _env_order(request: MutationRequest) -> list[str]:
    envs: list[str] = []
    base = () if request.base is None else (request.base,)
    for s in (request.current, *base, *request.context, *request.history):
        for e in (*s.final_return, *s.auc):
            if e not in envs:
                envs.append(e)
    return envs


def _best_in(s: Scored, pool: Sequence[Scored], envs: Sequence[str]) -> list[str]:
    """Environments in which ``s`` has the highest final return among ``pool``."""
    out = []
    for e in envs:
        scores = [p.final_return.get(e, -math.inf) for p in pool]
        scores = [-math.inf if math.isnan(x) else x for x in scores]
        mine = s.final_return.get(e, -math.inf)
        if not math.isnan(mine) and mine > -math.inf and mine >= max(scores):
            out.append(e)
    return out


def _render_scored(
    head: str, s: Scored, envs: Sequence[str], curves: bool, points: int, *, code: bool = True
) -> str:
    parts = [head]
    if code:
        parts.append(f"```python\n{s.code.strip()}\n```")
    rows = ["| Environment | Fitness (final return) | AUC |", "| --- | --- | --- |"]
    rows += [f"| {e} | {_num(s.final_return.get(e))} | {_num(s.auc.get(e))} |" for e in envs]
    parts.append("\n".join(rows))
    if curves and s.curves:
        lines = []
        for e in envs:
            if e in s.curves and len(s.curves[e]):
                pts = downsample(s.curves[e], points)
                lines.append(f"- {e}: " + ", ".join(format(v, ".4g") for v in pts))
        if lines:
            parts.append(
                f"Mean return over training ({points} evenly spaced points, first to "
                "last):\n" + "\n".join(lines)
            )
    return "\n".join(parts)


# ---------------------------------------------------------------- the mutator


class LLMMutator:
    """Thinker/coder mutation over OpenAI, Anthropic or an OpenAI-compatible server.

    ``validate`` checks coder output (default: :class:`DefaultValidator`, i.e.
    rayopt.program.check, whose result the proposal carries); ``budget`` may be shared
    between mutators in one process.
    """

    name = "llm"

    def __init__(
        self,
        config: LLMConfig | None = None,
        *,
        validate: Validator | None = None,
        budget: Budget | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config or LLMConfig()
        c = self.config
        self.prompts = Prompts.load(c.prompts)
        self.validate: Validator = validate or DefaultValidator(
            dry_run=c.validate_dry_run, timeout=c.validate_timeout_s
        )
        self.budget = budget if budget is not None else Budget(c.budget_usd)
        policy = RetryPolicy(c.max_retries, c.backoff_base_s, c.backoff_max_s, c.retry_after_max_s)
        rng = rng or random.Random()
        self.thinker = ChatClient(
            "thinker",
            c.thinker,
            policy=policy,
            prices=c.price_table,
            concurrency=c.concurrency_for(c.thinker.provider),
            rng=rng,
        )
        self.coder = ChatClient(
            "coder",
            c.coder,
            policy=policy,
            prices=c.price_table,
            concurrency=c.concurrency_for(c.coder.provider),
            rng=rng,
        )

    def __repr__(self) -> str:
        return f"LLMMutator(thinker={self.thinker!r}, coder={self.coder!r}, budget={self.budget!r})"

    async def aclose(self) -> None:
        """Close the HTTP clients (call from the loop that used them)."""
        await self.thinker.aclose()
        await self.coder.aclose()

    def thinker_prompt(self, request: MutationRequest) -> str:
        """The thinker's user message for ``request`` (the system prompt is fixed)."""
        c = self.config
        return self.prompts.thinker(request, curves=c.include_curves, points=c.curve_points)

    async def propose(self, request: MutationRequest) -> MutationResult:
        """One refinement step; never raises for bad replies, bad code or API trouble."""
        calls: list[CallRecord] = []
        if self.budget.exhausted():
            return MutationResult(
                ok=False,
                mutator=self.name,
                error=f"budget exhausted: spent ${self.budget.spent:.4f} of "
                f"${self.budget.limit:.4f}; no new mutation started",
            )
        try:
            if request.repair is not None and request.repair.idea:
                # the code of this step raised under PPO: the coder fixes it, no new idea
                idea = Idea(suggestion=request.repair.idea)
                failed = (
                    request.repair.code,
                    f"the code failed when PPO ran it: {request.repair.error}",
                )
            else:
                idea, error = await self._think(request, calls)
                if idea is None:
                    return self._fail(calls, error)
                failed = None
            code, error, checked = await self._code(
                request.current.code, idea, calls, failed, request
            )
            if code is None:
                return self._fail(calls, error, idea)
            return MutationResult(
                ok=True,
                mutator=self.name,
                code=code,
                idea=idea.suggestion,
                thought=idea.thought,
                calls=tuple(calls),
                check=checked,
            )
        except Exception as exc:  # noqa: BLE001 - the contract is to never raise
            log.exception("LLM mutator failed unexpectedly")
            return self._fail(calls, f"internal error: {type(exc).__name__}: {exc}")

    # -- roles
    def _account(self, outcome: CallOutcome, calls: list[CallRecord]) -> None:
        calls.extend(outcome.records)
        self.budget.charge(sum(r.cost_usd for r in outcome.records))

    @staticmethod
    def _reject(calls: list[CallRecord], error: str) -> None:
        """Mark the last (successful at HTTP level) record as not used, with why."""
        calls[-1] = dataclasses.replace(calls[-1], ok=False, error=error)

    async def _ask(
        self,
        client: ChatClient,
        system: str,
        messages: list[dict[str, str]],
        attempt: int,
        calls: list[CallRecord],
        seed: int | None = None,
    ) -> tuple[Any, str, bool]:
        """One role attempt: (usable reply or None, error, fatal). Refusals and transport
        failures are accounted for and rejected here, alike for both roles."""
        outcome = await client.chat(system, messages, attempt=attempt, seed=seed)
        self._account(outcome, calls)
        if outcome.reply is None:
            return None, outcome.error or "no reply", outcome.fatal
        if outcome.reply.refusal:
            error = f"refusal: {outcome.reply.refusal}"
            self._reject(calls, error)
            return None, error, False
        return outcome.reply, "", False

    async def _think(
        self, request: MutationRequest, calls: list[CallRecord]
    ) -> tuple[Idea | None, str]:
        system = self.prompts.thinker_system
        messages = [{"role": "user", "content": self.thinker_prompt(request)}]
        error = "no attempts"
        for attempt in range(1, self.config.max_thinker_attempts + 1):
            seed = call_seed(request, "thinker", attempt)
            reply, error, fatal = await self._ask(
                self.thinker, system, messages, attempt, calls, seed
            )
            if fatal:
                return None, f"thinker: {error}"
            if reply is None:
                continue
            idea, why = parse_thinker(reply.text)
            if idea is None:
                error = f"unusable reply: {why}" + _truncated(reply.finish_reason)
                self._reject(calls, error)
                continue
            return idea, ""
        n = self.config.max_thinker_attempts
        return None, f"thinker gave no usable idea in {n} attempts; last: {error}"

    async def _code(
        self,
        current: str,
        idea: Idea,
        calls: list[CallRecord],
        failed: tuple[str, str] | None = None,
        request: MutationRequest | None = None,
    ) -> tuple[str | None, str, CheckResult | None]:
        """(valid code or None, error, the validator's CheckResult when it gives one).
        ``failed``: (code, error) of an earlier implementation of ``idea`` that failed
        after it was checked; the conversation resumes from it, the error fed back."""
        system = self.prompts.coder_system
        messages = [{"role": "user", "content": self.prompts.coder(current, idea.suggestion)}]
        if failed is not None:
            messages += [
                {"role": "assistant", "content": f"```python\n{failed[0].strip()}\n```"},
                {"role": "user", "content": self.prompts.retry(failed[1])},
            ]
        error = "no attempts"
        for attempt in range(1, self.config.max_coder_attempts + 1):
            seed = None if request is None else call_seed(request, "coder", attempt)
            reply, error, fatal = await self._ask(
                self.coder, system, messages, attempt, calls, seed
            )
            if fatal:
                return None, f"coder: {error}", None
            if reply is None:
                continue
            code, why = parse_coder(reply.text)
            if code is None:
                feedback = f"the reply could not be read: {why}" + _truncated(reply.finish_reason)
            elif same_program(code, current):
                feedback = (
                    "the code is identical to the current optimizer; "
                    "the suggested change is missing"
                )
            elif failed is not None and same_program(code, failed[0]):
                feedback = f"the code is the one that failed; fix it ({failed[1]})"
            else:
                feedback, checked = await self._validate(code)
                if feedback is None:
                    return code, "", checked
            error = feedback
            self._reject(calls, error)
            if reply.text.strip():  # continue the conversation with the error fed back
                messages = [
                    *messages,
                    {"role": "assistant", "content": reply.text},
                    {"role": "user", "content": self.prompts.retry(feedback)},
                ]
        n = self.config.max_coder_attempts
        return None, f"coder gave no valid code in {n} attempts; last: {error}", None

    async def _validate(self, code: str) -> tuple[str | None, CheckResult | None]:
        """(feedback or None, CheckResult). The default validator's result travels on with
        the proposal, so the actor does not check the same code again; an injected
        ``validate`` gives only feedback."""
        try:
            if isinstance(self.validate, DefaultValidator):
                checked = await asyncio.to_thread(self.validate.check, code)
                return describe_check_result(checked), checked
            return await asyncio.to_thread(self.validate, code), None
        except Exception as exc:  # noqa: BLE001 - a crashing validator rejects the code
            return f"validation crashed: {type(exc).__name__}: {exc}", None

    def _fail(
        self, calls: list[CallRecord], error: str, idea: Idea | None = None
    ) -> MutationResult:
        return MutationResult(
            ok=False,
            mutator=self.name,
            idea=idea.suggestion if idea else None,
            thought=idea.thought if idea else None,
            calls=tuple(calls),
            error=error,
        )


def _truncated(finish_reason: str | None) -> str:
    return " (reply cut off at max_tokens)" if finish_reason in ("length", "max_tokens") else ""


def from_config(
    d: Mapping[str, object], *, validate: Validator | None = None, budget: Budget | None = None
) -> LLMMutator:
    """Build a mutator from a YAML ``mutator:`` mapping."""
    return LLMMutator(LLMConfig.from_dict(d), validate=validate, budget=budget)

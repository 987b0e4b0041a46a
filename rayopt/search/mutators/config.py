"""Typed configuration of the LLM mutator, as read from the ``mutator:`` block of a
discovery YAML.

Defaults follow the paper (App. A, Table 2): 3 thinker and 3 coder attempts per
refinement step, thinker temperature 0.7, coder temperature 0.3, GPT-4o
(``gpt-4o-2024-05-13``). ``from_dict`` is strict: a misspelt key or a wrong type is
an error naming the offending path, because a silently ignored ``max_retries`` costs
money.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rayopt.config import ConfigError, from_dict

#: The providers the client layer speaks (see providers.py).
PROVIDERS = ("openai", "anthropic", "openai_compatible")

#: Paper, App. A (Table 2).
THINKER_TEMPERATURE = 0.7
CODER_TEMPERATURE = 0.3
PAPER_MODEL = "gpt-4o-2024-05-13"

#: The env var read when a role names none. openai_compatible servers (vLLM, Ollama,
#: llama.cpp) usually need no key, so it has no default.
DEFAULT_KEY_ENV = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}

_ROLE_TEMPERATURE = {"thinker": THINKER_TEMPERATURE, "coder": CODER_TEMPERATURE}

#: The Anthropic API version a request with ``temperature`` is sent under. The version the
#: anthropic SDK >= 2 sends by default, 2026-10-21, removed ``temperature``/``top_p``/``top_k``
#: from the Messages API for every model (HTTP 400 "Extra inputs are not permitted"; the
#: SDK dropped the arguments); under 2023-06-01 models before Claude Opus 4.7 still take it.
ANTHROPIC_SAMPLING_API_VERSION = "2023-06-01"

#: The first Claude version without sampling parameters: Opus 4.7 (and 4.8, the Claude 5
#: family after it) answer ``temperature`` with HTTP 400 "`temperature` is deprecated for
#: this model" under any API version (Anthropic's migration guide, "Sampling parameters
#: removed").
ANTHROPIC_NO_SAMPLING_FROM = (4, 7)
_CLAUDE_VERSION = re.compile(r"claude-(?:[a-z]+-)?(\d+)(?:[-.](\d{1,2}))?(?!\d)")


def anthropic_takes_temperature(model: str) -> bool:
    """Whether Anthropic's Messages API takes ``temperature`` for ``model`` (under API
    version ANTHROPIC_SAMPLING_API_VERSION): False from Claude Opus 4.7 on (the version
    in the id: ``claude-opus-4-7``, ``claude-sonnet-5``, ``us.anthropic.claude-opus-4-8-v1``),
    True for earlier ones (``claude-sonnet-4-6``, ``claude-3-5-sonnet-20241022``) and for
    ids without a Claude version (a proxy's alias: it gets what the config says)."""
    m = _CLAUDE_VERSION.search(model.lower())
    if m is None:
        return True
    return (int(m.group(1)), int(m.group(2) or 0)) < ANTHROPIC_NO_SAMPLING_FROM


def _default_temperature(role: str, section: Mapping[str, Any]) -> float | None:
    """Table 2's temperature for ``role``, unless the role's model refuses one."""
    if section.get("provider") == "anthropic" and not anthropic_takes_temperature(
        str(section.get("model", PAPER_MODEL))
    ):
        return None
    return _ROLE_TEMPERATURE[role]


__all__ = ["ConfigError", "LLMConfig", "Price", "PromptPaths", "RoleConfig"]


@dataclasses.dataclass(frozen=True)
class RoleConfig:
    """Where one role (thinker or coder) sends its requests.

    ``temperature`` None means "do not send one". For ``anthropic`` it is sent (in the
    body, under API version ANTHROPIC_SAMPLING_API_VERSION) to models that take it, and
    must be None for those that do not (:func:`anthropic_takes_temperature`: Claude Opus
    4.7 and later); a role's default is Table 2's temperature where the model takes one.
    """

    provider: str = "openai"
    model: str = PAPER_MODEL
    base_url: str | None = None
    api_key_env: str | None = None
    temperature: float | None = None
    max_tokens: int = 4096
    timeout_s: float = 120.0
    json_mode: bool = False  # OpenAI response_format={"type": "json_object"}

    def __post_init__(self) -> None:
        if self.provider not in PROVIDERS:
            raise ConfigError(f"provider must be one of {PROVIDERS}, got {self.provider!r}")
        if not self.model:
            raise ConfigError("model must be a non-empty string")
        if self.provider == "openai_compatible" and not self.base_url:
            raise ConfigError(
                "provider openai_compatible needs base_url (e.g. http://127.0.0.1:8000/v1)"
            )
        if (
            self.provider == "anthropic"
            and self.temperature is not None
            and not anthropic_takes_temperature(self.model)
        ):
            raise ConfigError(
                f"anthropic: {self.model} takes no temperature (Anthropic removed the "
                "sampling parameters from Claude Opus 4.7 on: HTTP 400); set temperature: null"
            )
        if self.provider == "anthropic" and self.json_mode:
            raise ConfigError("json_mode is an OpenAI chat-completions option; not for anthropic")
        if self.temperature is not None and not 0.0 <= self.temperature <= 2.0:
            raise ConfigError(f"temperature must be in [0, 2], got {self.temperature}")
        if self.max_tokens < 1:
            raise ConfigError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.timeout_s <= 0:
            raise ConfigError(f"timeout_s must be > 0, got {self.timeout_s}")

    @property
    def key_env(self) -> str | None:
        """The environment variable holding this role's API key (None: no key)."""
        return self.api_key_env or DEFAULT_KEY_ENV.get(self.provider)

    @classmethod
    def for_role(cls, role: str, **overrides: Any) -> RoleConfig:
        """A role config with the paper's temperature for ``role`` unless overridden
        (none for an Anthropic model that refuses one)."""
        if "temperature" not in overrides:
            overrides["temperature"] = _default_temperature(role, overrides)
        return cls(**overrides)


@dataclasses.dataclass(frozen=True)
class Price:
    """USD per 1M tokens."""

    input: float
    output: float

    def __post_init__(self) -> None:
        if self.input < 0 or self.output < 0:
            raise ConfigError("prices must be >= 0")

    def cost(self, tokens_in: int, tokens_out: int) -> float:
        return (tokens_in * self.input + tokens_out * self.output) / 1e6


@dataclasses.dataclass(frozen=True)
class PromptPaths:
    """Overrides for the packaged prompt templates (rayopt/search/prompts/*.txt); None
    keeps the packaged file. Relative paths are resolved by ``from_dict``."""

    thinker_system: str | None = None
    thinker_user: str | None = None
    coder_system: str | None = None
    coder_user: str | None = None
    coder_retry: str | None = None


def _default_concurrency() -> dict[str, int]:
    return {"openai": 8, "anthropic": 8, "openai_compatible": 4}


@dataclasses.dataclass(frozen=True)
class LLMConfig:
    """Everything the LLM mutator needs. See docs/llm.md for the YAML shape."""

    kind: str = "llm"
    thinker: RoleConfig = dataclasses.field(default_factory=lambda: RoleConfig.for_role("thinker"))
    coder: RoleConfig = dataclasses.field(default_factory=lambda: RoleConfig.for_role("coder"))
    max_thinker_attempts: int = 3
    max_coder_attempts: int = 3
    #: Transport retries per model call (429, 5xx, timeouts, connection errors).
    max_retries: int = 4
    backoff_base_s: float = 1.0
    backoff_max_s: float = 30.0
    #: A server's retry-after is honoured up to this many seconds.
    retry_after_max_s: float = 120.0
    #: Requests in flight at once per provider endpoint, within one process.
    concurrency: dict[str, int] = dataclasses.field(default_factory=_default_concurrency)
    #: model name (exactly as configured) -> USD per 1M input/output tokens.
    price_table: dict[str, Price] = dataclasses.field(default_factory=dict)
    budget_usd: float | None = None
    include_curves: bool = False
    curve_points: int = 20
    #: Run the code once on dummy inputs when validating coder output.
    validate_dry_run: bool = True
    validate_timeout_s: float = 10.0
    prompts: PromptPaths = dataclasses.field(default_factory=PromptPaths)

    def __post_init__(self) -> None:
        if self.kind != "llm":
            raise ConfigError(f"kind must be 'llm' for LLMConfig, got {self.kind!r}")
        for name in ("max_thinker_attempts", "max_coder_attempts"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1")
        if self.max_retries < 0:
            raise ConfigError("max_retries must be >= 0")
        for name in ("backoff_base_s", "backoff_max_s", "retry_after_max_s"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0")
        for provider, limit in self.concurrency.items():
            if provider not in PROVIDERS:
                raise ConfigError(
                    f"concurrency: unknown provider {provider!r} (one of {PROVIDERS})"
                )
            if limit < 1:
                raise ConfigError(f"concurrency.{provider} must be >= 1")
        if self.budget_usd is not None and self.budget_usd < 0:
            raise ConfigError("budget_usd must be >= 0 or null")
        if self.curve_points < 2:
            raise ConfigError("curve_points must be >= 2")
        if self.validate_timeout_s <= 0:
            raise ConfigError("validate_timeout_s must be > 0")

    def concurrency_for(self, provider: str) -> int:
        return self.concurrency.get(provider, _default_concurrency()[provider])

    def missing_keys(self) -> list[str]:
        """Names (never values) of key env vars the roles need but that are unset, so a
        driver can fail fast before starting actors."""
        names = {r.key_env for r in (self.thinker, self.coder) if r.key_env}
        return sorted(n for n in names if not os.environ.get(n))

    def to_dict(self) -> dict[str, Any]:
        """Plain data, for the run journal; holds env var names, never keys."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(
        cls,
        d: Mapping[str, Any],
        *,
        base_dir: str | os.PathLike | None = None,
        where: str = "mutator",
    ) -> LLMConfig:
        """Build from the LLM mutator's mapping of a YAML config (for a discovery config,
        ``LLMConfig.from_dict(load_discovery(path).mutator.llm, where="mutator.llm")``).

        Raises ConfigError for unknown keys, wrong types and bad values; its message
        names the key path under ``where``. Role sections start from the role's defaults
        (thinker 0.7, coder 0.3; none for an Anthropic model that refuses one, see
        :func:`anthropic_takes_temperature`). Relative prompt paths are
        made absolute against ``base_dir`` (default: the current directory) here, in the
        driver, because Ray workers run elsewhere.
        """
        if not isinstance(d, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {type(d).__name__}")
        data = dict(d)
        for role in ("thinker", "coder"):
            if role in data:
                section = data[role]
                if not isinstance(section, Mapping):
                    raise ConfigError(
                        f"{where}.{role}: expected a mapping, got {type(section).__name__}"
                    )
                section = dict(section)
                if "temperature" not in section:
                    section["temperature"] = _default_temperature(role, section)
                data[role] = section
        config = from_dict(cls, data, where)
        base = Path(base_dir) if base_dir is not None else Path.cwd()
        resolved = {
            f.name: str((base / p).resolve()) if p is not None else None
            for f in dataclasses.fields(PromptPaths)
            for p in [getattr(config.prompts, f.name)]
        }
        return dataclasses.replace(config, prompts=PromptPaths(**resolved))

"""Typed configuration: dataclasses loaded from YAML with ``key=value`` overrides.

Unknown keys and ill-typed values are errors that name the key, raised before anything
starts. The defaults of :class:`DiscoveryConfig` *are* the quickstart (a CPU run of a
few minutes); ``configs/quickstart.yaml`` spells them out and ``configs/paper.yaml``
sets Table 1 / Table 2 exactly.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration problem, phrased for the person who wrote the config."""


# ------------------------------------------------------------------ schema
@dataclasses.dataclass
class PPOSection:
    """PPO settings for discovery. Each env starts from its Table 1 column; ``overrides``
    apply to every env and ``per_env`` to one (keys: PPOConfig fields). ``truncation:
    terminate`` is the paper's (and PPOConfig's default) semantics, spelled out so a
    run's config.yaml records it (docs/evaluator.md)."""

    overrides: dict[str, Any] = dataclasses.field(
        default_factory=lambda: {
            "total_timesteps": 40_960,
            "num_envs": 32,
            "num_steps": 64,
            "truncation": "terminate",
        }
    )
    per_env: dict[str, dict[str, Any]] = dataclasses.field(
        default_factory=lambda: {
            "CartPole-v1": {"num_envs": 4, "num_steps": 128, "total_timesteps": 30_720}
        }
    )


@dataclasses.dataclass
class SearchSection:
    """The evolutionary loop (paper §5.3, Table 2)."""

    generations: int = 3  # per island (paper: 80, one island)
    refinements: int = 2  # refinement steps per generation (paper: 8)
    top_k: int = 5  # "number of top optimisers"
    exploit_p: float = 0.8  # probability of picking the base among the top_k
    # Context optimisers (§5.3.3, "randomly sampled ... which perform well in individual
    # environments"): per env a uniform pick among its context_top best; 1 = the best.
    context_top: int = 3
    # Code that raised when PPO ran it goes back to the LLM coder this many times with
    # the error, as a check failure does (beyond the paper; 0 = never).
    repair_attempts: int = 1
    initial: list[str] = dataclasses.field(
        default_factory=lambda: [
            "sign_update",
            "relative_update",
            "gradient_step",
            "clipped_update",
        ]
    )
    references: list[str] = dataclasses.field(
        default_factory=lambda: ["adam"]
    )  # ranked, never bred
    lineages_per_island: int = (
        1  # generations of one island in flight; 0: enough to fill evaluators
    )
    max_eval_attempts: int = 3  # evaluator crashes tolerated per evaluation
    literal_policy: Literal["record", "penalise", "reject"] = "record"
    literal_penalty: float = 0.5  # rank penalty per tunable literal a candidate introduces
    max_new_literals: int = 0  # "reject" drops candidates introducing more than this

    @property
    def rank_penalty(self) -> float:
        """Average-rank penalty per introduced literal that selection (and the analysis,
        which ranks as the run did) applies: ``literal_penalty`` under ``penalise``, else 0."""
        return self.literal_penalty if self.literal_policy == "penalise" else 0.0


@dataclasses.dataclass
class IslandsSection:
    """Island model: each island has its own archive; every ``interval`` finished
    generations an island copies its best ``migrants`` to its neighbours."""

    count: int = 2
    interval: int = 1
    migrants: int = 1
    topology: Literal["ring", "random", "full"] = "ring"


@dataclasses.dataclass
class CascadeSection:
    """Cheap stages before the full evaluation: dedup, then a short single-env run whose
    failure (non-finite parameters, or return below ``random_margin`` x a random
    policy's) ends the candidate early."""

    enabled: bool = True
    dedup: bool = True
    env: str = "CartPole-v1"
    total_timesteps: int = 10_240
    seeds: int = 1
    random_margin: float = 0.5
    # The speed screen: speed_updates PPO updates of the candidate on every training env's
    # real network (after compile), timed against Adam's on the same evaluator; slower than
    # evaluator.max_slowdown x Adam + speed_floor_s ends it as `too_slow`. 0: no screen.
    speed_updates: int = 2
    speed_floor_s: float = 1.0


@dataclasses.dataclass
class ConfirmSection:
    """Held-out confirmation when the search ends (beyond the paper): the ``top_k``
    discovered candidates of each meta-seed, every initial optimiser (``initial``) and
    the references (``references``) trained again at the full budget on every env, on
    ``seeds`` fresh seeds from ``seed_offset`` (never a seed the search used)."""

    enabled: bool = True
    top_k: int = 2
    seeds: int = 4
    seed_offset: int = 1000
    initial: bool = True
    references: bool = True


@dataclasses.dataclass
class MutatorSection:
    """Who proposes new code: ``offline`` (no network: motif edits and crossover, or
    random typed edits) or ``llm`` (thinker + coder; settings in ``llm``, docs/llm.md)."""

    kind: Literal["offline", "llm"] = "offline"
    # offline only: motifs (the paper's optimisers' building blocks, crossover,
    # simplification) or edits (random typed AST edits, Lion-style: the ablation)
    offline_style: Literal["motifs", "edits"] = "motifs"
    actors: int = 1
    proposals_per_actor: int = 16  # in flight at once on one actor (LLM calls are I/O)
    llm: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class EvaluatorSection:
    """Evaluator actors. ``count`` 0 means one per GPU (or per ``resources`` slot), or one
    per node on a CPU-only cluster. ``num_gpus`` may be fractional (JAX's memory fraction
    is set to match). Placement on a cluster: docs/cluster.md."""

    count: int = 0
    num_gpus: float = 0.0
    num_cpus: float = 0.0  # 0: all CPUs of the node when there is no GPU, else 1
    # Custom Ray resources each evaluator needs, e.g. {evaluator: 1}: only nodes started
    # with them (ray start --resources) run evaluators; count 0 sizes to the cluster's total.
    resources: dict[str, float] = dataclasses.field(default_factory=dict)
    # None: each evaluator is scheduled on its own (Ray's SPREAD strategy): elastic, starts
    # on what the cluster has. Or one placement group, a bundle per evaluator, reserved
    # all at once with this strategy (STRICT_SPREAD: at most one evaluator per node).
    placement_group: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] | None = None
    placement_timeout_s: float = 600.0  # give up if the placement group is not placed by then
    run_ahead: float = 1.0  # lineages beyond what keeps every slot busy (lineages_per_island=0)
    fast_compile: bool = True  # CPU only: unoptimised XLA, for tiny budgets (screening always)
    # Bounded evaluations (docs/program.md): an evaluation may run max_slowdown x the time
    # Adam takes for the same (env, PPO config, seeds) on the same evaluator (measured once)
    # plus deadline_floor_s; past it the evaluator process is killed (Ray restarts it) and
    # the evaluation journalled as `timeout`. 0 turns the deadline off. Measured (2-core
    # CPU, benchmarks/bounded.py): the paper's 7 optimisers 1.0-2.1x Adam, OPEN 6.8x.
    max_slowdown: float = 10.0
    deadline_floor_s: float = 60.0
    compile_timeout_s: float = 900.0  # compiling one evaluation (and its memory check)
    # XLA's memory analysis of the compiled evaluation against this budget (`memory`
    # past it); 0: from the device (GPU: its memory limit, CPU: half the host's RAM).
    memory_budget_mb: float = 0.0
    # Compile ahead (docs/evaluator.md): while an evaluator runs one evaluation, it
    # compiles up to this many of the next queued ones on host threads, so each starts
    # the moment the device frees. null: 1 on GPU evaluators, 0 on CPU ones (measured on
    # a 2-core CPU: a compile beside a run shares its cores and skews its timing, which the
    # deadline judges; docs/evaluator.md).
    compile_ahead: int | None = None
    # JAX's persistent compilation cache, a directory on each evaluator's node ("~" is
    # that node's home; "" turns it off), least recently used entries evicted past
    # compile_cache_gb. A program compiled once on a node loads there in ~1 s instead of
    # compiling again (measured, 2-core CPU: ~5-8 s): a candidate's full evaluation on
    # its speed screen's node reuses the screen's executable, and references, initial
    # optimisers and work redone after a crash reuse earlier runs'. A
    # JAX_COMPILATION_CACHE_DIR in the environment wins.
    compile_cache: str = "~/.cache/rayopt/xla"
    compile_cache_gb: float = 10.0

    def compile_ahead_for(self, num_gpus: float) -> int:
        """How many evaluations an evaluator with ``num_gpus`` GPUs compiles ahead."""
        if self.compile_ahead is not None:
            return self.compile_ahead
        return 1 if num_gpus > 0 else 0


def evaluator_checks(ev: EvaluatorSection) -> list[tuple[bool, str]]:
    """Range checks of the evaluation bounds (discovery and sweeps)."""
    return [
        (ev.max_slowdown == 0 or ev.max_slowdown >= 1, "evaluator.max_slowdown must be 0 or >= 1"),
        (ev.deadline_floor_s >= 0, "evaluator.deadline_floor_s must be >= 0"),
        (ev.compile_timeout_s > 0, "evaluator.compile_timeout_s must be > 0"),
        (ev.memory_budget_mb >= 0, "evaluator.memory_budget_mb must be >= 0"),
        (ev.compile_cache_gb >= 0, "evaluator.compile_cache_gb must be >= 0 (0: unbounded)"),
        (
            ev.compile_ahead is None or ev.compile_ahead >= 0,
            "evaluator.compile_ahead must be null (auto), 0 (off) or a count >= 1",
        ),
    ]


@dataclasses.dataclass
class DiscoveryConfig:
    """One discovery: meta-seeds x islands x generations of refinement."""

    name: str = "quickstart"
    out_dir: str = "runs"
    meta_seeds: list[int] = dataclasses.field(default_factory=lambda: [0])
    envs: list[str] = dataclasses.field(default_factory=lambda: ["CartPole-v1", "Breakout-MinAtar"])
    seeds: int = 2  # evaluation seeds per env (paper: 8)
    address: str | None = None  # Ray address; None starts a local instance
    open_weights: str | None = None  # OPEN checkpoint, needed when "open" is a reference
    progress_s: float = 10.0  # seconds between progress lines
    ppo: PPOSection = dataclasses.field(default_factory=PPOSection)
    search: SearchSection = dataclasses.field(default_factory=SearchSection)
    islands: IslandsSection = dataclasses.field(default_factory=IslandsSection)
    cascade: CascadeSection = dataclasses.field(default_factory=CascadeSection)
    confirm: ConfirmSection = dataclasses.field(default_factory=ConfirmSection)
    mutator: MutatorSection = dataclasses.field(default_factory=MutatorSection)
    evaluator: EvaluatorSection = dataclasses.field(default_factory=EvaluatorSection)

    def validate(self) -> DiscoveryConfig:
        """Checks that need more than types: names exist, numbers are in range."""
        from rayopt.optim import LIBRARY, resolve
        from rayopt.optim.open import check_open_weights
        from rayopt.rl.envs import parse_envs
        from rayopt.rl.ppo import PPOConfig, config_for

        try:
            self.envs = list(parse_envs(self.envs))
            self.cascade.env = parse_envs([self.cascade.env])[0]
        except ValueError as err:
            raise ConfigError(str(err)) from None
        fields = {f.name for f in dataclasses.fields(PPOConfig)} - {"env"}
        for where, d in [
            ("ppo.overrides", self.ppo.overrides),
            *((f"ppo.per_env.{k}", v) for k, v in self.ppo.per_env.items()),
        ]:
            unknown = set(d) - fields
            if unknown:
                raise ConfigError(
                    f"{where}: unknown PPO setting(s) {sorted(unknown)}; known: {sorted(fields)}"
                )
        for env in self.envs:
            try:
                self.ppo_config(env)
            except (TypeError, ValueError) as err:
                raise ConfigError(f"PPO config for {env}: {err}") from None
        try:
            config_for(
                self.cascade.env,
                **{
                    **self.ppo_overrides(self.cascade.env),
                    "total_timesteps": self.cascade.total_timesteps,
                },
            )
        except ValueError as err:
            raise ConfigError(f"cascade: {err}") from None
        for i, name in enumerate(self.search.initial):
            if name.endswith(".py"):  # a program of one's own joins the initial archive
                path = Path(name).expanduser().resolve()
                if not path.is_file():
                    raise ConfigError(f"search.initial: optimiser file {name} does not exist")
                self.search.initial[i] = str(path)  # absolute: a resume may start elsewhere
            elif name not in LIBRARY or name == "open" or name.startswith("adam"):
                raise ConfigError(
                    f"search.initial: {name!r} is not a symbolic library optimiser or a .py file"
                )
        if self.open_weights:  # absolute: a resume (and a Ray worker) may start elsewhere
            self.open_weights = str(Path(self.open_weights).expanduser().resolve())
        for name in self.search.references:
            try:
                check_open_weights(resolve(name, open_weights=self.open_weights))
            except (ValueError, FileNotFoundError) as err:
                raise ConfigError(f"search.references: {err}") from None
        checks = [
            (self.search.generations >= 1, "search.generations must be >= 1"),
            (self.search.refinements >= 1, "search.refinements must be >= 1"),
            (0.0 <= self.search.exploit_p <= 1.0, "search.exploit_p must be in [0, 1]"),
            (self.search.top_k >= 1, "search.top_k must be >= 1"),
            (self.search.context_top >= 1, "search.context_top must be >= 1"),
            (self.search.repair_attempts >= 0, "search.repair_attempts must be >= 0"),
            (self.search.lineages_per_island >= 0, "search.lineages_per_island must be >= 0"),
            (self.search.max_eval_attempts >= 1, "search.max_eval_attempts must be >= 1"),
            (self.confirm.top_k >= 1, "confirm.top_k must be >= 1"),
            (self.confirm.seeds >= 1, "confirm.seeds must be >= 1"),
            (
                not self.confirm.enabled
                or self.confirm.seed_offset >= max(self.seeds, self.cascade.seeds),
                f"confirm.seed_offset must be >= {max(self.seeds, self.cascade.seeds)}: "
                "held-out seeds must be ones the search never used",
            ),
            (self.islands.count >= 1, "islands.count must be >= 1"),
            (self.islands.interval >= 1, "islands.interval must be >= 1"),
            (self.islands.migrants >= 0, "islands.migrants must be >= 0"),
            (self.seeds >= 1, "seeds must be >= 1"),
            (bool(self.meta_seeds), "meta_seeds must not be empty"),
            (len(set(self.meta_seeds)) == len(self.meta_seeds), "meta_seeds must be distinct"),
            (self.mutator.actors >= 1, "mutator.actors must be >= 1"),
            (self.mutator.proposals_per_actor >= 1, "mutator.proposals_per_actor must be >= 1"),
            (self.evaluator.count >= 0, "evaluator.count must be >= 0"),
            (self.evaluator.num_gpus >= 0, "evaluator.num_gpus must be >= 0"),
            (self.evaluator.run_ahead >= 0, "evaluator.run_ahead must be >= 0"),
            (self.evaluator.num_cpus >= 0, "evaluator.num_cpus must be >= 0"),
            (
                all(v > 0 for v in self.evaluator.resources.values()),
                "evaluator.resources: amounts must be > 0",
            ),
            (
                not {"CPU", "GPU"} & set(self.evaluator.resources),
                "evaluator.resources: use evaluator.num_cpus / num_gpus for CPU and GPU",
            ),
            (self.evaluator.placement_timeout_s > 0, "evaluator.placement_timeout_s must be > 0"),
            *evaluator_checks(self.evaluator),
            (self.cascade.speed_updates >= 0, "cascade.speed_updates must be >= 0"),
            (self.cascade.speed_floor_s >= 0, "cascade.speed_floor_s must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        if self.mutator.kind == "llm":
            from rayopt.search.mutators.config import LLMConfig

            try:
                llm = LLMConfig.from_dict(self.mutator.llm, where="mutator.llm")
            except (TypeError, ValueError) as err:
                raise ConfigError(str(err)) from None
            prompts = self.mutator.llm.get("prompts")
            if prompts:  # from_dict made them absolute: Ray workers run elsewhere
                self.mutator.llm["prompts"] = {k: getattr(llm.prompts, k) for k in prompts}
        elif self.mutator.llm:
            raise ConfigError("mutator.llm is set but mutator.kind is offline; set kind: llm")
        return self

    def ppo_overrides(self, env: str) -> dict[str, Any]:
        return {**self.ppo.overrides, **self.ppo.per_env.get(env, {})}

    def ppo_config(self, env: str) -> Any:
        """The PPOConfig an env is evaluated with during discovery."""
        from rayopt.rl.ppo import config_for

        return config_for(env, **self.ppo_overrides(env))


# ------------------------------------------------------------------ loading
def from_dict(cls: type[T], data: Any, where: str = "") -> T:
    """Build dataclass ``cls`` from ``data``, rejecting unknown keys and wrong types; an
    error names the offending key path (``search.generations: expected int, got str``)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {_describe(data)}")
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        raise ConfigError(
            f"{where + ': ' if where else ''}unknown key(s) {', '.join(map(repr, unknown))}; "
            f"valid keys: {', '.join(names)}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {k: _coerce(hints[k], v, f"{where}.{k}" if where else k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as err:  # a __post_init__ check: say where
        raise ConfigError(f"{where}: {err}" if where else str(err)) from None


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, {} if value is None else value, where)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{where}: must be one of {list(get_args(tp))}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {_describe(value)}")
        (item,) = get_args(tp)
        return [_coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {_describe(value)}")
        key_t, val_t = get_args(tp)
        return {
            _coerce(key_t, k, where): _coerce(val_t, v, f"{where}.{k}") for k, v in value.items()
        }
    if tp is Any:
        return value
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int)
        and not isinstance(value, bool)
        or isinstance(value, float)
        and value.is_integer(),
        float: isinstance(value, int | float) and not isinstance(value, bool),
        str: isinstance(value, str),
    }
    if tp not in ok:
        raise ConfigError(f"{where}: unsupported type {tp}")  # pragma: no cover
    if not ok[tp]:
        raise ConfigError(f"{where}: expected {tp.__name__}, got {_describe(value)}")
    return tp(value)


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {repr(value)[:40]}"


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=value`` overrides (values parsed as YAML) to a nested mapping."""
    out = yaml.safe_load(yaml.safe_dump(data)) or {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            raise ConfigError(f"override {item!r}: {err}") from None
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part} is not a section")
        node[parts[-1]] = value
    return out


def read_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A YAML config as a mapping; ``extends: OTHER.yaml`` (relative to the file) is
    loaded first and this file's keys are merged over it (mappings deeply, the rest
    replaced)."""
    path = Path(path).resolve()
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    if path in _seen:
        raise ConfigError(f"{path}: extends itself (via {' -> '.join(map(str, _seen))})")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    base = data.pop("extends", None)
    if base is None:
        return data
    return _merge(read_yaml(path.parent / base, (*_seen, path)), data)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Defaults of ``cls``, then the YAML file at ``path``, then ``overrides``."""
    data = read_yaml(path) if path is not None else {}
    data = apply_overrides(data, overrides or [])
    return from_dict(cls, data)


def load_discovery(
    path: str | Path | None = None, overrides: list[str] | None = None
) -> DiscoveryConfig:
    return load(DiscoveryConfig, path, overrides).validate()


def dump(config: Any) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)

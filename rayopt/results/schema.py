"""The journal's one schema: every row of a run, evaluation or event (docs/journal.md).

One table rather than several keeps "Parquet is the one journal" literal: a run is the
set of its rows, ``row_type`` tells an evaluation (candidate x env x seed) from an event
(created, invalid, duplicate, screened_out, evaluation_failed, migrated, generation_start,
generation_end, mutation_failed, llm_call, ...). Columns that do not apply are null.
"""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 1

#: name -> (type, description). Order is the column order on disk.
COLUMNS: dict[str, tuple[pa.DataType, str]] = {
    # who and when
    "run_id": (pa.string(), "run name + meta-seed, e.g. quickstart-ms0"),
    "meta_seed": (pa.int32(), "independent search this row belongs to"),
    "row_type": (pa.string(), "evaluation | event"),
    "event": (pa.string(), "for events: what happened (see docs/journal.md)"),
    "time": (pa.float64(), "unix seconds when the row was written"),
    "island": (pa.int32(), "island the candidate was produced on / the event happened on"),
    "generation": (pa.int32(), "generation number within the island (0 = initial archive)"),
    "step": (pa.int32(), "refinement step within the generation (1..N; 0 = the base)"),
    # the candidate
    "candidate_id": (pa.string(), "unique within the run"),
    "parent_id": (pa.string(), "the optimiser this one was mutated from"),
    "base_id": (pa.string(), "the generation's base optimiser"),
    "optimizer": (pa.string(), "library name (adam, discovered_1, open, ...) or candidate id"),
    "code": (pa.string(), "update_fn source"),
    "idea": (pa.string(), "the thinker's suggestion (LLM) or the mutation applied (offline)"),
    "thought": (pa.string(), "the thinker's reasoning (LLM only)"),
    "mutator": (pa.string(), "offline | llm | library"),
    "code_hash": (pa.string(), "canonical hash (formatting and names ignored)"),
    "fingerprint": (pa.string(), "behavioural fingerprint on fixed inputs"),
    "literal_count": (pa.int32(), "tunable numeric literals in the code"),
    "new_literals": (pa.int32(), "tunable literals the candidate added over its parent"),
    # one evaluation
    "env": (pa.string(), "environment id"),
    "seed": (pa.int32(), "PPO seed"),
    "stage": (
        pa.string(),
        "screen (cascade short run) | speed (speed screen) | full | sweep | confirm",
    ),
    "final_return": (pa.float64(), "last point of the return curve"),
    "auc": (pa.float64(), "mean of the return curve (area normalised by its length)"),
    "return_curve": (pa.list_(pa.float32()), "mean episodic return per PPO update"),
    "finite": (pa.bool_(), "all parameters finite at the end of training"),
    "total_timesteps": (pa.int64(), "PPO budget (a generalisation axis)"),
    "hidden_size": (pa.int32(), "PPO network width (a generalisation axis)"),
    "activation": (pa.string(), "PPO activation (a generalisation axis)"),
    "ppo_config": (pa.string(), "the full PPOConfig as JSON"),
    "compile_s": (pa.float64(), "seconds compiling (0 when cached), per env evaluation"),
    "run_s": (pa.float64(), "seconds training all seeds of this env evaluation"),
    "compile_wait_s": (
        pa.float64(),
        "seconds the evaluator was held waiting for this evaluation's compile (below "
        "compile_s when it was compiled ahead; bounded pools)",
    ),
    "node": (pa.string(), "Ray node id of the evaluator"),
    "evaluator": (pa.string(), "evaluator actor id"),
    "attempt": (pa.int32(), "1-based attempt number"),
    "slowdown": (
        pa.float64(),
        "run time over Adam's for the same config, seeds and evaluator (bounded pools; a "
        "lower bound when status is timeout)",
    ),
    # outcomes
    "status": (
        pa.string(),
        "ok | nonfinite | failed | timeout | too_slow | memory | ... (rows of one kind agree)",
    ),
    "error_kind": (pa.string(), "structured error kind (syntax, forbidden, shape, timeout, ...)"),
    "error_line": (pa.int32(), "line of the error in the code, when known"),
    "error": (pa.string(), "short error message"),
    "ref_candidate_id": (
        pa.string(),
        "duplicate: the earlier candidate; migrated: the copy's source",
    ),
    "dest_island": (pa.int32(), "migrated: the receiving island"),
    "context_ids": (pa.list_(pa.string()), "generation_start: the context optimisers shown"),
    "context_notes": (pa.list_(pa.string()), "generation_start: why each context one was shown"),
    # model calls
    "role": (pa.string(), "thinker | coder | offline"),
    "provider": (pa.string(), "openai | anthropic | openai_compatible | offline"),
    "model": (pa.string(), "model name"),
    "tokens_in": (pa.int64(), "prompt tokens"),
    "tokens_out": (pa.int64(), "completion tokens"),
    "latency_s": (pa.float64(), "seconds for the call"),
    "cost_usd": (pa.float64(), "cost from the config's price table"),
    # sweeps
    "sweep": (pa.string(), "sweep name (rayopt evaluate sweeps)"),
    "axis": (pa.string(), "swept axis name"),
    "axis_value": (pa.string(), "value of the swept axis, as text"),
}

SCHEMA = pa.schema(
    [
        pa.field(name, dtype, nullable=True, metadata={"doc": doc})
        for name, (dtype, doc) in COLUMNS.items()
    ],
    metadata={"rayopt_schema_version": str(SCHEMA_VERSION)},
)

EVENTS = (
    "created",
    "invalid",
    "duplicate",
    "rejected",
    "screened",
    "screened_out",
    "evaluated",
    "evaluation_failed",
    "migrated",
    "generation_start",
    "generation_end",
    "mutation_failed",
    "llm_call",
)

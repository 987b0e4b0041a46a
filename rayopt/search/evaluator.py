"""Evaluator actors (one per accelerator, or fractions of one) and the pool that feeds
them.

An evaluator trains PPO for one (optimiser, environment) with all seeds vmapped. Ray
restarts a dead evaluator (``max_restarts=-1``); the pool resubmits the evaluation that
was running, up to ``max_attempts`` times, and reports a failure after that. An error
raised by the evaluation itself (bad code) is not retried: it would fail again.

With :class:`Bounds` (discovery and sweeps build their pools with them) every
evaluation is bounded: it is compiled first (``prepare``: at most ``compile_timeout_s``)
and its compiled memory checked against the device's budget (``memory``), then run
against a deadline of ``max_slowdown`` x the run time of the reference optimiser (Adam)
for the same (PPO config, seeds layout, compile mode, updates run) on the same
evaluator, measured once and cached, plus ``floor_s``. Past the deadline the pool kills
the evaluator process (``ray.kill``, restartable: Ray starts a fresh one, and the
restart spends no attempt) and reports ``timeout`` with the measured slowdown; neither
is retried.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import math
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, RayTaskError

from rayopt.optim import OptimiserSpec
from rayopt.rl.ppo import PPOConfig


@dataclasses.dataclass(frozen=True)
class EvalTask:
    """One unit of evaluator work: ``spec`` trains PPO ``config`` for ``seeds``."""

    key: str  # unique: candidate id / stage / env
    spec: OptimiserSpec
    config: PPOConfig
    seeds: tuple[int, ...]
    fast_compile: bool = False  # CPU: compile ~2x faster, run ~2x slower (short runs)
    # Keep the compiled trainer on the evaluator for the next task with the same (spec,
    # config): library optimisers, references and sweep chunks recur; a discovery
    # candidate is evaluated once per config (False: its executable is freed at once).
    keep: bool = True
    # Run only the first updates of ``config`` (None: all), with the executable the whole
    # run compiles to: the cascade's speed screen times a candidate with the very
    # executable its full evaluation then loads from the compilation cache.
    num_updates: int | None = None

    @property
    def total_timesteps(self) -> int:
        """The config's total timesteps, or the steps of the updates this task runs."""
        c = self.config
        if self.num_updates is None:
            return c.total_timesteps
        return self.num_updates * c.num_envs * c.num_steps


@dataclasses.dataclass
class EvalOutcome:
    """What came back for a task: per-seed arrays, or an error after ``attempts``."""

    task: EvalTask
    ok: bool
    attempts: int
    final_return: np.ndarray | None = None
    auc: np.ndarray | None = None
    return_curve: np.ndarray | None = None
    finite: np.ndarray | None = None
    compile_s: float = 0.0
    run_s: float = 0.0
    node: str | None = None
    evaluator: str | None = None
    error: str | None = None
    error_kind: str | None = None  # evaluation | evaluator_died | timeout | memory
    # run time over the reference's for the same config, layout and evaluator (a lower
    # bound for a timeout: the run was stopped); None when the pool is unbounded
    slowdown: float | None = None
    reference_s: float | None = None  # the reference's run time it was compared with
    # seconds the evaluator was held waiting for this task's compile (less than compile_s
    # when it was compiled ahead); None when the pool is unbounded
    compile_wait_s: float | None = None

    @property
    def status(self) -> str:
        """The journal status of its rows: ok, nonfinite, failed, timeout or memory."""
        if not self.ok:
            return self.error_kind if self.error_kind in ("timeout", "memory") else "failed"
        return "ok" if self.finite is None or bool(np.all(self.finite)) else "nonfinite"


@dataclasses.dataclass(frozen=True)
class Bounds:
    """How long and how large one evaluation may be (``evaluator.*`` in a config).

    Deadline of a run: ``max_slowdown`` x the reference optimiser's run time for the same
    (PPO config, number of seeds, compile mode), measured once per evaluator, plus
    ``floor_s``; compiling has its own ``compile_timeout_s``. ``memory_budget_mb`` 0: the
    evaluator's device decides (GPU: its memory limit; CPU: half the host's RAM).
    ``max_slowdown`` 0: no deadline (the memory check stays).
    """

    max_slowdown: float = 10.0
    floor_s: float = 60.0
    compile_timeout_s: float = 900.0
    memory_budget_mb: float = 0.0
    reference: str = "adam"

    @classmethod
    def from_config(cls, ev: Any) -> Bounds:
        """From an ``EvaluatorSection`` (discovery or sweep config)."""
        return cls(
            max_slowdown=ev.max_slowdown,
            floor_s=ev.deadline_floor_s,
            compile_timeout_s=ev.compile_timeout_s,
            memory_budget_mb=ev.memory_budget_mb,
        )

    def deadline(self, reference_s: float) -> float | None:
        """Seconds a run may take, given the reference's (None: unbounded)."""
        return self.max_slowdown * reference_s + self.floor_s if self.max_slowdown else None


def memory_budget(budget_mb: float = 0.0) -> tuple[int, str]:
    """(bytes, where from) an evaluation's compiled buffers may use on this process's
    default device: ``budget_mb`` if set, else the accelerator's memory limit, else half
    the host's physical memory."""
    import jax

    if budget_mb > 0:
        return int(budget_mb * (1 << 20)), "evaluator.memory_budget_mb"
    dev = jax.local_devices()[0]
    if dev.platform != "cpu":
        try:
            limit = (dev.memory_stats() or {}).get("bytes_limit")
        except Exception:  # noqa: BLE001 - some backends report nothing
            limit = None
        if limit:
            return int(limit), f"{dev.platform} memory limit"
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 16 << 30
    return int(total // 2), "half the host's RAM"


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def actor_env(
    num_gpus: float, num_cpus: float, compile_cache: str = "", compile_cache_gb: float = 0.0
) -> dict[str, str]:
    """Environment for an evaluator process, set before it imports JAX.

    A fractional GPU gets a matching JAX memory fraction (with 10 % headroom); a CPU
    evaluator gets one XLA host device per CPU it was given. ``compile_cache``: JAX's
    persistent compilation cache directory on the evaluator's node (``evaluator.
    compile_cache``; see ``rayopt.rl.execution.use_compile_cache``), "" for none.
    """
    env: dict[str, str] = {}
    if 0 < num_gpus < 1:
        env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{0.9 * num_gpus:.3f}"
    if num_gpus == 0 and num_cpus >= 1:
        env["RAYOPT_HOST_DEVICES"] = str(int(num_cpus))
    if compile_cache:
        env["RAYOPT_COMPILE_CACHE"] = compile_cache
        env["RAYOPT_COMPILE_CACHE_GB"] = f"{compile_cache_gb:g}"
    return env


@ray.remote(max_restarts=-1, max_task_retries=0, max_concurrency=4)
class EvaluatorActor:
    """Runs PPO evaluations on the accelerator Ray pinned it to (or on CPU).

    Threaded (``max_concurrency``): the pool runs one ``evaluate`` at a time on it, and
    with compile-ahead also ``prepare``s the next tasks meanwhile, on other threads.
    """

    def __init__(self) -> None:
        import jax

        import rayopt  # noqa: F401  (host-device flags before JAX's backend starts)
        from rayopt.rl.execution import use_compile_cache

        self._jax = jax
        self.id = ray.get_runtime_context().get_actor_id()
        self.node = ray.get_runtime_context().get_node_id()
        self.compile_cache = use_compile_cache(
            os.environ.get("RAYOPT_COMPILE_CACHE", ""),
            float(os.environ.get("RAYOPT_COMPILE_CACHE_GB") or 0.0),
        )
        self.cache_hits = 0  # executables loaded from the compilation cache, not compiled

        def count_hit(event: str, **_: Any) -> None:
            if event == "/jax/compilation_cache/cache_hits":
                self.cache_hits += 1

        jax.monitoring.register_event_listener(count_hit)

    def info(self) -> dict[str, Any]:
        jax = self._jax
        return dict(
            id=self.id,
            node=self.node,
            pid=os.getpid(),
            backend=jax.default_backend(),
            devices=[str(d) for d in jax.local_devices()],
            gpu_ids=ray.get_runtime_context().get_accelerator_ids().get("GPU", []),
            compile_cache=self.compile_cache,
            cache_hits=self.cache_hits,
            env={
                k: os.environ.get(k)
                for k in (
                    "CUDA_VISIBLE_DEVICES",
                    "XLA_PYTHON_CLIENT_MEM_FRACTION",
                    "RAYOPT_HOST_DEVICES",
                )
            },
        )

    def prepare(self, task: EvalTask, budget_mb: float = 0.0) -> dict[str, Any]:
        """Compile ``task`` (kept for the next ``evaluate``) and check XLA's memory
        analysis of the executable against the device's budget. Returns compile_s,
        memory (bytes: temp, argument, output, total) and, when it does not fit, an
        ``error`` (and the compiled executable is dropped)."""
        from rayopt.rl.evaluation import prepare

        compile_s, memory = prepare(
            task.key, task.spec, task.config, task.seeds, task.fast_compile, task.keep
        )
        budget, source = memory_budget(budget_mb)
        out: dict[str, Any] = dict(compile_s=compile_s, memory=memory, budget=budget)
        if memory is not None and memory["total"] > budget:
            self.release(task)
            out["error"] = (
                f"needs {_gb(memory['total'])} of device buffers at the real shapes of "
                f"{task.config.env} (hidden {task.config.hidden_size}, {len(task.seeds)} "
                f"seeds; temp {_gb(memory['temp'])}), over the budget of {_gb(budget)} "
                f"({source})"
            )
        return out

    def release(self, task: EvalTask) -> None:
        """Drop what ``prepare`` compiled for ``task`` (it will not run here, or not fit)."""
        from rayopt.rl.evaluation import release

        release(task.key)
        if not task.keep:  # nothing else holds it: free the executable now
            import gc

            gc.collect()

    def evaluate(self, task: EvalTask) -> dict[str, Any]:
        # Symbolic code is validated again by build(): the evaluator trusts no caller.
        from rayopt.rl.evaluation import evaluate

        r = evaluate(
            task.spec,
            task.config,
            task.seeds,
            fast_compile=task.fast_compile,
            keep=task.keep,
            num_updates=task.num_updates,
            key=task.key,
        )
        return dict(
            final_return=r.final_return,
            auc=r.auc,
            return_curve=r.return_curve,
            finite=r.finite,
            compile_s=r.compile_s,
            run_s=r.run_s,
            node=self.node,
            evaluator=self.id,
        )

    def random_return(
        self, env: str, num_envs: int = 64, num_steps: int = 2000, seed: int = 0
    ) -> float:
        """Mean episodic return of a uniform random policy (the cascade's floor)."""
        from rayopt.rl.evaluation import random_policy_return

        return random_policy_return(env, num_envs=num_envs, num_steps=num_steps, seed=seed)

    def pid(self) -> int:
        return os.getpid()


@dataclasses.dataclass
class _Slot:
    actor: Any
    index: int
    busy_s: float = 0.0  # finished work
    since: float | None = None  # when the task it is running started
    held: bool = False  # a task holds it (compiling, running, or its evaluator restarting)
    # tasks compiling ahead on this slot's evaluator while it is held, next first
    ahead: collections.deque[_Waiter] = dataclasses.field(default_factory=collections.deque)
    generation: int = 0  # bumped when the pool kills its evaluator (compiled work is lost)
    node: str | None = None  # its evaluator's node, as its last result said


@dataclasses.dataclass(eq=False)
class _Waiter:
    """A task waiting for a slot; with compile-ahead, pinned to a held slot whose
    evaluator is compiling it meanwhile (``prep``)."""

    task: EvalTask | None  # None: a call that is not an evaluation (``EvaluatorPool.call``)
    future: asyncio.Future
    near: str | None = None  # the node it would rather run on (``EvaluatorPool.run``)
    passed: int = 0  # times a later task went first to a slot on its own node
    pinned: _Slot | None = None
    prep: asyncio.Future | None = None
    prep_generation: int = 0


class EvaluatorPool:
    """Dispatch evaluation tasks to free evaluator slots, retrying on evaluator death.

    A slot is one evaluation at a time on one actor; an actor may offer several slots
    (the orchestration benchmark's simulated evaluators do). Utilisation is busy time
    over slots x wall time since the pool started.

    ``compile_ahead`` (bounded pools only: it needs ``prepare``): while a slot is held,
    up to that many waiting tasks are pinned to it and compiled by its evaluator on host
    threads, so each starts running the moment the slot frees. A slot that frees goes to
    its own next pinned task, else to the first unpinned one, else to a task pinned
    elsewhere (its compiled work is dropped): no slot idles while a task waits.

    ``run(task, near=node)``: the task would rather run on that node (where its
    executable is in the node's compilation cache: a candidate's full evaluation after
    its speed screen). It takes a free slot there before a free slot elsewhere, is
    compiled ahead on a held slot there with room before one elsewhere, and, when the
    pool spans several nodes, goes before the unpinned tasks queued ahead of it for a
    slot there: to be compiled ahead on it (when room opens there) or to run on it (when
    it frees). Each task is passed so at most as many times as the pool has slots, so
    none waits without bound. It never waits for its node while another slot is free.
    """

    def __init__(
        self,
        actors: Sequence[Any],
        slots_per_actor: int = 1,
        max_attempts: int = 3,
        bounds: Bounds | None = None,
        compile_ahead: int = 0,
    ):
        self.max_attempts = max_attempts
        self.bounds = bounds
        self.compile_ahead = compile_ahead if bounds is not None else 0
        self.slots = [_Slot(a, i) for a in actors for i in range(slots_per_actor)]
        # the reference's (compile_s, run_s) per (actor, PPO config, seeds, compile mode,
        # updates run)
        self.references: dict[tuple, tuple[float, float]] = {}
        self.killed = 0  # evaluators killed at a deadline
        self.restart_s: list[float] = []  # kill -> the restarted evaluator answers
        self.compile_wait_s = 0.0  # slot time spent waiting for a task's compile
        self.compiled_ahead = 0  # tasks whose compile was done or started ahead
        self._waiters: collections.deque[_Waiter] = collections.deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.started = time.monotonic()
        self.pending = 0  # tasks waiting for or holding a slot
        self.busy = 0  # slots running a task right now
        self.done = 0

    @property
    def size(self) -> int:
        return len(self.slots)

    def _check_loop(self) -> None:
        """A pool outlives ``asyncio.run``: waiters of a finished loop are dropped."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop = loop
            self._waiters.clear()
            for s in self.slots:
                s.held, s.since = False, None
                s.ahead.clear()

    def utilisation(self) -> float:
        """Busy time over slots x wall time, work in flight included (a long evaluation
        counts while it runs, not only once it ends)."""
        now = time.monotonic()
        wall = now - self.started
        busy = sum(
            s.busy_s + (now - max(s.since, self.started) if s.since else 0.0) for s in self.slots
        )
        return busy / max(wall * len(self.slots), 1e-9)

    def compile_wait_share(self) -> float:
        """The share of the slots' busy time spent waiting for a compile (finished work)."""
        busy = sum(s.busy_s for s in self.slots)
        return self.compile_wait_s / busy if busy > 0 else 0.0

    def reset_clock(self) -> None:
        self.started = time.monotonic()
        self.compile_wait_s = 0.0
        for s in self.slots:
            s.busy_s = 0.0
            s.since = None if s.since is None else self.started

    # ------------------------------------------------------------ slots
    async def _acquire(
        self, task: EvalTask | None, first: bool = False, near: str | None = None
    ) -> tuple[_Slot, _Waiter | None]:
        """A slot for ``task``: a free one at once (on node ``near`` if one there is
        free), else the first one handed to it (``first``: ahead of the queue). ``task``
        is None for a call that is not an evaluation (never compiled ahead)."""
        self._check_loop()
        free = [s for s in self.slots if not s.held]
        if free:
            s = next((s for s in free if near is not None and s.node == near), free[0])
            s.held = True
            return s, None
        w = _Waiter(task, asyncio.get_running_loop().create_future(), near=near)
        if first:
            self._waiters.appendleft(w)
        else:
            self._waiters.append(w)
        self._plan_ahead()
        try:
            return await w.future, w
        except asyncio.CancelledError:
            if w.future.done() and not w.future.cancelled():
                self._release(w.future.result())  # handed over as we were cancelled
            self._forget(w)
            raise

    def _release(self, slot: _Slot) -> None:
        """Hand ``slot`` to the next waiter (see the class docstring), or mark it free."""
        if self._loop is None or self._loop.is_closed():
            slot.held = False
            return
        for w in [w for w in self._waiters if w.future.done()]:  # cancelled, not yet resumed
            self._forget(w)
        nxt = slot.ahead[0] if slot.ahead else None
        nxt = nxt or self._near_waiter(slot)
        nxt = nxt or next((w for w in self._waiters if w.pinned is None), None)
        nxt = nxt or (self._waiters[0] if self._waiters else None)
        if nxt is None:
            slot.held = False
        else:
            if nxt.pinned is not None and nxt.pinned is not slot:
                self._unpin(nxt)  # its compile is elsewhere: dropped there
            if nxt.pinned is slot:
                slot.ahead.remove(nxt)
            self._waiters.remove(nxt)
            nxt.future.set_result(slot)
        self._plan_ahead()

    def _near_waiter(self, slot: _Slot) -> _Waiter | None:
        """The first unpinned waiter that would rather run on ``slot``'s node, when the
        pool spans several nodes and no unpinned waiter before it has been passed as
        many times as there are slots already nor is a side call (``call``, which goes
        first); the waiters it passes count it."""
        if slot.node is None or len({s.node for s in self.slots} - {None}) < 2:
            return None
        before: list[_Waiter] = []
        for w in self._waiters:
            if w.pinned is not None or w.future.done():  # done: cancelled, not yet resumed
                continue
            if w.task is None:
                return None
            if w.near == slot.node:
                if any(b.passed >= len(self.slots) for b in before):
                    return None
                for b in before:
                    b.passed += 1
                return w
            before.append(w)
        return None

    def _set_node(self, slot: _Slot, node: str | None) -> None:
        """``slot``'s evaluator is on ``node`` (None: unknown), and so are its other slots."""
        for s in self.slots:
            if s.actor is slot.actor:
                s.node = node

    def _forget(self, w: _Waiter) -> None:
        """``w`` stops waiting (cancelled): drop it and its compile-ahead."""
        if w in self._waiters:
            self._waiters.remove(w)
        self._unpin(w)

    def _unpin(self, w: _Waiter) -> None:
        """Drop ``w``'s compile-ahead: its evaluator forgets the executable once the
        compile it started ends."""
        slot, prep = w.pinned, w.prep
        if slot is not None and w in slot.ahead:
            slot.ahead.remove(w)
        w.pinned, w.prep = None, None
        if slot is not None and prep is not None:
            asyncio.ensure_future(_release_after(prep, slot.actor, w.task))

    def _plan_ahead(self) -> None:
        """Pin waiting tasks, first come first, to held slots with room ahead (on the
        node a task would rather run on, else the slot held longest), and start their
        compiles there; a task near a slot's node may go first (``_near_waiter``)."""
        if not self.compile_ahead:
            return
        while True:
            room = [s for s in self.slots if s.held and len(s.ahead) < self.compile_ahead]
            head = next((w for w in self._waiters if w.pinned is None and not w.future.done()
                         and w.task is not None), None)  # fmt: skip
            if not room or head is None:
                return
            # the first waiter's node if a slot there has room, else the emptiest slot
            # held longest; a waiter that would rather run on that slot's node goes first
            near = [s for s in room if head.near is not None and s.node == head.near]
            slot = min(near or room, key=lambda s: (len(s.ahead), s.since or math.inf))
            w = self._near_waiter(slot) or head
            slot.ahead.append(w)
            w.pinned, w.prep_generation = slot, slot.generation
            w.prep = asyncio.ensure_future(_ref(slot.actor.prepare.remote(
                w.task, self.bounds.memory_budget_mb if self.bounds else 0.0
            )))  # fmt: skip
            self.compiled_ahead += 1

    # ------------------------------------------------------------ running a task
    async def run(self, task: EvalTask, near: str | None = None) -> EvalOutcome:
        """Evaluate ``task`` on the next free slot (``near``: a node it would rather run
        on, see the class docstring); never raises for evaluation errors."""
        self.pending += 1
        try:
            error = "no attempt made"
            slot: _Slot | None = None
            for attempt in range(1, self.max_attempts + 1):
                if slot is None:
                    slot, waiter = await self._acquire(task, near=near)
                keep = False  # the slot goes back whatever happens, but for a retry on it
                try:
                    t0 = slot.since = time.monotonic()
                    self.busy += 1
                    try:
                        if self.bounds is None:
                            out = await slot.actor.evaluate.remote(task)
                        else:
                            ahead = _ahead_of(waiter, slot)
                            out = await self._bounded(slot, task, ahead)
                    finally:  # busy while the actor runs the task, not while it restarts
                        self.busy -= 1
                        slot.busy_s += time.monotonic() - max(t0, self.started)
                        slot.since = None
                    # counted with the busy time it is a share of (finished work)
                    self.compile_wait_s += _compile_wait(out)
                    if isinstance(out, dict) and out.get("node"):
                        self._set_node(slot, out["node"])
                    if isinstance(out, _Stopped):  # a deadline or the memory budget
                        if out.kill:
                            await self._kill(slot)
                        return EvalOutcome(
                            task,
                            ok=False,
                            attempts=attempt,
                            error=out.error,
                            error_kind=out.kind,
                            slowdown=out.slowdown,
                            reference_s=out.reference_s,
                            compile_s=out.compile_s,
                            run_s=out.run_s,
                            compile_wait_s=out.compile_wait_s,
                        )
                except RayTaskError as err:  # the evaluation raised: bad code, not bad luck
                    return EvalOutcome(
                        task, ok=False, attempts=attempt, error=_short(err), error_kind="evaluation"
                    )
                except (ActorDiedError, ActorUnavailableError, RayActorError) as err:
                    error = f"evaluator died: {type(err).__name__}"
                    slot.generation += 1  # whatever it had compiled ahead is gone
                    self._set_node(slot, None)  # Ray may restart it on another node
                    # Ray restarts it (elsewhere if its node is gone): the retry runs on
                    # the restarted evaluator, whose slot this task keeps meanwhile
                    keep = await _until_alive(slot.actor)
                    continue
                finally:
                    if not keep:
                        self._release(slot)
                        slot = None
                self.done += 1
                return EvalOutcome(task, ok=True, attempts=attempt, **out)
            return EvalOutcome(
                task, ok=False, attempts=self.max_attempts, error=error, error_kind="evaluator_died"
            )
        finally:
            self.pending -= 1

    async def call(self, method: str, *args: Any) -> Any:
        """``actor.method(*args)`` on the next free slot, ahead of queued evaluations, and
        held meanwhile like an evaluation: a short side job (the cascade's random-policy
        floor) then never runs beside an evaluation on the same evaluator, where it would
        share its cores and inflate the run time a deadline judges. Ray's errors
        propagate; an evaluator that dies is not retried (the caller decides)."""
        slot, _ = await self._acquire(None, first=True)
        try:
            return await getattr(slot.actor, method).remote(*args)
        finally:
            self._release(slot)

    def reference_spec(self) -> OptimiserSpec:
        from rayopt.optim import resolve

        assert self.bounds is not None
        return resolve(self.bounds.reference)

    async def _reference(self, slot: _Slot, task: EvalTask) -> tuple[float, float]:
        """The reference's (compile_s, run_s) for ``task``'s config and layout on this
        slot's evaluator: measured once (an unbounded evaluation of Adam, kept compiled),
        then cached."""
        key = _reference_key(slot, task)
        if key not in self.references:
            ref = EvalTask(
                f"reference/{self.bounds.reference}/{task.config.env}",
                self.reference_spec(),
                task.config,
                tuple(task.seeds),
                fast_compile=task.fast_compile,
                keep=True,
                num_updates=task.num_updates,
            )
            out = await slot.actor.evaluate.remote(ref)
            self.references[key] = (float(out["compile_s"]), max(float(out["run_s"]), 1e-6))
        return self.references[key]

    async def _bounded(
        self, slot: _Slot, task: EvalTask, ahead: asyncio.Future | None = None
    ) -> dict[str, Any] | _Stopped:
        """One attempt of ``task`` under :attr:`bounds`: compile and check its memory
        (or await the compile started ahead, ``ahead``), then run it against the
        deadline. Returns the evaluator's result, or why it was stopped (the caller
        kills the evaluator when the stop says so). Compile wait: the time the slot is
        held waiting for the compile, past the reference's measurement."""
        b = self.bounds
        assert b is not None
        key = _reference_key(slot, task)
        is_reference = task.spec == self.reference_spec()
        if is_reference and key not in self.references and b.max_slowdown:
            out = await slot.actor.evaluate.remote(task)  # the measurement is the run
            self.references[key] = (float(out["compile_s"]), max(float(out["run_s"]), 1e-6))
            wait = float(out["compile_s"])  # compiled inside the evaluation
            return dict(out, slowdown=1.0, reference_s=self.references[key][1], compile_wait_s=wait)
        # no deadline (max_slowdown 0): no reference run either
        ref_s = (await self._reference(slot, task))[1] if b.max_slowdown else None
        t0 = time.monotonic()
        prep = None
        if ahead is not None:
            try:
                prep = await asyncio.wait_for(asyncio.shield(ahead), b.compile_timeout_s)
            except asyncio.TimeoutError:
                prep = _TIMEOUT
            except (ActorDiedError, ActorUnavailableError, RayActorError):
                prep = None  # lost with its evaluator (restarted since): compile again
        if prep is None:
            try:
                left = max(b.compile_timeout_s - (time.monotonic() - t0), 1e-3)
                prep = await asyncio.wait_for(
                    _ref(slot.actor.prepare.remote(task, b.memory_budget_mb)), left
                )
            except asyncio.TimeoutError:
                prep = _TIMEOUT
        wait = time.monotonic() - t0
        if prep is _TIMEOUT:
            return _Stopped(
                "timeout",
                f"compiling did not finish within evaluator.compile_timeout_s = "
                f"{b.compile_timeout_s:g} s; the evaluator was stopped",
                kill=True,
                reference_s=ref_s,
                compile_s=wait,
                compile_wait_s=wait,
            )
        if prep.get("error"):
            return _Stopped(
                "memory",
                prep["error"],
                kill=False,
                reference_s=ref_s,
                compile_s=prep["compile_s"],
                compile_wait_s=wait,
            )
        deadline = b.deadline(ref_s) if ref_s is not None else None
        t1 = time.monotonic()
        try:
            out = await asyncio.wait_for(_ref(slot.actor.evaluate.remote(task)), deadline)
        except asyncio.TimeoutError:
            assert ref_s is not None
            ran = time.monotonic() - t1
            return _Stopped(
                "timeout",
                f"stopped after {ran:.1f} s of training, over {ran / ref_s:.0f}x the "
                f"{ref_s:.2f} s {b.reference} takes for the same run on this evaluator (limit: "
                f"evaluator.max_slowdown = {b.max_slowdown:g} x {b.reference} + "
                f"{b.floor_s:g} s); make the update cheaper: no work that grows with the "
                "square of a tensor's size, no big matmul chains",
                kill=True,
                slowdown=ran / ref_s,
                reference_s=ref_s,
                compile_s=float(prep["compile_s"]),
                run_s=ran,
                compile_wait_s=wait,
            )
        slowdown = float(out["run_s"]) / ref_s if ref_s else None
        return dict(out, slowdown=slowdown, reference_s=ref_s, compile_wait_s=wait)

    async def _kill(self, slot: _Slot) -> None:
        """End the process running an overrun evaluation; Ray restarts the actor (a
        restart, not a crash: no attempt is spent) and this returns once it answers.
        What it was compiling ahead is lost: those tasks compile again when their turn
        comes."""
        t0 = time.monotonic()
        slot.generation += 1
        self._set_node(slot, None)  # Ray may restart it on another node
        ray.kill(slot.actor, no_restart=False)
        self.killed += 1
        await asyncio.sleep(0.2)  # let the death register before asking for readiness
        await _until_alive(slot.actor)
        self.restart_s.append(time.monotonic() - t0)


@dataclasses.dataclass
class _Stopped:
    """Why a bounded evaluation was stopped, and whether its evaluator must be killed."""

    kind: str  # timeout | memory
    error: str
    kill: bool
    slowdown: float | None = None
    reference_s: float | None = None
    compile_s: float = 0.0
    run_s: float = 0.0
    compile_wait_s: float | None = None


#: A compile that did not finish within ``compile_timeout_s``.
_TIMEOUT: dict[str, Any] = {"timeout": True}


def _reference_key(slot: _Slot, task: EvalTask) -> tuple:
    """What a reference run time is measured for: the evaluator, the PPO config, the
    seeds layout, the compile mode and the updates run."""
    return (id(slot.actor), task.config, len(task.seeds), task.fast_compile, task.num_updates)


def _compile_wait(out: Any) -> float:
    """The compile wait a bounded attempt reported (0 for an unbounded one)."""
    wait = out.compile_wait_s if isinstance(out, _Stopped) else out.get("compile_wait_s")
    return float(wait or 0.0)


def _ahead_of(waiter: _Waiter | None, slot: _Slot) -> asyncio.Future | None:
    """The compile started ahead for ``waiter`` on ``slot``, if it is still there (not
    lost with a killed evaluator)."""
    if waiter is None or waiter.prep is None or waiter.pinned is not slot:
        return None
    if waiter.prep_generation != slot.generation:
        return None
    return waiter.prep


async def _release_after(prep: asyncio.Future, actor: Any, task: EvalTask) -> None:
    """Once a compile started ahead has ended, tell its evaluator to drop the executable
    (the task went to another slot)."""
    try:
        await prep
    except Exception:  # noqa: BLE001 - failed or lost: nothing was kept
        return
    with contextlib.suppress(Exception):  # the evaluator is gone: so is what it kept
        await actor.release.remote(task)


async def _ref(ref: Any) -> Any:
    """Await a Ray object ref as a coroutine (``asyncio.wait_for`` cancels it cleanly)."""
    return await ref


async def _until_alive(actor: Any, timeout_s: float = 300.0) -> bool:
    """Wait while Ray restarts ``actor``: calls made meanwhile fail at once and would
    spend attempts. False after ``timeout_s`` (no node for it yet): the next attempt
    takes any slot and reports what it finds."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            await actor.__ray_ready__.remote()
            return True
        except (ActorUnavailableError, RayActorError):  # ActorDiedError included
            await asyncio.sleep(0.5)
    return False


def _short(err: BaseException, limit: int = 500) -> str:
    """The last line of a remote traceback: the part a person (or an LLM) needs."""
    text = str(getattr(err, "cause", None) or err).strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return (lines[-1] if lines else text)[:limit]


def outcome_rows(out: EvalOutcome, where: dict[str, Any], stage: str) -> list[dict[str, Any]]:
    """Journal rows for one outcome: one evaluation row per seed (``status`` ok or
    nonfinite with its scores; failed, timeout or memory with the error), ``where``
    columns on each (and ``slowdown`` against the reference when the pool is bounded).

    Shared by discovery (stages screen and full) and sweeps (stage sweep), so every
    evaluation in every journal has the same columns with the same meaning.
    """
    t = out.task
    common = dict(
        where,
        env=t.config.env,
        stage=stage,
        total_timesteps=t.total_timesteps,
        hidden_size=t.config.hidden_size,
        activation=t.config.activation,
        ppo_config=json.dumps(dataclasses.asdict(t.config)),
        attempt=out.attempts,
        node=out.node,
        evaluator=out.evaluator,
        slowdown=out.slowdown,
        compile_wait_s=out.compile_wait_s,
    )
    if not out.ok:
        return [
            dict(
                common,
                row_type="evaluation",
                seed=seed,
                status=out.status,
                error_kind=out.error_kind,
                error=out.error,
                compile_s=out.compile_s or None,
                run_s=out.run_s or None,
            )
            for seed in t.seeds
        ]
    assert out.final_return is not None and out.auc is not None
    assert out.return_curve is not None and out.finite is not None
    return [
        dict(
            common,
            row_type="evaluation",
            seed=seed,
            final_return=float(out.final_return[i]),
            auc=float(out.auc[i]),
            return_curve=np.asarray(out.return_curve[i], np.float32).tolist(),
            finite=bool(out.finite[i]),
            status="ok" if out.finite[i] else "nonfinite",
            compile_s=out.compile_s,
            run_s=out.run_s,
        )
        for i, seed in enumerate(t.seeds)
    ]

"""The offline search: motif edits of the paper's optimisers, crossover and
simplification, each proposal valid; and dedup that sees behaviour (dead state is a
duplicate that costs no PPO)."""

from __future__ import annotations

import asyncio
import random

import pytest

from rayopt.optim.library import CLIPPED_UPDATE, DISCOVERED_1, GRADIENT_STEP, SIGN_UPDATE, SYMBOLIC
from rayopt.program import canonical_hash, check
from rayopt.results.journal import JournalWriter, read
from rayopt.search.archive import Candidate
from rayopt.search.cascade import Cascade
from rayopt.search.mutators import motifs
from rayopt.search.mutators.actor import check_proposal
from rayopt.search.mutators.base import MutationRequest, MutationResult, Scored
from rayopt.search.mutators.offline import OfflineMutator
from rayopt.search.state import RunJournal, Search

DONORS = [(n, c) for n, c in SYMBOLIC.items()]
#: sign_update with state its update never reads
DEAD_STATE = SIGN_UPDATE.replace(
    "    update = relative_update", "    var2 = var2 + g\n    update = relative_update"
)


@pytest.mark.parametrize("edit", [*motifs.MOTIFS, "crossover"])
def test_every_motif_and_crossover_gives_a_valid_program(edit):
    """Each edit applies to some App. B / §6 optimiser, and what it writes passes the
    full check (validation, literal audit, the sandboxed dry run)."""
    made = []
    for name, code in [*SYMBOLIC.items(), ("dead_state", DEAD_STATE)]:
        donors = [(n, c) for n, c in DONORS if n != name]
        for seed in range(3):
            try:
                new, idea = motifs.mutate(code, random.Random(seed), donors, only=edit)
            except ValueError:
                continue  # not applicable to this program (e.g. no free state slot)
            assert new != code and idea
            made.append((name, new, idea))
    assert made, f"{edit} applies to none of the paper's optimisers"
    name, new, idea = made[0]
    result = check(new, dry_run=True, timeout=20.0)
    assert result.ok, (name, idea, result.error, new)
    if edit == "crossover":
        assert idea.startswith("crossover:") and any(n in idea for n, _ in DONORS)


def test_motifs_build_a_discovered_optimiser_from_gradient_step():
    """Momentum, annealing and dormancy on gradient_step: the shape of Discovered 1."""
    rng = random.Random(0)
    code, ideas = GRADIENT_STEP, []
    for edit in ("momentum", "anneal", "dormancy"):
        code, idea = motifs.mutate(code, rng, only=edit)
        ideas.append(idea)
    assert "var1 = 0.9 * var1 + (1 - 0.9) * g" in code or "0.99 * var1" in code
    assert "t_p" in code and "d" in code
    assert check(code).ok
    assert "momentum" in ideas[0] and "anneal" in ideas[1]


def test_simplification_removes_dead_state_and_factors():
    dead = DEAD_STATE
    p = motifs.Program.parse(dead)
    assert p.eliminate_dead() == 1
    assert "var2 = var2 + g" not in p.code() and check(p.code()).ok
    # a factor of the update goes, and what only it needed goes with it
    new, idea = motifs.mutate(DISCOVERED_1, random.Random(1), only="drop_factor")
    assert idea.startswith("simplify:") and len(new) < len(DISCOVERED_1)


def test_dead_state_is_the_same_optimiser():
    """The fingerprint is the parameter trajectory: state the update never reads cannot
    change it (the canonical hash still tells the code apart)."""
    dead = DEAD_STATE
    a, b = check(SIGN_UPDATE), check(dead)
    assert a.ok and b.ok and a.hash != b.hash
    assert a.fingerprint == b.fingerprint


def test_a_dead_state_mutation_is_journalled_as_a_duplicate_without_ppo(tmp_path):
    orig = Candidate(id="init-sign_update", code=SIGN_UPDATE, name="sign_update")
    first = check_proposal(MutationResult(ok=True, mutator="library", code=SIGN_UPDATE), "")
    orig.code_hash, orig.fingerprint = first.code_hash, first.fingerprint
    orig.final_return = {"CartPole-v1": 20.0}
    s = Search(0, "t-ms0", [], [0], [0])
    s.index(orig)
    dead = DEAD_STATE
    checked = check_proposal(MutationResult(ok=True, mutator="offline", code=dead), SIGN_UPDATE)
    cand = Candidate(
        id="i0-g1-s1",
        code=dead,
        step=1,
        mutator="offline",
        code_hash=checked.code_hash,
        fingerprint=checked.fingerprint,
    )
    from conftest import tiny_discovery

    journal = RunJournal(JournalWriter(tmp_path))
    cascade = Cascade(tiny_discovery(), evaluators=None, journal=journal)  # no PPO may run
    verdict = asyncio.run(cascade.assess(s, cand, 0, 1, created=True, checked=checked))
    assert verdict.event == "duplicate" and verdict.candidate.duplicate_of == orig.id
    assert verdict.candidate.final_return == orig.final_return  # shares the scores
    rows = read(tmp_path).to_pandas()
    dup = rows[rows.event == "duplicate"]
    assert len(dup) == 1 and dup.status.iat[0] == "same fingerprint"
    assert (rows.row_type == "evaluation").sum() == 0 and s.duplicates == 1


def _scored(cid: str, code: str) -> Scored:
    return Scored(cid, code, {"CartPole-v1": 1.0}, {"CartPole-v1": 1.0})


def test_offline_mutator_proposals_are_checked_new_and_described():
    current = _scored("init-gradient_step", GRADIENT_STEP)
    context = (_scored("init-clipped_update", CLIPPED_UPDATE), _scored("ref", DISCOVERED_1))
    known = frozenset({canonical_hash(GRADIENT_STEP)})
    mutator = OfflineMutator()
    seen = set()
    for step in range(1, 6):
        request = MutationRequest(
            current, context, (), seed=0, run_id="t", step=step, base=current, known=known
        )
        res = mutator.propose_sync(request)
        assert res.ok, res.error
        assert res.idea.startswith("offline: ") and res.check is not None and res.check.ok
        assert res.check.hash not in known
        seen.add(res.check.hash)
    assert len(seen) >= 4  # different steps, different edits

    lion = OfflineMutator(style="edits").propose_sync(
        MutationRequest(current, context, (), seed=0, run_id="t", step=1)
    )
    assert lion.ok and lion.calls[-1].model == "edits"

"""Held-out confirmation: at the end of a discovery, the best discovered candidates, the
initial optimisers and the references are trained again on seeds the search never used;
the rows are journalled once (stage confirm) and a second pass adds none."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from conftest import tiny_discovery

from rayopt.analysis import heldout
from rayopt.config import ConfigError
from rayopt.results.journal import read
from rayopt.search.confirm import confirm, search_seeds
from rayopt.search.driver import Discovery


def test_confirmation_on_held_out_seeds_once_and_resumable(evaluator_pool, tmp_path):
    # the search at one seed (the session's tiny layout, compiled by earlier tests) and
    # two initial optimisers; confirmation at two held-out seeds, so only the few
    # confirmed programs compile again at that layout
    initial = ["sign_update", "gradient_step"]
    config = tiny_discovery(
        **{
            "search.initial": initial,
            "confirm.enabled": True,
            "confirm.top_k": 1,
            "confirm.seeds": 2,
            "confirm.seed_offset": 100,
        }
    )
    d = Discovery.create(config, tmp_path / "run", evaluator_pool=evaluator_pool)
    summary = asyncio.run(d.run())
    df = read(tmp_path / "run").to_pandas()
    held_rows = df[(df.row_type == "evaluation") & (df.stage == "confirm")]
    # fresh seeds only: none the search trained with
    assert set(held_rows.seed) == {100, 101}
    assert not set(held_rows.seed) & search_seeds(config)
    searched = df[(df.row_type == "evaluation") & df.stage.isin(["full", "screen"])]
    assert set(searched.seed) <= search_seeds(config)
    # every optimiser once per (env, seed): the best discovered, the initial ones, adam
    per = held_rows.groupby(["optimizer", "env", "seed"]).size()
    assert per.max() == 1
    names = set(held_rows.optimizer)
    assert {*initial, "adam"} <= names
    discovered = [n for n in names if n.startswith("tiny-ms0/")]
    assert len(discovered) == 1, names
    assert len(held_rows) == len(names) * len(config.envs) * 2

    # the summary and the report read it back: best discovered chosen by in-search rank,
    # P(X > best initial) and P(X > adam) over the envs
    h = heldout.load(tmp_path / "run")
    assert h is not None and h.best == {0: discovered[0]}
    assert h.best_initial in initial
    assert set(h.comparisons.y) == {h.best_initial, "adam"}
    assert summary["heldout"]["meta_seeds"][0]["best"] == discovered[0]
    assert 0.0 <= summary["heldout"]["meta_seeds"][0]["poi"]["adam"]["poi"] <= 1.0
    text = heldout.text(h)
    assert "seeds 100-101" in text and "ms0 best" in text and "best initial" in text
    # n < 3 is flagged: no interval in the cells, a warning under the table
    assert "(n=2: no CI)" in text and "with 2 seed(s): no interval shown" in text
    held_best = summary["heldout"]["meta_seeds"][0]["heldout"]
    assert all(v["ci"] == [None, None] for v in held_best.values()), held_best
    # the in-search score sits next to the held-out one (the winner's curse is visible)
    best = h.table[h.table.optimizer == discovered[0]].iloc[0]
    assert best.in_search == pytest.approx(
        summary["meta_seeds"][0]["best_discovered"]["final_return"][best.env]
    )

    # a second confirmation of the same run trains nothing and writes no row
    again = asyncio.run(confirm(config, tmp_path / "run", evaluator_pool))
    assert again["evaluated"] == 0 and again["skipped"] == len(held_rows)
    assert len(read(tmp_path / "run").to_pandas()) == len(df)


def test_held_out_seeds_must_be_fresh():
    with pytest.raises(ConfigError, match="confirm.seed_offset must be >= 2"):
        tiny_discovery(**{"confirm.enabled": True, "confirm.seed_offset": 1, "seeds": 2})


def test_one_held_out_seed_is_named_as_one():
    assert heldout.seed_range(SimpleNamespace(seeds=[100])) == "seed 100"
    assert heldout.seed_range(SimpleNamespace(seeds=[100, 101, 102])) == "seeds 100-102"

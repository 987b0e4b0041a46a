"""Analysis: rliable statistics, the Fig. 2 curve, top-k selection, the report (no Ray, no
training: synthetic journals written with JournalWriter)."""

from __future__ import annotations

import html.parser
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rayopt.analysis import stats
from rayopt.analysis._rliable import metrics, rly
from rayopt.results.journal import JournalWriter

REPS = 300


# ---------------------------------------------------------------- rliable equality
def test_single_point_iqm_and_ci_equal_rliable() -> None:
    x = np.random.default_rng(1).normal(size=16) * 10
    point, ci = stats.interval_estimates([x], reps=REPS, seed=7)
    np.random.seed(7)  # rliable bootstraps from NumPy's global generator
    p, iv = rly.get_interval_estimates(
        {"a": x[:, None]}, lambda s: np.array([metrics.aggregate_iqm(s)]), reps=REPS
    )
    assert point[0] == pytest.approx(float(p["a"][0]), abs=1e-12)
    np.testing.assert_allclose(ci[:, 0], np.ravel(iv["a"]), atol=1e-12)
    assert ci[0, 0] < point[0] < ci[1, 0]


def test_batched_points_equal_rliable_on_the_same_matrix() -> None:
    rng = np.random.default_rng(2)
    cols = [rng.normal(loc=i, size=8) for i in range(3)]
    point, ci = stats.interval_estimates(cols, reps=REPS, seed=3)
    m = np.stack(cols, axis=1)
    np.random.seed(3)
    per_column = lambda s: np.array([metrics.aggregate_iqm(s[:, [j]]) for j in range(s.shape[1])])  # noqa: E731
    p, iv = rly.get_interval_estimates({"m": m}, per_column, reps=REPS)
    np.testing.assert_allclose(point, p["m"], atol=1e-12)
    np.testing.assert_allclose(ci, np.asarray(iv["m"]), atol=1e-12)
    # each column's interval is (statistically) the one it gets bootstrapped alone
    for j, c in enumerate(cols):
        np.random.seed(11)
        _, alone = rly.get_interval_estimates(
            {"a": c[:, None]}, lambda s: np.array([metrics.aggregate_iqm(s)]), reps=2000
        )
        assert np.ravel(alone["a"]) == pytest.approx(ci[:, j], abs=0.35)


def test_mixed_lengths_and_nans() -> None:
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=6), rng.normal(size=9)
    b_nan = np.concatenate([b, [np.nan]])
    point, ci = stats.interval_estimates([a, b_nan, np.array([np.nan])], reps=REPS, seed=5)
    for x, j in [(a, 0), (b, 1)]:
        np.random.seed(5)
        p, iv = rly.get_interval_estimates(
            {"a": x[:, None]}, lambda s: np.array([metrics.aggregate_iqm(s)]), reps=REPS
        )
        assert point[j] == pytest.approx(float(p["a"][0]))
        np.testing.assert_allclose(ci[:, j], np.ravel(iv["a"]))
    assert np.isnan(point[2]) and np.isnan(ci[:, 2]).all()


# ---------------------------------------------------------------- synthetic sweep
MEANS = {"good": 10.0, "mid": 5.0, "bad": 0.0}


def _sweep_rows(name: str = "syn", seeds: int = 8) -> list[dict]:
    rng = np.random.default_rng(0)
    rows = []
    for value in ("16", "64"):
        for env in ("Breakout-MinAtar", "CartPole-v1"):
            scale = 1.0 if env == "Breakout-MinAtar" else 40.0  # returns differ in scale
            for opt, mu in MEANS.items():
                for seed in range(seeds):
                    rows.append(
                        dict(
                            row_type="evaluation",
                            stage="sweep",
                            sweep=name,
                            run_id=name,
                            axis="hidden_size",
                            axis_value=value,
                            hidden_size=int(value),
                            optimizer=opt,
                            env=env,
                            seed=seed,
                            status="ok",
                            final_return=scale * (mu + rng.normal()),
                            auc=scale * mu / 2,
                            return_curve=[0.0, 1.0],
                        )
                    )
    rows.append(
        dict(
            row_type="event",
            event="created",
            sweep=name,
            run_id=name,
            optimizer="mid",
            code="def update_fn(w, g, var1, var2, t, d, t_p, b_p, l_p, key):\n"
            "    return g, var1, var2\n",
            idea="plain <gradient> & friends",
        )
    )
    return rows


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("sweep")
    w = JournalWriter(d)
    rows = _sweep_rows()
    w.write(rows[:40])
    w.write(rows[40:])
    w.write([dict(rows[0], final_return=rows[0]["final_return"])])  # the same seed again
    return d


def test_iqm_table_orders_a_known_ordering(sweep_dir: Path) -> None:
    scores = stats.load_scores(sweep_dir)
    assert len(scores) == 2 * 2 * 3 * 8  # the repeated seed counts once
    t = stats.iqm_table(scores, reps=REPS)
    assert len(t) == 12 and set(t["n"]) == {8}
    for (_, _), g in t.groupby(["axis_value", "env"]):
        iqm = g.set_index("optimizer")["iqm"]
        assert iqm["good"] > iqm["mid"] > iqm["bad"]
        assert (g["ci_low"] <= g["iqm"]).all() and (g["iqm"] <= g["ci_high"]).all()
        lo, hi = g.set_index("optimizer")["ci_low"], g.set_index("optimizer")["ci_high"]
        assert lo["good"] > hi["bad"]  # far apart: the intervals do not overlap
    # sorted: numeric axis order, then env, then optimiser
    assert list(t["axis_value"]) == ["16"] * 6 + ["64"] * 6


def test_probability_of_improvement(sweep_dir: Path) -> None:
    scores = stats.load_scores(sweep_dir)
    pairs = stats.parse_pairs("good:bad,bad:good,mid:good", scores["optimizer"])
    p = stats.poi_table(scores, pairs, reps=50)
    overall = p[p["env"] == stats.ALL_ENVS]
    assert len(overall) == 6  # 3 pairs x 2 axis values
    assert (overall[overall["x"] == "good"]["poi"] > 0.5).all()
    assert (overall[overall["x"] == "bad"]["poi"] < 0.5).all()
    assert overall["ci_low"].notna().all() and (overall["ci_low"] <= overall["poi"]).all()
    m = lambda o: (
        scores[(scores.optimizer == o) & (scores.axis_value == "16")]
        .pivot(  # noqa: E731
            index="seed", columns="env", values="value"
        )
        .to_numpy()
    )
    first = overall[(overall.x == "good") & (overall.axis_value == "16")]["poi"].iat[0]
    assert first == pytest.approx(metrics.probability_of_improvement(m("good"), m("bad")))
    with pytest.raises(ValueError, match="pair"):
        stats.parse_pairs("good:nobody", scores["optimizer"])
    # a name with ':' in it splits where both sides are optimisers
    assert stats.parse_pairs("adam:3e-4:adam", ["adam", "adam:3e-4"]) == [("adam:3e-4", "adam")]


def test_performance_profile_orders(sweep_dir: Path) -> None:
    prof = stats.performance_profiles(stats.load_scores(sweep_dir), reps=20)["syn"]
    mid_tau = len(prof["taus"]) // 2
    p = prof["profile"]
    assert p["good"][mid_tau] > p["mid"][mid_tau] > p["bad"][mid_tau]
    assert all(np.all(np.diff(v) <= 1e-12) for v in p.values())  # a profile never rises


# ---------------------------------------------------------------- synthetic discovery
ENVS = ["Asterix-MinAtar", "Breakout-MinAtar"]
CODE = "def update_fn(w, g, var1, var2, t, d, t_p, b_p, l_p, key):\n    return {x}, var1, var2\n"


def _discovery_rows(
    run_id: str, meta_seed: int, order_scores: list[tuple[str, str | None, float]], ref_score: float
) -> list[list[dict]]:
    """Batches (one part file each) of a run evaluating candidates in the given order."""
    batches = []
    for cid, parent, score in order_scores:
        init = cid.startswith("init-")
        created = dict(
            row_type="event",
            event="created",
            run_id=run_id,
            meta_seed=meta_seed,
            candidate_id=cid,
            parent_id=parent,
            optimizer=cid,
            mutator="library" if init else "offline",
            code=CODE.format(x=f"g*{score}"),
            idea=None if init else f"idea of {cid}",
        )
        evals = [
            dict(
                row_type="evaluation",
                stage="full",
                run_id=run_id,
                meta_seed=meta_seed,
                candidate_id=cid,
                env=env,
                seed=s,
                status="ok",
                final_return=score + (0.01 * s),
                return_curve=[1.0] * 50,
            )
            for env in ENVS
            for s in range(2)
        ]
        done = dict(
            row_type="event",
            event="evaluated",
            run_id=run_id,
            meta_seed=meta_seed,
            candidate_id=cid,
            final_return=score,
        )
        batches += [[created], evals, [done]]
    # a duplicate and a screened-out candidate: never population members
    batches.append(
        [
            dict(
                row_type="event",
                event="created",
                run_id=run_id,
                meta_seed=meta_seed,
                candidate_id="i0-g9-s1",
                parent_id="i0-g1-s1",
                mutator="offline",
                code=CODE.format(x="g"),
            ),
            dict(
                row_type="event",
                event="duplicate",
                run_id=run_id,
                meta_seed=meta_seed,
                candidate_id="i0-g9-s1",
                ref_candidate_id="i0-g1-s1",
            ),
        ]
    )
    batches.append(
        [
            dict(
                row_type="event",
                event="created",
                run_id=run_id,
                meta_seed=meta_seed,
                candidate_id="ref-adam",
                optimizer="adam",
                mutator="reference",
                code="",
            )
        ]
        + [
            dict(
                row_type="evaluation",
                stage="full",
                run_id=run_id,
                meta_seed=meta_seed,
                candidate_id="ref-adam",
                env=env,
                seed=s,
                status="ok",
                final_return=ref_score,
            )
            for env in ENVS
            for s in range(2)
        ]
        + [
            dict(
                row_type="event",
                event="evaluated",
                run_id=run_id,
                meta_seed=meta_seed,
                candidate_id="ref-adam",
            )
        ]
    )
    return batches


#: (candidate, parent, score) in evaluation order; higher score = better on both envs
MS0 = [
    ("init-a", None, 1.0),
    ("init-b", None, 3.0),
    ("i0-g1-s1", "init-a", 2.0),
    ("i0-g1-s2", "i0-g1-s1", 5.0),
    ("i0-g2-s1", "init-b", 4.0),
    ("i0-g3-s1", "i0-g1-s2", 6.0),
]
MS1 = [("init-a", None, 1.0), ("i0-g1-s1", "init-a", 7.0), ("i0-g1-s2", "i0-g1-s1", 0.5)]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("run")
    w = JournalWriter(d)
    for batch in _discovery_rows("syn-ms0", 0, MS0, ref_score=4.5) + _discovery_rows(
        "syn-ms1", 1, MS1, ref_score=0.75
    ):
        w.write(batch)
    (d / "config.yaml").write_text(json.dumps({"name": "syn", "envs": ENVS}))
    return d


def test_population_ranks_curve_and_references(run_dir: Path) -> None:
    from rayopt.analysis.population import load_populations

    p0, p1 = load_populations(run_dir)
    assert (p0.run_id, p1.run_id) == ("syn-ms0", "syn-ms1")
    assert p0.order == [c for c, _, _ in MS0]  # evaluation order; no duplicate, no reference
    ranks = p0.ranks()
    assert ranks == {
        "init-a": 6.0,
        "init-b": 4.0,
        "i0-g1-s1": 5.0,
        "i0-g1-s2": 2.0,
        "i0-g2-s1": 3.0,
        "i0-g3-s1": 1.0,
    }
    # the curve ranks candidates and adam (4.5 on both envs, between 5.0 and 4.0) in one
    # population of 7: adam is 3rd, and every candidate below it moves down one place
    joint = p0.joint_ranks()
    assert joint["ref-adam"] == 3.0 and joint["i0-g1-s2"] == 2.0 and joint["init-a"] == 7.0
    curve = p0.curve()
    best = [pt["best_rank"] for pt in curve]
    assert best == [7.0, 5.0, 5.0, 2.0, 2.0, 1.0]
    assert [pt["avg_rank"] for pt in curve] == [joint[c] for c in p0.order]
    assert all(b2 <= b1 for b1, b2 in zip(best, best[1:], strict=False))  # monotone
    assert p0.reference_ranks() == {"ref-adam": 3.0}
    assert p1.reference_ranks() == {"ref-adam": 3.0}  # 0.75: between 1.0 and 0.5
    assert p0.top(2) == [("i0-g3-s1", 1.0), ("i0-g1-s2", 2.0)]
    assert p0.top(1, discovered_only=False) == [("i0-g3-s1", 1.0)]
    assert p0.lineage("i0-g3-s1") == ["i0-g3-s1", "i0-g1-s2", "i0-g1-s1", "init-a"]
    assert p0.code(["i0-g3-s1"]) == {"i0-g3-s1": CODE.format(x="g*6.0")}
    assert set(p0.env_ranks()["i0-g3-s1"].values()) == {1.0}


def test_fig2_ranks_candidates_and_references_in_one_population() -> None:
    """The issue's three-env example: among the candidates, ``c1`` ranks 1.0; Adam beats
    it on two envs of three. Ranked in one population (Fig. 2's curve and its reference
    lines), Adam is 1.33 and ``c1`` 1.67: the curve must not end above Adam's line."""
    from rayopt.analysis.population import Member, Population

    envs = ["e1", "e2", "e3"]
    members = {
        "c1": Member("c1", outcome="evaluated", evaluated_at=1.0, scores=dict.fromkeys(envs, 10.0)),
        "c2": Member("c2", outcome="evaluated", evaluated_at=2.0, scores=dict.fromkeys(envs, 5.0)),
        "ref-adam": Member(
            "ref-adam",
            mutator="reference",
            outcome="evaluated",
            evaluated_at=3.0,
            scores={"e1": 20.0, "e2": 20.0, "e3": 7.0},
        ),
    }
    pop = Population(None, "x-ms0", 0, envs, members)  # type: ignore[arg-type]
    assert pop.ranks() == {"c1": 1.0, "c2": 2.0}  # the search's rule: candidates only
    adam = pop.reference_ranks()["ref-adam"]
    assert adam == pytest.approx(4 / 3)
    curve = pop.curve()
    assert [p["avg_rank"] for p in curve] == pytest.approx([5 / 3, 3.0])
    assert curve[-1]["best_rank"] == pytest.approx(5 / 3) and curve[-1]["best_id"] == "c1"
    assert curve[-1]["best_rank"] > adam  # Adam ranks ahead of the best candidate


def test_nan_seed_is_left_out_of_the_score_as_the_driver_does(tmp_path: Path) -> None:
    """A NaN final return (a diverged seed, or no finished episode) does not make the
    candidate's env score NaN: the driver ranks by np.nanmean over seeds, and so must we."""
    from rayopt.analysis.population import load_populations

    w = JournalWriter(tmp_path)
    for batch in _discovery_rows("syn-ms0", 0, MS0, ref_score=4.5):
        w.write(batch)
    nan_row = dict(
        row_type="evaluation",
        stage="full",
        run_id="syn-ms0",
        meta_seed=0,
        candidate_id="i0-g3-s1",
        env=ENVS[0],
        seed=2,
        final_return=float("nan"),
    )
    w.write([dict(nan_row, status="nonfinite"), dict(nan_row, seed=1, status="ok")])
    (tmp_path / "config.yaml").write_text(json.dumps({"name": "syn", "envs": ENVS}))
    (pop,) = load_populations(tmp_path)
    # seed 0: 6.0; seed 1: mean(6.01, NaN) = 6.01; seed 2: NaN only -> left out
    assert pop.members["i0-g3-s1"].scores[ENVS[0]] == pytest.approx(6.005)
    assert pop.members["i0-g3-s1"].scores[ENVS[1]] == pytest.approx(6.005)
    assert pop.order == [c for c, _, _ in MS0]
    assert pop.top(1) == [("i0-g3-s1", 1.0)]


def test_literal_penalty_comes_from_the_run_config(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from rayopt.analysis.population import load_populations

    w = JournalWriter(tmp_path)
    for batch in _discovery_rows("syn-ms0", 0, MS1, ref_score=0.75):
        w.write(batch)
    config = tmp_path / "config.yaml"
    # penalise without a literal_penalty: the config default, as the driver ranked
    config.write_text(json.dumps({"envs": ENVS, "search": {"literal_policy": "penalise"}}))
    (pop,) = load_populations(tmp_path)
    assert pop.literal_penalty == 0.5 and pop.envs == ENVS
    config.write_text(json.dumps({"envs": ENVS, "search": {"literal_penalty": 2.0}}))
    assert load_populations(tmp_path)[0].literal_penalty == 0.0  # policy "record"
    # a config this version cannot build: no penalty, envs from the data, one warning
    config.write_text(json.dumps({"envs": ["CartPole-v1"], "retired_key": 1}))
    (pop,) = load_populations(tmp_path)
    assert pop.literal_penalty == 0.0 and pop.envs == ENVS
    err = capsys.readouterr().err
    assert "retired_key" in err and len(err.strip().splitlines()) == 1


def test_report_keeps_runs_with_the_same_run_id_apart(run_dir: Path, tmp_path: Path) -> None:
    """runs/quickstart and runs/quickstart-1 both hold run_id quickstart-ms0: each
    population's cards show its own best candidates with their own code."""
    import re

    from rayopt.analysis.report import AnalysisOptions, analyze

    other = tmp_path / "syn-1"  # a second run of the same config: same run_id as ms1's rows
    w = JournalWriter(other)
    for batch in _discovery_rows("syn-ms0", 0, MS1, ref_score=0.75):
        w.write(batch)
    (other / "config.yaml").write_text(json.dumps({"name": "syn", "envs": ENVS}))
    res = analyze(
        [run_dir, other],
        tmp_path / "out",
        AnalysisOptions(reps=REPS, profile_reps=20, top=2, plots=False),
        echo=False,
    )
    text = res.report.read_text()
    cards = re.findall(
        r"<div class='card'><h3>(\S+) #(\d): (\S+) .*?</h3>.*?<pre><code>(.*?)</code></pre>",
        text,
        flags=re.S,
    )
    shown = [
        (run, place, cid, re.search(r"return (g\*[0-9.]+)", code)[1])
        for run, place, cid, code in cards
    ]
    assert shown == [
        ("syn-ms0", "1", "i0-g3-s1", "g*6.0"),  # run_dir's ms0
        ("syn-ms0", "2", "i0-g1-s2", "g*5.0"),
        ("syn-ms1", "1", "i0-g1-s1", "g*7.0"),  # run_dir's ms1
        ("syn-ms1", "2", "i0-g1-s2", "g*0.5"),
        ("syn-ms0", "1", "i0-g1-s1", "g*7.0"),  # the other run's ms0
        ("syn-ms0", "2", "i0-g1-s2", "g*0.5"),
    ]


def test_top_k_selection_pooled_and_per_meta_seed(run_dir: Path) -> None:
    from rayopt.analysis.sweep import resolve_optimizers
    from rayopt.config import ConfigError

    pooled = resolve_optimizers([f"run:{run_dir}@top2"])
    # pooled over meta-seeds: ms1's 7.0 beats ms0's 6.0; init candidates never chosen
    assert [o.name for o in pooled] == ["syn-ms1/i0-g1-s1", "syn-ms0/i0-g3-s1"]
    assert pooled[0].spec.kind == "symbolic" and "g*7.0" in pooled[0].spec.code
    per = resolve_optimizers([f"run:{run_dir}@ms0/top2"])
    assert [o.name for o in per] == ["syn-ms0/i0-g3-s1", "syn-ms0/i0-g1-s2"]
    one = resolve_optimizers([f"run:{run_dir}@ms1/i0-g1-s2", f"run:{run_dir}@ms0/ref-adam"])
    assert one[0].source["candidate_id"] == "i0-g1-s2" and one[1].spec.kind == "adam"
    with pytest.raises(ValueError, match="several meta-seeds"):
        resolve_optimizers([f"run:{run_dir}@i0-g1-s1"])
    with pytest.raises(ValueError, match="no candidate"):
        resolve_optimizers([f"run:{run_dir}@nobody"])
    with pytest.raises((ValueError, ConfigError)):
        resolve_optimizers([f"run:{run_dir}@top2", f"run:{run_dir}@ms1/i0-g1-s1"])  # twice


# ---------------------------------------------------------------- the report
class _Refs(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "img" and a.get("src"):
            self.images.append(a["src"])
        if tag == "a" and a.get("href") and not a["href"].startswith("#"):
            self.links.append(a["href"])


def test_report_renders_with_every_image(run_dir: Path, sweep_dir: Path, tmp_path: Path) -> None:
    from rayopt.analysis.report import AnalysisOptions, analyze

    out = tmp_path / "analysis"
    res = analyze(
        [run_dir, sweep_dir], out, AnalysisOptions(reps=REPS, profile_reps=20, top=2), echo=False
    )
    text = res.report.read_text()
    parser = _Refs()
    parser.feed(text)
    assert len(parser.images) == 3  # Fig. 2, the sweep, its profile
    for ref in parser.images + parser.links:
        f = out / ref
        assert f.is_file() and f.stat().st_size > 1000, ref
        head = f.read_bytes()[:400]
        assert head.startswith(b"\x89PNG") if f.suffix == ".png" else b"<svg" in head, ref
    assert {Path(r).suffix for r in parser.links} == {".svg"}
    # the best candidates with code, idea, lineage back to an initial optimiser
    assert "i0-g3-s1" in text and "idea of i0-g3-s1" in text and "g*6.0" in text
    assert "init-a" in text and "syn-ms1" in text
    assert "plain &lt;gradient&gt; &amp; friends" in text  # sweep optimiser idea, escaped
    # tables on disk agree with what came back
    iqm = pd.read_csv(out / "tables" / "iqm.csv")
    assert len(iqm) == len(res.iqm) == 12
    curve = pd.read_csv(out / "tables" / "meta_training.csv")
    assert list(curve[curve.run_id == "syn-ms0"]["best_rank"]) == [7.0, 5.0, 5.0, 2.0, 2.0, 1.0]
    refs = pd.read_csv(out / "tables" / "references.csv")
    assert list(refs["avg_rank"]) == [3.0, 3.0]
    assert (out / "tables" / "iqm.md").read_text().startswith("| sweep |")


def test_cli_analyze(
    run_dir: Path, sweep_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from rayopt.cli import main

    out = tmp_path / "a"
    assert (
        main(
            [
                "analyze",
                str(run_dir),
                str(sweep_dir),
                "--out",
                str(out),
                "--no-plots",
                "--reps",
                "100",
                "--pairs",
                "good:bad",
                "--poi-reps",
                "20",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "IQM" in printed and "good" in printed and "ref-adam" in printed
    poi = pd.read_csv(out / "tables" / "poi.csv")
    assert set(zip(poi["x"], poi["y"], strict=True)) == {("good", "bad")}
    assert main(["analyze", str(tmp_path / "missing")]) == 2


# ---------------------------------------------------------------- few seeds
def _few_seed_scores(counts: dict[str, int]) -> pd.DataFrame:
    rng = np.random.default_rng(5)
    rows = [
        dict(sweep="s", axis="none", axis_value="", optimizer=o, env="CartPole-v1", seed=i, value=v)
        for o, n in counts.items()
        for i, v in enumerate(rng.normal(100.0, 10.0, size=n))
    ]
    return pd.DataFrame(rows)


def test_few_seeds_get_no_interval_or_a_marked_one(tmp_path: Path) -> None:
    """n < 3: no interval (rliable's would be [x, x] at n = 1, ~50 % coverage at n = 2);
    n = 3-4: the interval is shown and marked; the legend says both; the plot too."""
    from rayopt.analysis.plots import small_n_note, sweep_figure

    t = stats.iqm_table(_few_seed_scores({"n1": 1, "n2": 2, "n3": 3, "n4": 4, "n8": 8}), reps=REPS)
    t = t.set_index("optimizer")
    assert t.loc[["n1", "n2"], ["ci_low", "ci_high"]].isna().all().all()
    assert t.loc[["n3", "n4", "n8"], ["ci_low", "ci_high"]].notna().all().all()
    assert (t.loc[["n3", "n4", "n8"], "ci_low"] < t.loc[["n3", "n4", "n8"], "ci_high"]).all()
    cells = dict(zip(t.index, stats.iqm_display(t.reset_index())["IQM [95% CI]"], strict=True))
    assert cells["n1"].endswith("(n=1: no CI)") and cells["n2"].endswith("(n=2: no CI)")
    assert cells["n3"].endswith("]*") and cells["n4"].endswith("]*")
    assert cells["n8"].endswith("]") and "*" not in cells["n8"]
    legend = stats.small_n_legend(t["n"])
    assert len(legend) == 2 and "2 point(s) with 1 or 2 seed(s): no interval" in legend[0]
    assert legend[1].startswith("note: * 3 or 4 seeds")
    assert stats.small_n_legend([5, 8, 16]) == []
    note = small_n_note(t.reset_index())
    assert "fewer than 3 seeds, no interval" in note and "3-4 seeds" in note
    assert small_n_note(t.reset_index()[lambda d: d.n > 4]) == ""
    files = sweep_figure(t.reset_index(), "none", tmp_path / "few")  # draws without a band
    assert all(f.stat().st_size > 1000 for f in files)


def test_rliable_shim_imports_under_the_installed_pandas() -> None:
    """In a fresh interpreter (the shim runs at import), under whichever pandas is
    installed: rliable imports and its IQM works."""
    import subprocess
    import sys

    code = (
        "import pandas; from rayopt.analysis._rliable import metrics, rly; import numpy as np; "
        "print(pandas.__version__, metrics.aggregate_iqm(np.arange(8.0)[:, None]))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    version, iqm = proc.stdout.split()
    assert version == pd.__version__ and float(iqm) == pytest.approx(3.5)


def test_rliable_shim_adapts_only_the_pandas_3_signature() -> None:
    """arch 7 calls ``deprecate_kwarg(old, new)``: pandas 2.x takes that as is (left
    alone), pandas 3 wants ``(klass, old, new)`` (adapted)."""
    import pandas.util._decorators as decorators

    from rayopt.analysis._rliable import adapt

    def pandas2(old_arg_name, new_arg_name, mapping=None, stacklevel=2):
        return ("2", old_arg_name, new_arg_name)

    def pandas3(klass, old_arg_name, new_arg_name, mapping=None, stacklevel=2):
        return (klass, old_arg_name, new_arg_name)

    assert adapt(pandas2) is None
    adapted = adapt(pandas3)
    assert adapted("old", "new") == (FutureWarning, "old", "new")  # arch's call
    assert adapted(DeprecationWarning, "old", "new") == (DeprecationWarning, "old", "new")
    installed = adapt(decorators.deprecate_kwarg)
    assert (installed is None) == (int(pd.__version__.split(".")[0]) < 3)
    assert decorators.deprecate_kwarg.__name__ == "deprecate_kwarg"  # restored after import


# ---------------------------------------------------------------- rayopt evaluate's quick table
def test_quick_table_skips_and_counts_nan_seeds() -> None:
    from rayopt.cli import quick_scores

    fr = [1.0, 2.0, float("nan"), 3.0, 4.0, 100.0]
    q = quick_scores(fr, [1.0, 1.0, float("nan"), 1.0, 1.0, 1.0])
    assert q["nan"] == 1
    assert q["final_mean"] == pytest.approx(22.0)  # the five finite seeds
    assert q["final_iqm"] == pytest.approx(3.0)  # 1 and 100 trimmed, as rliable does
    assert q["final_iqm"] == pytest.approx(
        metrics.aggregate_iqm(np.array(fr)[[0, 1, 3, 4, 5], None])
    )
    assert q["auc_mean"] == q["auc_iqm"] == 1.0
    none = quick_scores([float("nan")] * 2, [float("nan")] * 2)
    assert none["nan"] == 2 and np.isnan(none["final_iqm"]) and np.isnan(none["final_mean"])


def test_quick_table_columns_fit_their_content(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A long optimiser name no longer runs into the env column (real PPO, a tiny run)."""
    from rayopt.cli import main
    from rayopt.optim import library

    path = tmp_path / "a_rather_long_optimiser_file_name.py"
    path.write_text(library.SIGN_UPDATE)
    argv = ["evaluate", "--optimizers", str(path), "--envs", "CartPole-v1", "--seeds", "2"]
    assert main([*argv, "--total-timesteps", "1024", "--num-envs", "4", "--fast-compile"]) == 0
    head, row, note = capsys.readouterr().out.strip().splitlines()
    assert head.split()[:4] == ["optimizer", "env", "seeds", "nan"]
    assert row.split()[:4] == ["a_rather_long_optimiser_file_name", "CartPole-v1", "0-1", "0"]
    assert row.index("CartPole-v1") == head.index("env")  # the column starts where it says
    assert row.index("CartPole-v1") > len("a_rather_long_optimiser_file_name")
    for column in ("final_iqm", "run_s"):  # right-aligned numbers end under their header
        end = head.index(column) + len(column)
        assert row[end - 1] != " " and (end == len(row) or row[end] == " ")
    assert "IQM trims nothing below 4 seeds" in note
